// tessera::contrastive::LinearProbe: the linear-probe evaluation of a representation (as in
// Radford et al. 2021, section 3.2): a softmax-regression classifier trained on frozen embeddings
// by full-batch or mini-batch gradient descent with weight decay, and its accuracy.
//
//   loss(W, b) = (1/B) sum_i -log softmax(W x_i + b)_{y_i} + (weight_decay / 2) ||W||^2
//
//   LinearProbe<float> probe({.in_features = 32, .num_classes = 10});
//   auto history = probe.fit(train_x, train_y, {.epochs = 200, .learning_rate = 0.5,
//                                               .weight_decay = 1e-4, .batch_size = 64});
//   double acc = probe.accuracy(test_x, test_y);
//
// State dict keys: "weight" [num_classes, in_features], "bias" [num_classes] (torch.nn.Linear's).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/softmax.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::contrastive {

struct LinearProbeOptions {
  Index in_features = 0;  // embedding width, > 0
  Index num_classes = 0;  // > 1
  std::uint64_t seed = 0;
};

struct LinearProbeFitOptions {
  Index epochs = 100;          // passes over the data, >= 1
  double learning_rate = 0.1;  // > 0
  double weight_decay = 0.0;   // L2 penalty on the weight (not the bias), >= 0
  Index batch_size = 0;        // 0: full batch; otherwise mini-batches of this many, shuffled
  std::uint64_t seed = 0;      // the mini-batches' shuffling
};

template <class T>
class LinearProbe : public nn::Module<LinearProbe<T>> {
 public:
  nn::Linear<T> linear;  // W [num_classes, in_features], b [num_classes]

  explicit LinearProbe(const LinearProbeOptions& o) : options_(o) {
    if (o.in_features < 1 || o.num_classes < 2)
      tessera::detail::raise<ValueError>("tessera::contrastive::LinearProbe",
                                         "options 'in_features' and 'num_classes' are ",
                                         o.in_features, " and ", o.num_classes,
                                         ", expected in_features >= 1 and num_classes >= 2");
    tessera::detail::checked_mul(o.in_features, o.num_classes, "tessera::contrastive::LinearProbe",
                                 "the weight [num_classes, in_features]");
    linear = nn::Linear<T>({.in_features = o.in_features,
                            .out_features = o.num_classes,
                            .bias = true,
                            .seed = o.seed});
  }

  const LinearProbeOptions& options() const noexcept { return options_; }

  // W x + b: [B, num_classes].
  template <TensorLike X>
  Tensor<T, 2> logits(const X& x) const {
    return logits_as(x, "tessera::contrastive::LinearProbe::logits");
  }

  // The most probable class of every row [B] (ties: the smaller id). A row whose logits hold
  // NaN predicts its first NaN, as torch.argmax does.
  template <TensorLike X>
  Tensor<Index, 1> predict(const X& x) const {
    return argmax_rows(logits_as(x, "tessera::contrastive::LinearProbe::predict"));
  }

  // The fraction of rows predicted as their label: 0 for no rows, NaN when any row's logits
  // hold NaN (a NaN embedding or weight must not yield a plausible accuracy).
  template <TensorLike X, TensorLike L>
  double accuracy(const X& x, const L& labels) const {
    constexpr std::string_view fn = "tessera::contrastive::LinearProbe::accuracy";
    const auto y = checked_labels(fn, x, labels);
    const auto l = logits_as(x, fn);
    if (l.as_array().isNaN().any()) return std::numeric_limits<double>::quiet_NaN();
    const auto p = argmax_rows(l);
    Index hits = 0;
    for (Index i = 0; i < p.dim(0); ++i) hits += p(i) == y[static_cast<std::size_t>(i)];
    return p.dim(0) ? static_cast<double>(hits) / static_cast<double>(p.dim(0)) : 0.0;
  }

  // The loss above on (x, labels), with its gradient added to linear's (allocated and zeroed
  // first where there is none).
  template <TensorLike X, TensorLike L>
  T loss_and_grad(const X& x, const L& labels, double weight_decay = 0.0) {
    constexpr std::string_view fn = "tessera::contrastive::LinearProbe::loss_and_grad";
    const auto y = checked_labels(fn, x, labels);
    check_weight_decay(fn, "argument", weight_decay);
    check_nonempty(fn, x);
    return step(cview(x), y, static_cast<T>(weight_decay));
  }

  // Gradient descent; returns the loss of every epoch (the mean over its batches, each loss
  // computed before that batch's update).
  template <TensorLike X, TensorLike L>
  std::vector<T> fit(const X& x, const L& labels, const LinearProbeFitOptions& o = {}) {
    constexpr std::string_view fn = "tessera::contrastive::LinearProbe::fit";
    const auto y = checked_labels(fn, x, labels);
    check_weight_decay(fn, "option", o.weight_decay);
    if (o.epochs < 1)
      tessera::detail::raise<ValueError>(fn, "option 'epochs' is ", o.epochs,
                                         ", expected a value >= 1");
    if (!(static_cast<T>(o.learning_rate) > 0) || !std::isfinite(static_cast<T>(o.learning_rate)))
      tessera::detail::raise<ValueError>(fn, "option 'learning_rate' is ", o.learning_rate,
                                         ", expected a finite value > 0 in the scalar type");
    if (o.batch_size < 0)
      tessera::detail::raise<ValueError>(fn, "option 'batch_size' is ", o.batch_size,
                                         ", expected 0 (full batch) or a value >= 1");
    check_nonempty(fn, x);
    const auto xv = cview(x);
    const Index n = xv.dim(0), d = xv.dim(1);
    const Index batch = o.batch_size == 0 ? n : std::min(o.batch_size, n);
    const T lr = static_cast<T>(o.learning_rate), wd = static_cast<T>(o.weight_decay);
    std::vector<Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), Index{0});
    std::mt19937_64 gen(o.seed);
    Tensor<T, 2> xb;
    std::vector<Index> yb;
    std::vector<T> history;
    for (Index epoch = 0; epoch < o.epochs; ++epoch) {
      if (batch < n) std::shuffle(order.begin(), order.end(), gen);
      double total = 0;
      Index batches = 0;
      for (Index b0 = 0; b0 < n; b0 += batch, ++batches) {
        const Index bn = std::min(batch, n - b0);
        xb = Tensor<T, 2>(Shape<2>{bn, d}, uninitialized);
        yb.resize(static_cast<std::size_t>(bn));
        for (Index i = 0; i < bn; ++i) {
          const Index r = order[static_cast<std::size_t>(b0 + i)];
          xb.as_matrix().row(i) = xv.as_matrix().row(r);
          yb[static_cast<std::size_t>(i)] = y[static_cast<std::size_t>(r)];
        }
        this->zero_grad();
        total += static_cast<double>(step(cview(xb), yb, wd));
        linear.weight.value.as_array() -= lr * linear.weight.grad.as_array();
        linear.bias.value.as_array() -= lr * linear.bias.grad.as_array();
      }
      history.push_back(static_cast<T>(total / static_cast<double>(batches)));
    }
    return history;
  }

  // The keys are the Linear's own ("weight", "bias").
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    nn::Linear<T>::visit(self.linear, f, prefix);
  }

 private:
  // Mean cross-entropy + wd/2 ||W||^2 on one batch; adds the gradient to linear's.
  T step(TensorMap<const T, 2> x, const std::vector<Index>& y, T wd) {
    const Index b = x.dim(0);
    Tensor<T, 2> g = linear.forward(x);  // logits [B, classes], then dL/dlogits
    const auto logp = log_softmax(g);
    double loss = 0;
    for (Index i = 0; i < b; ++i)
      loss -= static_cast<double>(logp(i, y[static_cast<std::size_t>(i)]));
    loss /= static_cast<double>(b);
    // dL/dlogits = (softmax - onehot) / B
    g.as_array() = logp.as_array().exp() / static_cast<T>(b);
    for (Index i = 0; i < b; ++i) g(i, y[static_cast<std::size_t>(i)]) -= T(1) / static_cast<T>(b);
    if (!linear.weight.has_grad()) linear.weight.zero_grad();
    if (!linear.bias.has_grad()) linear.bias.zero_grad();
    // dW: [classes, in] += g^T [classes, B] x x [B, in]
    matmul_into(g, x, linear.weight.grad, {.transpose_a = true, .accumulate = true});
    linear.bias.grad.as_vector() += g.as_matrix().colwise().sum().transpose();
    if (wd > 0) {
      linear.weight.grad.as_array() += wd * linear.weight.value.as_array();
      loss += static_cast<double>(wd) / 2 * linear.weight.value.as_matrix().squaredNorm();
    }
    return static_cast<T>(loss);
  }

  // logits() under the name of the entry point the user called, which also checks linear's
  // parameters under that name (the probe's state-dict names are linear's own: weight, bias).
  template <TensorLike X>
  Tensor<T, 2> logits_as(const X& x, std::string_view fn) const {
    check_x(fn, x);
    linear.check_parameters(fn);
    return linear.forward(x);
  }

  template <class X>
  void check_x(std::string_view fn, const X& x) const {
    static_assert(std::is_same_v<scalar_t<X>, T> && rank_v<X> == 2,
                  "LinearProbe takes embeddings [B, in_features] of its scalar type");
    if (x.shape()[1] != options_.in_features)
      tessera::detail::raise<ShapeError>(fn, "argument 'x' has shape ",
                                         tessera::detail::shape_string(x.shape()), ", expected [",
                                         x.shape()[0], ", ", options_.in_features, "]");
  }

  // Labels [B], integer class ids in [0, num_classes).
  template <class X, class L>
  std::vector<Index> checked_labels(std::string_view fn, const X& x, const L& labels) const {
    check_x(fn, x);
    static_assert(
        rank_v<L> == 1 && std::is_integral_v<scalar_t<L>> && !std::is_same_v<scalar_t<L>, bool>,
        "labels are integer class ids [B]");
    const auto lv = cview(labels);
    const Index b = x.shape()[0];
    const Index expect[] = {b};
    tessera::detail::check_shape_equal(fn, "labels", lv.shape(), expect);
    std::vector<Index> y(static_cast<std::size_t>(b));
    for (Index i = 0; i < b; ++i) {
      const auto v = lv.data()[i];
      if (std::cmp_less(v, 0) || std::cmp_greater_equal(v, options_.num_classes))
        tessera::detail::raise<IndexError>(fn, "argument 'labels' holds ", +v, " at index ", i,
                                           ", expected a class id in [0, ", options_.num_classes,
                                           ")");
      y[static_cast<std::size_t>(i)] = static_cast<Index>(v);
    }
    return y;
  }

  template <class X>
  static void check_nonempty(std::string_view fn, const X& x) {
    if (x.shape()[0] < 1)
      tessera::detail::raise<ShapeError>(fn, "argument 'x' has shape ",
                                         tessera::detail::shape_string(x.shape()),
                                         ", expected at least one row");
  }

  // Checked in T: 1e39 is finite in double and inf in float.
  static void check_weight_decay(std::string_view fn, std::string_view kind, double wd) {
    if (!(wd >= 0) || !std::isfinite(static_cast<T>(wd)))
      tessera::detail::raise<ValueError>(fn, kind, " 'weight_decay' is ", wd,
                                         ", expected a finite value >= 0 in the scalar type");
  }

  static Tensor<Index, 1> argmax_rows(const Tensor<T, 2>& l) {
    Tensor<Index, 1> out(Shape<1>{l.dim(0)});
    for (Index i = 0; i < l.dim(0); ++i) {
      Index best = 0;
      for (Index j = 1; j < l.dim(1); ++j) {
        if (std::isnan(l(i, best))) break;
        if (std::isnan(l(i, j)) || l(i, j) > l(i, best)) best = j;
      }
      out(i) = best;
    }
    return out;
  }

  LinearProbeOptions options_{};
};

}  // namespace tessera::contrastive

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::contrastive::LinearProbe)
