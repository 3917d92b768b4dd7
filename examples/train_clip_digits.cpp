// Training a CLIP from scratch (Radford et al. 2021) on real handwritten digits, in C++ alone:
// 1,797 8 x 8 digits (UCI "Optical Recognition of Handwritten Digits", examples/data/digits.csv.gz)
// paired with captions made from their labels with varied templates ("a photo of the number
// seven", "a handwritten 7", ...), the captions through CLIP's own byte-level BPE tokenizer. Both
// towers (a ViT over 2 x 2 patches and a causal text transformer) learn together under CLIP's
// contrastive loss with AdamW (open_clip's parameter groups: no weight decay on norms, biases and
// the logit scale), a warm-up + cosine schedule and gradient clipping. Then, on the held-out
// fifth of the digits:
//   - zero-shot classification from label prompts alone: each class is the normalised mean of its
//     prompts' text embeddings (prompt ensembling, section 3.1.4 of the paper), and each image
//     takes the class of highest cosine similarity — no classifier was ever trained on the labels;
//   - a linear probe on the learned image embeddings (the paper's section 3.2), trained on the
//     training four fifths.
//
//   train_clip_digits [--epochs N] [--lr LR] [--vocab bpe_simple_vocab_16e6.txt.gz]
//                     [--save state.safetensors]
//   mpirun -np 2 train_clip_digits                       (data-parallel, built with MPI)
//
// Under mpirun each of the P ranks takes 1/P of every batch of 128 pairs; the loss is CLIP's over
// the whole batch (distributed::clip_train_loss gathers the embeddings) and the gradients are
// averaged (distributed::DataParallel), so P ranks take the same steps as one process, to rounding.
//
// The merge list ships with open_clip (and in ../shared/data beside this checkout); without it the
// captions are split into words instead, with a message. --save writes the model and optimizer
// state (optim::save_training_state), from which training resumes bit-identically.
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <tessera/contrastive/linear_probe.hpp>
#include <tessera/distributed/data_parallel.hpp>
#include <tessera/distributed/training.hpp>
#include <tessera/models/clip.hpp>
#include <tessera/optim/adamw.hpp>
#include <tessera/optim/clip_grad_norm.hpp>
#include <tessera/optim/lr_schedule.hpp>
#include <tessera/optim/param_group.hpp>
#include <tessera/optim/training_state.hpp>
#include <tessera/text/clip_tokenizer.hpp>

namespace fs = std::filesystem;
namespace models = tessera::models;
namespace optim = tessera::optim;
using tessera::Index;
using tessera::Tensor;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Index kPixels = 64, kClasses = 10, kContext = 12, kBatch = 128;

struct Digits {
  std::vector<float> pixels;  // [n, 64], grey levels 0..16
  std::vector<Index> labels;  // [n]
  Index size() const { return static_cast<Index>(labels.size()); }
};

// The digits file: one digit per line, 64 pixel values then the label.
Digits read_digits(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path.string());
  std::string text;
  char buffer[1 << 15];
  for (int n; (n = gzread(f, buffer, sizeof buffer)) > 0;) text.append(buffer, n);
  gzclose(f);
  Digits d;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    std::vector<int> v;
    std::istringstream cells(line);
    for (std::string cell; std::getline(cells, cell, ',');) v.push_back(std::stoi(cell));
    if (v.size() != kPixels + 1)
      throw std::runtime_error("a line without 65 values in " + path.string());
    d.pixels.insert(d.pixels.end(), v.begin(), v.begin() + kPixels);
    d.labels.push_back(v.back());
  }
  return d;
}

const char* const kWords[kClasses] = {"zero", "one", "two",   "three", "four",
                                      "five", "six", "seven", "eight", "nine"};

// Caption templates: {w} is the number's word, {d} its digit.
const std::vector<std::string> kTemplates = {
    "a photo of the number {w}", "a handwritten {d}",        "the digit {w}",
    "a picture of a {d}",        "a scan of the number {w}", "a handwritten digit {w}",
    "an image of the digit {d}", "a blurry photo of a {w}",  "a small drawing of the number {d}",
    "a {w} written by hand",     "the number {d}",           "a low resolution {w}"};

std::string caption(const std::string& tmpl, Index label) {
  std::string out;
  for (std::size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl.compare(i, 3, "{w}") == 0) {
      out += kWords[label];
      i += 2;
    } else if (tmpl.compare(i, 3, "{d}") == 0) {
      out += std::to_string(label);
      i += 2;
    } else {
      out += tmpl[i];
    }
  }
  return out;
}

// Every caption the example can form ([label][template]) as token ids [context]. With CLIP's
// tokenizer the ids are its BPE ids renumbered to the tokens the captions use, in order (so the
// end-of-text token stays the largest id and argmax pooling finds it); without it, words.
struct Captions {
  std::vector<std::vector<Index>> ids;  // [kClasses * templates][kContext]
  Index vocab_size = 0;
  std::string tokenizer;
  const std::vector<Index>& of(Index label, std::size_t t) const {
    return ids[label * kTemplates.size() + t];
  }
};

Captions make_captions(const fs::path& merges) {
  std::vector<std::string> texts;
  for (Index c = 0; c < kClasses; ++c)
    for (const auto& t : kTemplates) texts.push_back(caption(t, c));
  Captions out;
  std::vector<std::vector<Index>> raw;
  if (!merges.empty() && fs::exists(merges)) {
    const auto tok = tessera::text::ClipTokenizer::from_file(merges);
    const Tensor<Index, 2> ids = tok.tokenize(texts, kContext);
    for (Index i = 0; i < ids.dim(0); ++i)
      raw.emplace_back(ids[i].data(), ids[i].data() + kContext);
    out.tokenizer = "CLIP's BPE (" + merges.filename().string() + ")";
  } else {
    // words: 0 padding, 1 start, then the words in order of appearance, the end token last
    std::map<std::string, Index> words;
    std::vector<std::vector<std::string>> split;
    for (const auto& t : texts) {
      std::istringstream in(t);
      split.emplace_back();
      for (std::string w; in >> w;) split.back().push_back(w), words.emplace(w, 0);
    }
    Index next = 2;
    for (auto& [w, id] : words) id = next++;
    for (const auto& s : split) {
      std::vector<Index> row(kContext, 0);
      row[0] = 1;
      Index n = 1;
      for (const auto& w : s) row[n++] = words[w];
      row[n] = next;  // end of text
      raw.push_back(row);
    }
    out.tokenizer = "words (CLIP's merge list not found; pass --vocab)";
  }
  // renumber to the ids used (padding 0 stays 0)
  std::vector<Index> used;
  for (const auto& r : raw) used.insert(used.end(), r.begin(), r.end());
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  for (auto& r : raw)
    for (auto& id : r) id = std::lower_bound(used.begin(), used.end(), id) - used.begin();
  out.ids = std::move(raw);
  out.vocab_size = static_cast<Index>(used.size());
  return out;
}

// images [n, 1, 8, 8] of the digits at `rows`, standardised with the training set's mean and
// standard deviation.
Tensor<float, 4> images_of(const Digits& d, const std::vector<Index>& rows, float mean, float sd) {
  Tensor<float, 4> x(tessera::Shape<4>{static_cast<Index>(rows.size()), 1, 8, 8});
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (Index p = 0; p < kPixels; ++p)
      x.data()[i * kPixels + p] = (d.pixels[rows[i] * kPixels + p] - mean) / sd;
  return x;
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  tessera::distributed::Environment mpi(argc, argv);  // nothing to do without MPI
  const auto comm = tessera::distributed::Communicator::world();
  const int ranks = comm.size(), rank = comm.rank();
  const bool lead = rank == 0;  // prints, evaluates and saves
  Index epochs = 40;
  double lr = 2e-3;
  fs::path merges = fs::path(TESSERA_SHARED_DATA_DIR) / "bpe_simple_vocab_16e6.txt.gz";
  fs::path save;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--epochs" && i + 1 < argc)
      epochs = std::max(1L, std::stol(argv[++i]));
    else if (a == "--lr" && i + 1 < argc)
      lr = std::stod(argv[++i]);
    else if (a == "--vocab" && i + 1 < argc)
      merges = argv[++i];
    else if (a == "--save" && i + 1 < argc)
      save = argv[++i];
    else {
      if (lead)
        std::fprintf(stderr,
                     "usage: %s [--epochs N] [--lr LR] [--vocab merges.txt.gz] [--save file]\n",
                     argv[0]);
      return 2;
    }
  }
  const Digits digits = read_digits(fs::path(TESSERA_EXAMPLE_DATA_DIR) / "digits.csv.gz");
  const Captions captions = make_captions(merges);

  // A fixed shuffle; the last fifth is held out.
  std::vector<Index> order(digits.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(7);
  std::shuffle(order.begin(), order.end(), rng);
  const Index n_test = digits.size() / 5;
  const std::vector<Index> train(order.begin(), order.end() - n_test);
  const std::vector<Index> test(order.end() - n_test, order.end());
  double sum = 0, sq = 0;
  for (Index r : train)
    for (Index p = 0; p < kPixels; ++p) {
      const double v = digits.pixels[r * kPixels + p];
      sum += v, sq += v * v;
    }
  const double count = static_cast<double>(train.size() * kPixels);
  const float mean = static_cast<float>(sum / count);
  const float sd = static_cast<float>(std::sqrt(sq / count - (sum / count) * (sum / count)));

  models::CLIPOptions o;
  o.vision = {.image_size = 8,
              .patch_size = 2,
              .in_channels = 1,
              .width = 64,
              .layers = 2,
              .heads = 4,
              .mlp_dim = 128,
              .activation = tessera::Activation::gelu,
              .output_dim = 32,
              .seed = 1};
  o.text = {.vocab_size = captions.vocab_size,
            .context_length = kContext,
            .width = 64,
            .layers = 2,
            .heads = 4,
            .mlp_dim = 128,
            .activation = tessera::Activation::gelu,
            .output_dim = 32,
            .seed = 2};
  models::CLIP<float> clip(o);
  // Rank 0's initial weights on every rank, and the gradients averaged over the ranks.
  tessera::distributed::DataParallel<float> ddp(comm, clip);
  if (lead)
    std::printf(
        "digits: %zu to train on, %zu held out; captions: %zu templates, tokenized by %s "
        "(%lld distinct tokens)\n",
        train.size(), test.size(), kTemplates.size(), captions.tokenizer.c_str(),
        static_cast<long long>(captions.vocab_size));
  if (lead)
    std::printf(
        "model: CLIP, image tower ViT 8x8/2 width 64 x 2 layers, text tower width 64 x 2 "
        "layers, embeddings 32; %lld parameters; threads: %d%s\n",
        static_cast<long long>(clip.num_parameters()), tessera::num_threads(),
        ranks > 1 ? (" per rank, " + std::to_string(ranks) + " ranks (MPI)").c_str() : "");
  if (kBatch % ranks != 0) {
    if (lead)
      std::fprintf(stderr, "the batch of %lld pairs does not split into %d ranks\n",
                   static_cast<long long>(kBatch), ranks);
    return 2;
  }
  const Index shard = kBatch / ranks;  // this rank's pairs of each batch

  const Index steps_per_epoch = static_cast<Index>(train.size()) / kBatch;
  auto groups = optim::open_clip_param_groups(clip, /*weight_decay=*/0.1);
  optim::AdamW<float> opt(groups, {.lr = lr, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-6});
  const optim::CosineWithWarmup schedule{
      .base_lr = lr,
      .warmup_steps = std::max<Index>(1, std::min<Index>(2, epochs / 5) * steps_per_epoch),
      .total_steps = epochs * steps_per_epoch};

  const auto start = Clock::now();
  std::int64_t step = 0;
  std::vector<Index> shuffled = train;
  std::uniform_int_distribution<std::size_t> pick_template(0, kTemplates.size() - 1);
  for (Index epoch = 1; epoch <= epochs; ++epoch) {
    const auto epoch_start = Clock::now();
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    double loss_sum = 0;
    for (Index s = 0; s < steps_per_epoch; ++s, ++step) {
      // Every rank draws the whole batch alike (the same generator) and keeps its shard.
      const auto first = shuffled.begin() + s * kBatch + rank * shard;
      const std::vector<Index> rows(first, first + shard);
      const Tensor<float, 4> images = images_of(digits, rows, mean, sd);
      Tensor<Index, 2> ids(tessera::Shape<2>{shard, kContext});
      for (Index i = 0; i < kBatch; ++i) {
        const std::size_t t = pick_template(rng);
        if (i / shard != rank) continue;
        const auto& c = captions.of(digits.labels[rows[i % shard]], t);
        std::copy(c.begin(), c.end(), ids[i % shard].data());
      }
      schedule.apply(opt, step);
      opt.zero_grad();
      // The CLIP loss over the whole batch (every rank's pairs), then the averaged gradients.
      loss_sum += tessera::distributed::clip_train_loss(comm, clip, images, ids);
      ddp.average_gradients();
      optim::clip_grad_norm(opt, 1.0);
      opt.step();
    }
    const double elapsed = seconds_since(start), this_epoch = seconds_since(epoch_start);
    if (lead)
      std::printf(
          "epoch %2lld/%lld  loss %.4f  %6.0f pairs/s  logit scale %5.1f  %5.1f s, about "
          "%.0f s left\n",
          static_cast<long long>(epoch), static_cast<long long>(epochs), loss_sum / steps_per_epoch,
          steps_per_epoch * kBatch / this_epoch, clip.scale(), elapsed,
          elapsed / epoch * (epochs - epoch));
    std::fflush(stdout);
  }
  const double train_seconds = seconds_since(start);
  if (!lead) return 0;  // the ranks' models are the same: rank 0 evaluates

  // Zero-shot: each class the normalised mean of its prompts' normalised text embeddings.
  Tensor<Index, 2> prompt_ids(
      tessera::Shape<2>{kClasses * static_cast<Index>(kTemplates.size()), kContext});
  for (std::size_t i = 0; i < captions.ids.size(); ++i)
    std::copy(captions.ids[i].begin(), captions.ids[i].end(), prompt_ids[i].data());
  const Tensor<float, 2> prompts = tessera::l2_normalize(clip.encode_text(prompt_ids));
  Tensor<float, 2> classes(tessera::Shape<2>{kClasses, 32});
  for (Index c = 0; c < kClasses; ++c)
    for (std::size_t t = 0; t < kTemplates.size(); ++t)
      classes[c].as_vector() += prompts[c * kTemplates.size() + t].as_vector();
  const Tensor<float, 2> class_embeddings = tessera::l2_normalize(classes);
  const Tensor<float, 2> test_features = clip.encode_image(images_of(digits, test, mean, sd));
  const Tensor<float, 2> train_features = clip.encode_image(images_of(digits, train, mean, sd));
  const Tensor<float, 2> sims = clip.logits(test_features, class_embeddings);
  Index correct = 0;
  for (Index i = 0; i < sims.dim(0); ++i) {
    Index best = 0;
    for (Index c = 1; c < kClasses; ++c)
      if (sims(i, c) > sims(i, best)) best = c;
    correct += best == digits.labels[test[i]];
  }
  const double zero_shot = static_cast<double>(correct) / static_cast<double>(test.size());

  // Linear probe on the learned (normalised) image embeddings.
  Tensor<Index, 1> train_labels(tessera::Shape<1>{static_cast<Index>(train.size())}),
      test_labels(tessera::Shape<1>{static_cast<Index>(test.size())});
  for (std::size_t i = 0; i < train.size(); ++i) train_labels(i) = digits.labels[train[i]];
  for (std::size_t i = 0; i < test.size(); ++i) test_labels(i) = digits.labels[test[i]];
  tessera::contrastive::LinearProbe<float> probe({.in_features = 32, .num_classes = kClasses});
  probe.fit(
      tessera::l2_normalize(train_features), train_labels,
      {.epochs = 100, .learning_rate = 0.5, .weight_decay = 1e-4, .batch_size = 64, .seed = 3});
  const double probe_acc = probe.accuracy(tessera::l2_normalize(test_features), test_labels);

  std::printf("trained %lld epochs in %.1f s\n", static_cast<long long>(epochs), train_seconds);
  std::printf(
      "held-out digits: zero-shot accuracy %.1f %% (%lld of %zu, from label prompts "
      "alone; chance 10 %%)\n",
      100 * zero_shot, static_cast<long long>(correct), test.size());
  std::printf("held-out digits: linear probe on the image embeddings %.1f %%\n", 100 * probe_acc);
  if (!save.empty()) {
    optim::save_training_state(save, clip, opt, step);
    std::printf("model and optimizer state written to %s (step %lld)\n", save.c_str(),
                static_cast<long long>(step));
  }
  return 0;
}
