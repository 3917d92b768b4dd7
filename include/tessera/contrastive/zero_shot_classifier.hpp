// tessera::contrastive::ZeroShotClassifier: CLIP's zero-shot prediction (Radford et al. 2021,
// section 3.1.4): every class name is written into every prompt template ("a photo of a {}"),
// the prompts are embedded by the text side of a joint embedding, each prompt embedding is
// normalised, averaged over the templates of its class and normalised again (prompt
// ensembling); an image is assigned the class whose embedding is most similar.
//
//   ZeroShotClassifier<float> zs({"cat", "dog"}, {"a photo of a {}", "a drawing of a {}"},
//                                [&](const std::vector<std::string>& prompts) {
//                                  return model.encode_text(tokenize(prompts));  // [P, E]
//                                });
//   auto pred = zs.predict(model.encode_image(images), /*k=*/2);
//   pred.labels[0][0]; pred.probabilities(0, 0); pred.indices(0, 0);
//
// Probabilities are softmax(scale cos(image, class)) over all classes, scale 100 by default
// (CLIP's trained logit scale).
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/normalize.hpp"
#include "tessera/kernels/softmax.hpp"

namespace tessera::contrastive {

struct ZeroShotOptions {
  double logit_scale = 100.0;  // the scale (not its log) of the cosine similarities, > 0
};

template <class T>
struct ZeroShotPrediction {
  Tensor<Index, 2> indices;                      // [B, k] class ids, most probable first
  Tensor<T, 2> probabilities;                    // [B, k] their probabilities
  std::vector<std::vector<std::string>> labels;  // [B][k] their class names
};

// The prompt: `prompt_template` with its one "{}" replaced by `class_name`.
inline std::string format_prompt(std::string_view prompt_template, std::string_view class_name) {
  const auto at = prompt_template.find("{}");
  if (at == std::string_view::npos || prompt_template.find("{}", at + 2) != std::string_view::npos)
    tessera::detail::raise<ValueError>("tessera::contrastive::format_prompt",
                                       "argument 'prompt_template' is \"", prompt_template,
                                       "\", expected exactly one \"{}\"");
  std::string out(prompt_template.substr(0, at));
  out += class_name;
  out += prompt_template.substr(at + 2);
  return out;
}

template <class T>
class ZeroShotClassifier {
 public:
  // encode_text(const std::vector<std::string>& prompts) returns their embeddings [P, E] as a
  // Tensor<T, 2> (normalised here). Prompts are ordered class by class: class c, template j is
  // row c * templates + j.
  template <class EncodeText>
  ZeroShotClassifier(std::vector<std::string> class_names, std::vector<std::string> templates,
                     EncodeText&& encode_text, const ZeroShotOptions& o = {})
      : class_names_(std::move(class_names)), templates_(std::move(templates)), options_(o) {
    constexpr std::string_view fn = "tessera::contrastive::ZeroShotClassifier";
    if (class_names_.empty())
      tessera::detail::raise<ValueError>(fn,
                                         "argument 'class_names' is empty, expected at least "
                                         "one class");
    if (templates_.empty())
      tessera::detail::raise<ValueError>(fn,
                                         "argument 'templates' is empty, expected at least "
                                         "one prompt template");
    if (!(static_cast<T>(o.logit_scale) > 0) || !std::isfinite(static_cast<T>(o.logit_scale)))
      tessera::detail::raise<ValueError>(fn, "option 'logit_scale' is ", o.logit_scale,
                                         ", expected a finite value > 0");
    tessera::detail::checked_mul(static_cast<Index>(class_names_.size()),
                                 static_cast<Index>(templates_.size()), fn,
                                 "the prompts (class_names x templates)");
    std::vector<std::string> prompts;
    for (const auto& name : class_names_)
      for (const auto& tmpl : templates_) prompts.push_back(format_prompt(tmpl, name));
    const Tensor<T, 2> raw = encode_text(static_cast<const std::vector<std::string>&>(prompts));
    const Index c = num_classes(), m = static_cast<Index>(templates_.size());
    if (raw.dim(0) != c * m || raw.dim(1) < 1)
      tessera::detail::raise<ShapeError>(fn, "encode_text returned shape ",
                                         tessera::detail::shape_string(raw.shape()), " for ", c * m,
                                         " prompts, expected [", c * m, ", embed_dim >= 1]");
    // Normalise every prompt, average per class, normalise the average.
    const auto unit = l2_normalize(raw);
    class_embeddings_ = Tensor<T, 2>(Shape<2>{c, raw.dim(1)});
    for (Index k = 0; k < c; ++k)
      class_embeddings_.as_matrix().row(k) =
          unit.as_matrix().middleRows(k * m, m).colwise().sum() / static_cast<T>(m);
    l2_normalize_into(class_embeddings_, class_embeddings_);
  }

  const std::vector<std::string>& class_names() const noexcept { return class_names_; }
  const std::vector<std::string>& templates() const noexcept { return templates_; }
  Index num_classes() const noexcept { return static_cast<Index>(class_names_.size()); }
  Index embed_dim() const noexcept { return class_embeddings_.dim(1); }
  // [classes, E], unit rows.
  const Tensor<T, 2>& class_embeddings() const noexcept { return class_embeddings_; }

  // scale cos(image_i, class_c): [B, classes]. The image embeddings [B, E] are normalised here.
  template <TensorLike X>
  Tensor<T, 2> logits(const X& image_embeds) const {
    static_assert(std::is_same_v<scalar_t<X>, T> && rank_v<X> == 2,
                  "ZeroShotClassifier takes image embeddings [B, E] of its scalar type");
    const auto xv = cview(image_embeds);
    const Index e[] = {xv.dim(0), embed_dim()};
    tessera::detail::check_shape_equal("tessera::contrastive::ZeroShotClassifier::logits",
                                       "image_embeds", xv.shape(), e);
    // [B, classes] = s [B, E] x [classes, E]^T
    return matmul(l2_normalize(xv), class_embeddings_,
                  {.transpose_b = true, .alpha = options_.logit_scale});
  }

  // The k most probable classes of every image, most probable first (ties: the smaller id). A
  // NaN probability (from a NaN embedding) ranks first, as torch.topk ranks NaN, and is reported
  // as NaN.
  template <TensorLike X>
  ZeroShotPrediction<T> predict(const X& image_embeds, Index k = 1) const {
    if (k < 1 || k > num_classes())
      tessera::detail::raise<ValueError>("tessera::contrastive::ZeroShotClassifier::predict",
                                         "argument 'k' is ", k, ", expected a value in [1, ",
                                         num_classes(), "]");
    const auto probs = softmax(logits(image_embeds));
    const Index b = probs.dim(0), c = num_classes();
    ZeroShotPrediction<T> out;
    out.indices = Tensor<Index, 2>(Shape<2>{b, k});
    out.probabilities = Tensor<T, 2>(Shape<2>{b, k});
    out.labels.resize(static_cast<std::size_t>(b));
    std::vector<Index> order(static_cast<std::size_t>(c));
    for (Index i = 0; i < b; ++i) {
      std::iota(order.begin(), order.end(), Index{0});
      // A strict weak order even with NaN (a plain > is not one, and partial_sort would be
      // undefined): NaN above every number, equal to NaN.
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](Index x, Index y) {
        const T px = probs(i, x), py = probs(i, y);
        const bool nx = std::isnan(px), ny = std::isnan(py);
        if (nx != ny) return nx;
        return (!nx && px > py) || ((nx || px == py) && x < y);
      });
      for (Index j = 0; j < k; ++j) {
        const Index cls = order[static_cast<std::size_t>(j)];
        out.indices(i, j) = cls;
        out.probabilities(i, j) = probs(i, cls);
        out.labels[static_cast<std::size_t>(i)].push_back(
            class_names_[static_cast<std::size_t>(cls)]);
      }
    }
    return out;
  }

  // The fraction of images whose most probable class is `labels[i]` (class ids [B]).
  template <TensorLike X, TensorLike L>
  double accuracy(const X& image_embeds, const L& labels) const {
    const auto pred = predict(image_embeds, 1);
    const auto lv = cview(labels);
    static_assert(rank_v<L> == 1 && std::is_integral_v<scalar_t<L>>,
                  "labels are integer class ids [B]");
    const Index b = pred.indices.dim(0);
    const Index expect[] = {b};
    tessera::detail::check_shape_equal("tessera::contrastive::ZeroShotClassifier::accuracy",
                                       "labels", lv.shape(), expect);
    Index hits = 0;
    for (Index i = 0; i < b; ++i) hits += pred.indices(i, 0) == static_cast<Index>(lv.data()[i]);
    return b ? static_cast<double>(hits) / static_cast<double>(b) : 0.0;
  }

 private:
  std::vector<std::string> class_names_;
  std::vector<std::string> templates_;
  ZeroShotOptions options_;
  Tensor<T, 2> class_embeddings_;
};

}  // namespace tessera::contrastive

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::contrastive::ZeroShotClassifier)
