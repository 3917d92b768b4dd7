// tessera: parameter groups (PyTorch's optimizer `param_groups`) and open_clip's split into
// weight-decayed and not-decayed parameters.
//
//   auto groups = tessera::optim::open_clip_param_groups(model, /*weight_decay=*/0.2);
//   tessera::optim::AdamW<float> opt(groups, {.lr = 5e-4});
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "tessera/optim/parameter_ref.hpp"

namespace tessera::optim {

// Parameters optimised with the same hyper-parameters. `lr` and `weight_decay` override the
// optimizer's defaults for this group (as a dict entry {"params": ..., "lr": ...} does in
// PyTorch); the other hyper-parameters are the optimizer's.
template <class T>
struct ParamGroup {
  std::vector<ParameterRef<T>> params;
  std::optional<double> lr;
  std::optional<double> weight_decay;
};

// open_clip's rule (open_clip/src/training/main.py, the optimizer set-up): a parameter is
// "gain or bias" — trained without weight decay — when
//   p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
// (substring tests on the state-dict name, as there). `name` is the state-dict name.
inline bool open_clip_excludes_from_weight_decay(const std::string& name, int ndim) {
  return ndim < 2 || name.find("bn") != std::string::npos || name.find("ln") != std::string::npos ||
         name.find("bias") != std::string::npos || name.find("logit_scale") != std::string::npos;
}

// open_clip's two groups, in its order: {gain-or-bias parameters, weight_decay 0} and {the rest,
// weight_decay `weight_decay`}; neither sets its own lr. Parameters keep their visiting order in
// each group. T is deduced as in optim::parameters. Throws ValueError for a negative or
// non-finite weight_decay.
template <class T = void, class M>
std::vector<ParamGroup<impl::scalar_or_module_scalar<T, M>>> open_clip_param_groups(
    M& module, double weight_decay, const std::string& prefix = "") {
  using S = impl::scalar_or_module_scalar<T, M>;
  if (!(weight_decay >= 0.0) || !std::isfinite(weight_decay))
    detail::raise<ValueError>("tessera::optim::open_clip_param_groups",
                              "argument 'weight_decay' is ", weight_decay,
                              ", expected a finite value >= 0");
  std::vector<ParamGroup<S>> groups(2);
  groups[0].weight_decay = 0.0;
  groups[1].weight_decay = weight_decay;
  for (auto& p : parameters<S>(module, prefix))
    groups[open_clip_excludes_from_weight_decay(p.name(), p.rank()) ? 0 : 1].params.push_back(
        std::move(p));
  return groups;
}

}  // namespace tessera::optim
