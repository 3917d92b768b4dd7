// Contrastive image-text pre-training and zero-shot classification, in miniature.
//
// CLIP (Radford et al. 2021) learns a joint embedding from paired data: a batch of N image-text
// pairs gives an N x N matrix of similarities whose diagonal holds the true pairs, and the loss
// is a cross-entropy in both directions that pulls each pair together and pushes the other N - 1
// apart. Afterwards the model classifies an image it was never trained to classify: write every
// label into a prompt ("a photo of a dog"), embed the prompts, pick the closest one.
//
// Here both "modalities" are synthetic and share hidden classes: an image is a grid of 16 noisy
// patches, each a different random linear view of the class's latent vector plus that image's own
// variation; a caption is a short sentence with the class name somewhere in it ("the blurry
// photo of a dog"). The towers are small transformer encoders (patches -> Linear embedding;
// tokens -> Embedding + sinusoidal positions; each followed by attention pooling) that stay at
// their random initialisation; the CLIP loss trains the two projection heads and the logit scale
// from its gradients. Zero-shot accuracy on held-out images, and a linear probe's accuracy, are
// compared with chance and with the untrained model.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <tessera/tessera.hpp>

using tessera::Index;
using tessera::Tensor;
namespace nn = tessera::nn;
namespace con = tessera::contrastive;
namespace optim = tessera::optim;

namespace {

constexpr Index kPatches = 16, kPatchDim = 12, kLatent = 16;  // images: [16, 12], latent 16
constexpr Index kWidth = 32, kEmbed = 32;                     // tower width, joint space
constexpr Index kMaxTokens = 8;                               // captions padded to 8 tokens

const std::vector<std::string> kClasses = {"cat",  "dog",   "car",   "ship",
                                           "bird", "horse", "truck", "plane"};
const std::vector<std::string> kTemplates = {"a photo of a {}", "a picture of the {}",
                                             "an image of a {}"};

// ---- the synthetic world -----------------------------------------------------------------

struct World {
  Tensor<float, 2> prototypes;  // [classes, latent]
  Tensor<float, 3> views;       // [patches, patch_dim, latent]: patch p = views[p] z + noise

  explicit World(std::uint64_t seed)
      : prototypes(static_cast<Index>(kClasses.size()), kLatent),
        views(kPatches, kPatchDim, kLatent) {
    prototypes.setRandomNormal(seed);
    views.setRandomNormal(seed + 1, 0.0, 1.0 / std::sqrt(double(kLatent)));
  }
};

struct Vocabulary {
  std::vector<std::string> words{"<pad>", "a",      "an",    "the",   "photo",  "picture", "image",
                                 "of",    "blurry", "small", "large", "bright", "dark",    "my"};
  Vocabulary() { words.insert(words.end(), kClasses.begin(), kClasses.end()); }
  Index id(const std::string& w) const {
    const auto it = std::find(words.begin(), words.end(), w);
    return it == words.end() ? 0 : it - words.begin();
  }
  // Space-separated words -> ids [prompts, kMaxTokens], padded with 0; padding mask true = pad.
  void encode(const std::vector<std::string>& texts, Tensor<Index, 2>& ids,
              Tensor<bool, 2>& pad) const {
    const Index n = static_cast<Index>(texts.size());
    ids = Tensor<Index, 2>(n, kMaxTokens);
    pad = Tensor<bool, 2>(n, kMaxTokens);
    pad.setConstant(true);
    for (Index i = 0; i < n; ++i) {
      std::istringstream words(texts[static_cast<std::size_t>(i)]);
      std::string w;
      for (Index t = 0; t < kMaxTokens && words >> w; ++t) ids(i, t) = id(w), pad(i, t) = false;
    }
  }
};

struct Dataset {
  Tensor<float, 3> images;  // [N, patches, patch_dim]
  std::vector<std::string> captions;
  Tensor<int, 1> labels;  // [N]
};

Dataset sample(const World& world, Index n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto pick = [&](const std::vector<std::string>& from) {
    return from[std::uniform_int_distribution<std::size_t>(0, from.size() - 1)(gen)];
  };
  Dataset d{Tensor<float, 3>(n, kPatches, kPatchDim), {}, Tensor<int, 1>(n)};
  Eigen::VectorXf z(kLatent);
  for (Index i = 0; i < n; ++i) {
    const int c = std::uniform_int_distribution<int>(0, int(kClasses.size()) - 1)(gen);
    d.labels(i) = c;
    // The image's latent: its class's prototype and its own variation.
    for (Index k = 0; k < kLatent; ++k) z(k) = world.prototypes(c, k) + 0.7f * normal(gen);
    for (Index p = 0; p < kPatches; ++p) {
      const auto view = world.views[p].as_matrix();  // [patch_dim, latent]
      Eigen::VectorXf patch = view * z;
      for (Index k = 0; k < kPatchDim; ++k) d.images(i, p, k) = patch(k) + 0.5f * normal(gen);
    }
    // "[the|a|my] [blurry|small|...]? [photo|picture|image] of [a|the] [adjective]? <class>"
    std::string caption = pick({"a", "the", "my"});
    if (gen() % 2) caption += " " + pick({"blurry", "small", "large", "bright", "dark"});
    caption += " " + pick({"photo", "picture", "image"}) + " of " + pick({"a", "the"});
    if (gen() % 3 == 0) caption += " " + pick({"small", "large", "dark"});
    d.captions.push_back(caption + " " + kClasses[static_cast<std::size_t>(c)]);
  }
  return d;
}

// ---- the towers ----------------------------------------------------------------------------

nn::TransformerEncoderOptions encoder_options(std::uint64_t seed) {
  return {.layer = {.d_model = kWidth, .nhead = 4, .dim_feedforward = 64, .seed = seed},
          .num_layers = 1};
}

// Patches [B, 16, 12] -> Linear -> transformer encoder -> attention pooling -> [B, 32].
struct ImageTower : nn::Module<ImageTower> {
  nn::Linear<float> patch_embedding{{.in_features = kPatchDim, .out_features = kWidth, .seed = 11}};
  nn::TransformerEncoder<float> encoder{encoder_options(12)};
  nn::AttentionPooling<float> pool{{.input_dim = kWidth, .attention_dim = 16, .seed = 13}};

  ImageTower() = default;
  Tensor<float, 2> forward(const Tensor<float, 3>& images) const {
    return pool.forward(encoder.forward(patch_embedding.forward(images))).context;
  }
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    nn::Linear<float>::visit(self.patch_embedding, f, prefix + "patch_embedding.");
    nn::TransformerEncoder<float>::visit(self.encoder, f, prefix + "encoder.");
    nn::AttentionPooling<float>::visit(self.pool, f, prefix + "pool.");
  }
};

// Token ids [B, 8] (with their padding mask) -> Embedding + positions -> encoder -> pooling.
struct Tokens {
  Tensor<Index, 2> ids;
  Tensor<bool, 2> pad;
};
struct TextTower : nn::Module<TextTower> {
  nn::Embedding<float> token_embedding;
  nn::SinusoidalPositionalEncoding<float> positions{{.max_len = kMaxTokens, .embed_dim = kWidth}};
  nn::TransformerEncoder<float> encoder{encoder_options(22)};
  nn::AttentionPooling<float> pool{{.input_dim = kWidth, .attention_dim = 16, .seed = 23}};

  explicit TextTower(Index vocab)
      : token_embedding({.num_embeddings = vocab, .embedding_dim = kWidth, .seed = 21}) {}

  Tensor<float, 2> forward(const Tokens& t) const {
    const auto pad = tessera::Mask::blocked(t.pad);
    const auto h = encoder.forward(positions.forward(token_embedding.forward(t.ids)),
                                   {.src_key_padding_mask = pad});
    return pool.forward(h, {.mask = pad}).context;
  }
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    nn::Embedding<float>::visit(self.token_embedding, f, prefix + "token_embedding.");
    nn::TransformerEncoder<float>::visit(self.encoder, f, prefix + "encoder.");
    nn::AttentionPooling<float>::visit(self.pool, f, prefix + "pool.");
  }
};

using Clip = con::DualEncoder<float, ImageTower, TextTower>;

// ---- evaluation ----------------------------------------------------------------------------

struct Scores {
  double zero_shot, probe;
};

// Every label in every template, through the text tower and its head.
con::ZeroShotClassifier<float> zero_shot_classifier(const Clip& model, const Vocabulary& vocab) {
  return con::ZeroShotClassifier<float>(kClasses, kTemplates,
                                        [&](const std::vector<std::string>& prompts) {
                                          Tokens t;
                                          vocab.encode(prompts, t.ids, t.pad);
                                          return model.encode_text(t);
                                        });
}

Scores evaluate(const Clip& model, const Vocabulary& vocab, const Tensor<float, 2>& train_feats,
                const Tensor<int, 1>& train_labels, const Tensor<float, 2>& test_feats,
                const Tensor<int, 1>& test_labels, bool with_probe) {
  const auto zero_shot = zero_shot_classifier(model, vocab);
  const auto test_emb = model.visual_projection.forward(test_feats);
  Scores s{zero_shot.accuracy(test_emb, test_labels), 0.0};
  if (with_probe) {
    con::LinearProbe<float> probe(
        {.in_features = kEmbed, .num_classes = Index(kClasses.size()), .seed = 5});
    probe.fit(model.visual_projection.forward(train_feats), train_labels,
              {.epochs = 100, .learning_rate = 2.0, .weight_decay = 1e-4, .batch_size = 256});
    s.probe = probe.accuracy(test_emb, test_labels);
  }
  return s;
}

// Rows [r0, r0 + n) of a matrix, copied.
Tensor<float, 2> rows(const Tensor<float, 2>& x, const std::vector<Index>& order, Index r0,
                      Index n) {
  Tensor<float, 2> out(n, x.dim(1));
  for (Index i = 0; i < n; ++i)
    out.as_matrix().row(i) = x.as_matrix().row(order[static_cast<std::size_t>(r0 + i)]);
  return out;
}

}  // namespace

int main() {
  const auto start = std::chrono::steady_clock::now();
  const World world(2021);
  const Vocabulary vocab;
  const Dataset train = sample(world, 2048, 1);
  const Dataset test = sample(world, 512, 2);

  Clip model(ImageTower(), TextTower(Index(vocab.words.size())),
             {.image_width = kWidth, .text_width = kWidth, .embed_dim = kEmbed, .seed = 3});
  std::printf("CLIP in miniature: %zu classes, %lld training pairs, %lld held-out images\n",
              kClasses.size(), static_cast<long long>(train.labels.dim(0)),
              static_cast<long long>(test.labels.dim(0)));
  std::printf("  e.g. \"%s\" / \"%s\"; %lld parameters, %lld of them trained (heads + scale)\n",
              train.captions[0].c_str(), train.captions[1].c_str(),
              static_cast<long long>(model.num_parameters()),
              static_cast<long long>(model.visual_projection.num_parameters() +
                                     model.text_projection.num_parameters() + 1));

  // The towers are frozen: their features are computed once.
  Tokens train_tokens;
  vocab.encode(train.captions, train_tokens.ids, train_tokens.pad);
  const auto train_img = model.image_features(train.images);
  const auto train_txt = model.text_features(train_tokens);
  const auto test_img = model.image_features(test.images);

  const double chance = 1.0 / double(kClasses.size());
  const Scores untrained =
      evaluate(model, vocab, train_img, train.labels, test_img, test.labels, true);
  std::printf("untrained: zero-shot %.1f%%, linear probe %.1f%% (chance %.1f%%)\n",
              100 * untrained.zero_shot, 100 * untrained.probe, 100 * chance);

  const Index batch = 256, n = train.labels.dim(0), epochs = 20;
  // Pairs of one class are interchangeable, so a batch holds ~batch / classes "positives" per row
  // that the loss still treats as negatives: it cannot go below about log(batch / classes).
  std::printf(
      "training the heads and the logit scale with the CLIP loss, batch %lld "
      "(loss floor about log(%lld / %zu) = %.2f)\n",
      static_cast<long long>(batch), static_cast<long long>(batch), kClasses.size(),
      std::log(double(batch) / double(kClasses.size())));
  // Adam (Kingma & Ba 2015, torch.optim.Adam's update) on the heads and the logit scale.
  auto heads = optim::parameters<float>(model.visual_projection, "visual_projection.");
  for (auto& p : optim::parameters<float>(model.text_projection, "text_projection."))
    heads.push_back(p);
  for (auto& p : optim::parameters<float>(model.temperature)) heads.push_back(p);
  optim::Adam<float> adam(heads, {.lr = 0.01});
  std::vector<Index> order(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  std::mt19937_64 gen(7);
  for (Index epoch = 1; epoch <= epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), gen);
    double loss = 0;
    Index steps = 0;
    for (Index b0 = 0; b0 + batch <= n; b0 += batch, ++steps) {
      adam.zero_grad();
      // CLIP's loss over the batch; its gradients reach both heads and the logit scale.
      const auto r =
          model.loss_and_grad(rows(train_img, order, b0, batch), rows(train_txt, order, b0, batch));
      loss += r.loss;
      adam.step();
    }
    const Scores s = evaluate(model, vocab, train_img, train.labels, test_img, test.labels, false);
    std::printf("epoch %2lld/%lld  loss %.3f  logit scale %5.1f  held-out zero-shot %.1f%%\n",
                static_cast<long long>(epoch), static_cast<long long>(epochs), loss / double(steps),
                double(model.logit_scale()), 100 * s.zero_shot);
  }

  const Scores trained =
      evaluate(model, vocab, train_img, train.labels, test_img, test.labels, true);
  std::printf("trained:   zero-shot %.1f%%, linear probe %.1f%% (chance %.1f%%)\n",
              100 * trained.zero_shot, 100 * trained.probe, 100 * chance);

  // A few held-out images, classified from the label prompts alone.
  const auto pred =
      zero_shot_classifier(model, vocab)
          .predict(model.visual_projection.forward(rows(test_img, {0, 1, 2, 3}, 0, 4)),
                   /*k=*/2);
  for (Index i = 0; i < 4; ++i)
    std::printf(
        "  held-out image %lld (a %s): %s %.2f, %s %.2f\n", static_cast<long long>(i),
        kClasses[static_cast<std::size_t>(test.labels(i))].c_str(),
        pred.labels[static_cast<std::size_t>(i)][0].c_str(), double(pred.probabilities(i, 0)),
        pred.labels[static_cast<std::size_t>(i)][1].c_str(), double(pred.probabilities(i, 1)));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("done in %.1f s\n", seconds);
  return trained.zero_shot > untrained.zero_shot && trained.zero_shot > 2 * chance ? 0 : 1;
}
