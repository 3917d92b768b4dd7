// tessera: learning-rate schedules by step, as open_clip's (open_clip/src/training/scheduler.py:
// `cosine_lr`, `const_lr`, with `_warmup_lr`), each a value type with
//
//   double lr_at(std::int64_t step) const;             // step = 0, 1, ... (the batch index)
//   void apply(Optimizer<T>& optimizer, std::int64_t step) const;
//
// apply sets every group's lr: lr_at(step) for a group that uses the optimizer's default lr (what
// open_clip's assign_learning_rate does), and lr_at(step) * (initial_lr / base_lr) for a group
// built with its own lr, so the ratio between groups is kept. Call it before each step:
//
//   tessera::optim::CosineWithWarmup schedule{.base_lr = 5e-4, .warmup_steps = 2000,
//                                             .total_steps = 100000};
//   for (std::int64_t step = 0; step < 100000; ++step) {
//     schedule.apply(optimizer, step);
//     ...  // gradients
//     optimizer.step();
//   }
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/optim/optimizer.hpp"

namespace tessera::optim {

namespace impl {

inline void check_schedule(std::string_view fn, double base_lr, double min_lr,
                           std::int64_t warmup_steps, std::int64_t total_steps, bool needs_total) {
  check_lr_like(fn, "base_lr", base_lr);
  check_lr_like(fn, "min_lr", min_lr);
  if (min_lr > base_lr)
    detail::raise<ValueError>(fn, "argument 'min_lr' is ", min_lr, ", expected at most base_lr (",
                              base_lr, ")");
  if (warmup_steps < 0)
    detail::raise<ValueError>(fn, "argument 'warmup_steps' is ", warmup_steps,
                              ", expected a value >= 0");
  if (needs_total && total_steps <= warmup_steps)
    detail::raise<ValueError>(fn, "argument 'total_steps' is ", total_steps,
                              ", expected more than warmup_steps (", warmup_steps, ")");
}

inline void check_step(std::string_view fn, std::int64_t step) {
  if (step < 0)
    detail::raise<ValueError>(fn, "argument 'step' is ", step, ", expected a value >= 0");
}

// a + b, where b was just computed as a product: the volatile keeps the compiler from fusing the
// two into one fused multiply-add (-ffp-contract=fast, GCC's default), which rounds once instead
// of twice and so would differ from Python's value in the last bit.
inline double add_uncontracted(double a, double b) {
  volatile double product = b;
  return a + product;
}

// open_clip's _warmup_lr: base_lr * (step + 1) / warmup_length.
inline double warmup_lr(double base_lr, std::int64_t warmup_steps, std::int64_t step) {
  return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
}

template <class T>
void apply_schedule(std::string_view fn, double base_lr, double lr, Optimizer<T>& opt) {
  for (std::size_t g = 0; g < opt.num_groups(); ++g) {
    if (!opt.has_own_lr(g)) {
      opt.set_lr(g, lr);
    } else {
      if (base_lr == 0)
        detail::raise<ValueError>(fn, "parameter group ", g, " has its own lr (", opt.initial_lr(g),
                                  ") and base_lr is 0, so its scale relative to base_lr is "
                                  "undefined; expected base_lr > 0");
      opt.set_lr(g, lr * (opt.initial_lr(g) / base_lr));
    }
  }
}

}  // namespace impl

// Linear warm-up from base_lr / warmup_steps at step 0 to base_lr at step warmup_steps - 1, then
// half a cosine from base_lr at step warmup_steps to min_lr at step total_steps:
//   lr = min_lr + 0.5 * (1 + cos(pi * e / es)) * (base_lr - min_lr),
//   e = step - warmup_steps, es = total_steps - warmup_steps
// (open_clip's cosine_lr, which has min_lr = 0; with min_lr = 0 the value is the same double).
// Past total_steps the lr stays at min_lr (open_clip never asks). Throws ValueError for a
// negative or non-finite base_lr or min_lr, min_lr > base_lr, warmup_steps < 0, total_steps <=
// warmup_steps or a negative step.
struct CosineWithWarmup {
  double base_lr = 0;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 0;
  double min_lr = 0;

  double lr_at(std::int64_t step) const {
    constexpr std::string_view fn = "tessera::optim::CosineWithWarmup::lr_at";
    impl::check_schedule(fn, base_lr, min_lr, warmup_steps, total_steps, true);
    impl::check_step(fn, step);
    if (step < warmup_steps) return impl::warmup_lr(base_lr, warmup_steps, step);
    const std::int64_t e = std::min(step, total_steps) - warmup_steps;
    const std::int64_t es = total_steps - warmup_steps;
    const double decayed =
        0.5 * (1 + std::cos(std::numbers::pi * static_cast<double>(e) / static_cast<double>(es))) *
        (base_lr - min_lr);
    return impl::add_uncontracted(min_lr, decayed);
  }
  template <class T>
  void apply(Optimizer<T>& optimizer, std::int64_t step) const {
    impl::apply_schedule("tessera::optim::CosineWithWarmup::apply", base_lr, lr_at(step),
                         optimizer);
  }
};

// Linear warm-up as CosineWithWarmup's, then a straight line from base_lr at step warmup_steps to
// min_lr at step total_steps, min_lr after (the shape of Hugging Face's
// get_linear_schedule_with_warmup, with open_clip's warm-up). Errors as CosineWithWarmup's.
struct LinearWarmup {
  double base_lr = 0;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 0;
  double min_lr = 0;

  double lr_at(std::int64_t step) const {
    constexpr std::string_view fn = "tessera::optim::LinearWarmup::lr_at";
    impl::check_schedule(fn, base_lr, min_lr, warmup_steps, total_steps, true);
    impl::check_step(fn, step);
    if (step < warmup_steps) return impl::warmup_lr(base_lr, warmup_steps, step);
    const std::int64_t e = std::min(step, total_steps) - warmup_steps;
    const std::int64_t es = total_steps - warmup_steps;
    return impl::add_uncontracted(
        min_lr, (base_lr - min_lr) * (1.0 - static_cast<double>(e) / static_cast<double>(es)));
  }
  template <class T>
  void apply(Optimizer<T>& optimizer, std::int64_t step) const {
    impl::apply_schedule("tessera::optim::LinearWarmup::apply", base_lr, lr_at(step), optimizer);
  }
};

// Linear warm-up as CosineWithWarmup's, then base_lr (open_clip's const_lr). Throws ValueError for
// a negative or non-finite base_lr, warmup_steps < 0 or a negative step.
struct ConstantWithWarmup {
  double base_lr = 0;
  std::int64_t warmup_steps = 0;

  double lr_at(std::int64_t step) const {
    constexpr std::string_view fn = "tessera::optim::ConstantWithWarmup::lr_at";
    impl::check_schedule(fn, base_lr, 0.0, warmup_steps, 0, false);
    impl::check_step(fn, step);
    return step < warmup_steps ? impl::warmup_lr(base_lr, warmup_steps, step) : base_lr;
  }
  template <class T>
  void apply(Optimizer<T>& optimizer, std::int64_t step) const {
    impl::apply_schedule("tessera::optim::ConstantWithWarmup::apply", base_lr, lr_at(step),
                         optimizer);
  }
};

}  // namespace tessera::optim
