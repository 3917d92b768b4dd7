// Zero-shot classification of photographs with CLIP (Radford et al. 2021), from real inputs end to
// end: JPEG photographs decoded and preprocessed as open_clip does (Pillow-identical bicubic
// resize of the shorter side to 224, centre crop, CLIP's mean and std), class names written into
// prompts ("a photo of {}.") and encoded by CLIP's own byte-level BPE tokenizer, each class
// embedded as the normalised mean of its prompts (prompt ensembling, section 3.1.4 of the
// paper), and every photograph scored against every class.
//
//   clip_zero_shot_photos [CHECKPOINT.safetensors [PRESET]] [--vocab bpe_simple_vocab_16e6.txt.gz]
//                         [PHOTO ...]
//
// CHECKPOINT is a CLIP in the OpenAI / open_clip layout (visual.transformer.resblocks.N...), with
// PRESET one of models::clip_presets() (default ViT-B-32-quickgelu, OpenAI's weights), or a Hugging
// Face model folder's model.safetensors with its config.json beside it (no PRESET). Without a
// checkpoint the example prints how to export one and runs an untrained CLIP of ViT-B/32's input
// and vocabulary sizes (random weights, narrower): the pipeline is the same, the probabilities
// mean nothing. The photographs default to examples/data/ (derived from scikit-image's public
// domain / CC0 samples); the merge list to ../shared/data/ or --vocab (it ships with open_clip).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <tessera/image/decode.hpp>
#include <tessera/image/transforms.hpp>
#include <tessera/models/clip.hpp>
#include <tessera/text/clip_tokenizer.hpp>

namespace fs = std::filesystem;
namespace models = tessera::models;
using tessera::Index;
using tessera::Tensor;

namespace {

const std::vector<std::string> kClasses = {"an astronaut", "a cat",    "a cup of coffee",
                                           "a dog",        "a rocket", "a bowl of soup",
                                           "a laptop",     "a tiger"};
// A few of CLIP's 80 ImageNet prompt templates (the paper's notebook).
const std::vector<std::string> kTemplates = {"a photo of {}.", "a close-up photo of {}.",
                                             "a bright photo of {}.", "a good photo of {}."};

void print_export_help() {
  std::printf(
      "No checkpoint given. Export one to safetensors with either line of Python:\n"
      "  python3 -c \"import open_clip, safetensors.torch as st; "
      "st.save_file(open_clip.create_model('ViT-B-32-quickgelu', pretrained='openai')"
      ".state_dict(), 'ViT-B-32-quickgelu.safetensors')\"\n"
      "  python3 -c \"import transformers as t; t.CLIPModel.from_pretrained("
      "'openai/clip-vit-base-patch32').save_pretrained('clip-b32', safe_serialization=True)\"\n"
      "then run:  clip_zero_shot_photos ViT-B-32-quickgelu.safetensors ViT-B-32-quickgelu\n"
      "      or:  clip_zero_shot_photos clip-b32/model.safetensors\n"
      "Running an UNTRAINED CLIP instead (random weights): the pipeline is real, the "
      "probabilities below mean nothing.\n\n");
}

// An untrained CLIP taking what ViT-B/32 takes (224 x 224 photos, CLIP's 49,408 ids, 77
// positions), narrower and shallower so that it builds in a moment.
models::CLIP<float> untrained_clip() {
  models::CLIPOptions o = models::clip_preset("ViT-B-32-quickgelu").options;
  o.vision.width = 128, o.vision.heads = 2, o.vision.mlp_dim = 512, o.vision.layers = 2;
  o.text.width = 64, o.text.heads = 1, o.text.mlp_dim = 256, o.text.layers = 2;
  o.vision.output_dim = o.text.output_dim = 64;
  o.vision.seed = 1, o.text.seed = 2;
  return models::CLIP<float>(o);
}

fs::path find_vocab(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("TESSERA_CLIP_VOCAB")) return env;
  return fs::path(TESSERA_SHARED_DATA_DIR) / "bpe_simple_vocab_16e6.txt.gz";
}

}  // namespace

int main(int argc, char** argv) {
  std::string checkpoint, preset, vocab_arg;
  std::vector<fs::path> photos;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vocab" && i + 1 < argc) {
      vocab_arg = argv[++i];
    } else if (a.ends_with(".safetensors")) {
      checkpoint = a;
      if (i + 1 < argc && !std::string(argv[i + 1]).starts_with("-") && !fs::exists(argv[i + 1]))
        preset = argv[++i];
    } else {
      photos.emplace_back(a);
    }
  }
  if (photos.empty())
    for (const char* name : {"astronaut.jpg", "chelsea.jpg", "coffee.jpg"})
      photos.push_back(fs::path(TESSERA_EXAMPLE_DATA_DIR) / name);

  const fs::path vocab = find_vocab(vocab_arg);
  if (!fs::exists(vocab)) {
    std::printf(
        "CLIP's merge list %s is not here. It ships with open_clip (open_clip/"
        "bpe_simple_vocab_16e6.txt.gz) and OpenAI's CLIP; pass it with --vocab PATH.\n",
        vocab.c_str());
    return 0;
  }
  const auto start = std::chrono::steady_clock::now();
  const auto tokenizer = tessera::text::ClipTokenizer::from_file(vocab);

  models::CLIP<float> clip;
  if (checkpoint.empty()) {
    print_export_help();
    clip = untrained_clip();
  } else if (preset.empty() && fs::exists(fs::path(checkpoint).parent_path() / "config.json")) {
    clip = models::load_clip<float>(checkpoint);  // Hugging Face: the architecture from config.json
    std::printf("Loaded %s with its config.json: %td parameters.\n", checkpoint.c_str(),
                clip.num_parameters());
  } else {
    if (preset.empty()) preset = "ViT-B-32-quickgelu";
    clip = models::load_clip<float>(checkpoint, preset);
    std::printf("Loaded %s as %s: %td parameters.\n", checkpoint.c_str(), preset.c_str(),
                clip.num_parameters());
  }
  const Index size = clip.options().vision.image_size;

  // Photographs -> [B, 3, size, size], exactly as open_clip's preprocess on a PIL image.
  std::vector<tessera::image::Image> images;
  for (const auto& p : photos) images.push_back(tessera::image::read_image(p));
  const Tensor<float, 4> pixels =
      tessera::image::preprocess_batch<float>(images, tessera::image::clip_options(size));
  const Tensor<float, 2> image_features = clip.encode_image(pixels);

  // Classes: every template filled with every class name, tokenized to [P, 77] and embedded;
  // the model's own logit scale.
  const Index context = clip.options().text.context_length;
  const auto classifier = models::zero_shot_classifier(
      clip, kClasses, kTemplates, [&](const std::vector<std::string>& prompts) {
        return tokenizer.tokenize(prompts, context);
      });
  const auto prediction = classifier.predict(image_features, 3);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const auto example_ids = tokenizer.encode("a photo of a cat.");
  std::printf("CLIP's tokenizer: \"a photo of a cat.\" -> [%lld", 49406LL);
  for (auto id : example_ids) std::printf(", %lld", static_cast<long long>(id));
  std::printf(", %lld]\n", 49407LL);
  std::printf("%zu classes x %zu prompt templates; logit scale %.2f\n\n", kClasses.size(),
              kTemplates.size(), static_cast<double>(clip.scale()));
  for (std::size_t b = 0; b < photos.size(); ++b) {
    std::printf("%-14s %4td x %-4td ->", photos[b].filename().c_str(), images[b].dim(1),
                images[b].dim(0));
    for (Index j = 0; j < 3; ++j)
      std::printf("  %s %.3f", prediction.labels[b][j].c_str(),
                  static_cast<double>(prediction.probabilities(static_cast<Index>(b), j)));
    std::printf("\n");
  }
  std::printf("\n%zu photos and %zu prompts in %.2f s.\n", photos.size(),
              kClasses.size() * kTemplates.size(), seconds);
  return 0;
}
