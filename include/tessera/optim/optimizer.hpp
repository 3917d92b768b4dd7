// tessera: what every optimizer shares — parameter groups with their learning rates, per-parameter
// state, zero_grad, and the optimizer's state dict (PyTorch's torch.optim.Optimizer).
//
// The state of one parameter is its step count and named buffers of the parameter's size
// ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"), created on the first step that
// finds a gradient, as PyTorch creates `optimizer.state[p]` lazily. A parameter without a gradient
// (nn::Parameter::has_grad() false, PyTorch's `p.grad is None`) is skipped by step().
//
// An optimizer refers to the module's parameters (optim::ParameterRef): the module must outlive
// it and stay where it is. Build the optimizer once the model is in place, and build it again if
// the model is moved or copied, or a stack's public `layers` vector is changed.
//
// state_dict(prefix) stores, for each parameter with state, "<prefix><param name>.<buffer>" (the
// parameter's shape and scalar type) and "<prefix><param name>.step" (I64, rank 0), and in the
// metadata the optimizer's type, its options and per group its parameter names, lr, initial_lr
// (the lr it was built with, which schedules scale from) and weight_decay, with every double
// written so that it reads back bit for bit.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/optim/param_group.hpp"
#include "tessera/optim/parameter_ref.hpp"

namespace tessera::optim {

// One parameter's optimizer state.
template <class T>
struct ParamState {
  bool initialized = false;  // a step has found this parameter's gradient
  std::int64_t step = 0;     // steps taken on this parameter
  std::vector<Index> shape;  // the parameter's shape when the state was created
  std::map<std::string, std::vector<T>, std::less<>> buffers;

  // The buffer `name`, created zero-filled with `n` elements if absent.
  std::vector<T>& buffer(std::string_view name, std::size_t n) {
    auto it = buffers.find(name);
    if (it == buffers.end()) it = buffers.emplace(std::string(name), std::vector<T>(n, T(0))).first;
    return it->second;
  }
  const std::vector<T>* find(std::string_view name) const {
    const auto it = buffers.find(name);
    return it == buffers.end() ? nullptr : &it->second;
  }
};

namespace impl {

// Shortest decimal form of `v` that reads back as the same double (std::to_chars).
inline std::string format_double(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// The double written by format_double; nullopt unless the whole string is one.
inline std::optional<double> parse_double(std::string_view s) {
  double v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

// NaN-propagating maximum, as torch.maximum.
template <class T>
T nan_max(T a, T b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

inline void check_lr_like(std::string_view fn, std::string_view arg, double v) {
  if (!(v >= 0.0) || !std::isfinite(v))
    detail::raise<ValueError>(fn, "argument '", arg, "' is ", v, ", expected a finite value >= 0");
}

}  // namespace impl

template <class T>
class Optimizer {
 public:
  using Scalar = T;

  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = default;
  Optimizer& operator=(const Optimizer&) = default;
  Optimizer(Optimizer&&) noexcept = default;
  Optimizer& operator=(Optimizer&&) noexcept = default;

  // One update of every parameter that has a gradient. Throws ShapeError, changing nothing, when
  // a parameter's shape differs from the one its state was created for, or its gradient is
  // allocated with another shape than its value.
  virtual void step() = 0;
  // "SGD", "Adam", "AdamW".
  virtual std::string_view name() const = 0;

  // Sets every parameter's gradient to zero, allocating missing ones (PyTorch's
  // zero_grad(set_to_none=False)).
  void zero_grad() {
    for (auto& g : groups_)
      for (auto& p : g.params) p.zero_grad();
  }

  std::size_t num_groups() const noexcept { return groups_.size(); }
  const std::vector<ParameterRef<T>>& params(std::size_t group) const {
    return checked_group("params", group).params;
  }
  // The group's current learning rate.
  double lr(std::size_t group = 0) const { return checked_group("lr", group).lr; }
  // The learning rate the group was built with (its own, or the optimizer's default), which
  // schedules scale from (PyTorch's schedulers keep it as param_group['initial_lr']).
  double initial_lr(std::size_t group = 0) const {
    return checked_group("initial_lr", group).initial_lr;
  }
  // Whether the group was given its own lr (ParamGroup::lr).
  bool has_own_lr(std::size_t group) const { return checked_group("has_own_lr", group).own_lr; }
  double weight_decay(std::size_t group = 0) const {
    return checked_group("weight_decay", group).weight_decay;
  }
  // Sets the learning rate of one group, or of every group. Throws ValueError for a negative or
  // non-finite lr or a group index out of range.
  void set_lr(std::size_t group, double lr) {
    auto& g = checked_group("set_lr", group);
    impl::check_lr_like(fn_ + "::set_lr", "lr", lr);
    g.lr = lr;
  }
  void set_lr(double lr) {
    impl::check_lr_like(fn_ + "::set_lr", "lr", lr);
    for (auto& g : groups_) g.lr = lr;
  }

  // The state of parameter `index` of `group` (uninitialised before its first step).
  const ParamState<T>& state(std::size_t group, std::size_t index) const {
    const auto& g = checked_group("state", group);
    if (index >= g.state.size())
      detail::raise<ValueError>(fn_ + "::state", "argument 'index' is ", index, ", group ", group,
                                " has ", g.state.size(), " parameters");
    return g.state[index];
  }
  // The state of the parameter named `name`, or null when no parameter has that name.
  const ParamState<T>* find_state(std::string_view name) const {
    for (const auto& g : groups_)
      for (std::size_t i = 0; i < g.params.size(); ++i)
        if (g.params[i].name() == name) return &g.state[i];
    return nullptr;
  }

  // The state as a StateDict (see the top of this file), keys and metadata keys prefixed.
  io::StateDict state_dict(const std::string& prefix = "") const {
    io::StateDict sd;
    sd.metadata[prefix + "type"] = std::string(name());
    for (const auto& [k, v] : options()) sd.metadata[prefix + "option." + k] = v;
    sd.metadata[prefix + "groups"] = std::to_string(groups_.size());
    for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
      const auto& g = groups_[gi];
      const std::string gp = prefix + "group." + std::to_string(gi) + ".";
      sd.metadata[gp + "lr"] = impl::format_double(g.lr);
      sd.metadata[gp + "initial_lr"] = impl::format_double(g.initial_lr);
      sd.metadata[gp + "weight_decay"] = impl::format_double(g.weight_decay);
      sd.metadata[gp + "own_lr"] = g.own_lr ? "true" : "false";
      sd.metadata[gp + "params"] = param_list(g);
      for (std::size_t i = 0; i < g.params.size(); ++i) {
        const auto& st = g.state[i];
        if (!st.initialized) continue;
        const std::string key = prefix + g.params[i].name() + ".";
        Tensor<std::int64_t, 0> step_t;
        step_t() = st.step;
        sd.insert(key + "step", step_t);
        for (const auto& [bname, buf] : st.buffers) {
          Tensor<T, 1> flat(Shape<1>{static_cast<Index>(buf.size())}, uninitialized);
          std::copy(buf.begin(), buf.end(), flat.data());
          auto stored = io::StoredTensor::from(flat);
          stored.shape = st.shape;
          sd.insert(key + bname, std::move(stored));
        }
      }
    }
    return sd;
  }

  // Restores what state_dict(prefix) wrote: every parameter's state, and each group's lr,
  // initial_lr and weight_decay. The optimizer must be of the same type and options, with the
  // same groups of parameters (by name): otherwise ValueError, naming what differs. A stored
  // buffer whose shape is not its parameter's throws ShapeError; tensors under `prefix` that
  // belong to no parameter, or a state lacking a buffer, throw ValueError. Nothing is changed
  // when anything fails.
  void load_state_dict(const io::StateDict& sd, const std::string& prefix = "") {
    const std::string fn = fn_ + "::load_state_dict";
    const auto meta = [&](const std::string& key) -> const std::string& {
      const auto it = sd.metadata.find(prefix + key);
      if (it == sd.metadata.end())
        detail::raise<ValueError>(fn, "metadata key '", prefix, key,
                                  "' is missing (not an optimizer state dict?)");
      return it->second;
    };
    const auto meta_double = [&](const std::string& key) {
      const std::string& s = meta(key);
      const auto v = impl::parse_double(s);
      if (!v)
        detail::raise<ValueError>(fn, "metadata '", prefix, key, "' is '", s,
                                  "', expected a number");
      return *v;
    };
    if (meta("type") != name())
      detail::raise<ValueError>(fn, "the state dict was written by ", meta("type"), ", not by ",
                                name());
    for (const auto& [k, v] : options())
      if (meta("option." + k) != v)
        detail::raise<ValueError>(fn, "option '", k, "' is ", meta("option." + k),
                                  " in the state dict, but ", v, " in this optimizer");
    if (meta("groups") != std::to_string(groups_.size()))
      detail::raise<ValueError>(fn, "the state dict has ", meta("groups"),
                                " parameter groups, this optimizer ", groups_.size());
    std::vector<Group> next = groups_;
    std::set<std::string> used;
    const std::vector<std::string> buffers = buffer_names();
    for (std::size_t gi = 0; gi < next.size(); ++gi) {
      auto& g = next[gi];
      const std::string gp = "group." + std::to_string(gi) + ".";
      if (meta(gp + "params") != param_list(g))
        detail::raise<ValueError>(fn, "parameter group ", gi, " holds the parameters [",
                                  meta(gp + "params"), "] in the state dict, but [", param_list(g),
                                  "] in this optimizer");
      g.lr = meta_double(gp + "lr");
      g.initial_lr = meta_double(gp + "initial_lr");
      g.weight_decay = meta_double(gp + "weight_decay");
      // the checks the constructor runs, on what the file says
      impl::check_lr_like(fn, gp + "lr", g.lr);
      impl::check_lr_like(fn, gp + "initial_lr", g.initial_lr);
      impl::check_lr_like(fn, gp + "weight_decay", g.weight_decay);
      g.own_lr = meta(gp + "own_lr") == "true";
      for (std::size_t i = 0; i < g.params.size(); ++i) {
        const auto& p = g.params[i];
        ParamState<T> st;
        const std::string key = prefix + p.name() + ".";
        if (const io::StoredTensor* s = sd.find(key + "step")) {
          used.insert(key + "step");
          if (s->dtype != io::DType::I64 || !s->shape.empty())
            detail::raise<ValueError>(fn, "tensor '", key, "step' is ", io::dtype_name(s->dtype),
                                      " of shape ", detail::shape_string(s->shape),
                                      ", expected an I64 scalar");
          st.initialized = true;
          st.step = s->values<std::int64_t>()[0];
          if (st.step < 1)
            detail::raise<ValueError>(
                fn, "tensor '", key, "step' is ", st.step,
                ", expected a step count >= 1 (a state is saved after a step)");
          st.shape.assign(p.shape().begin(), p.shape().end());
          for (const auto& b : buffers) {
            const io::StoredTensor* t = sd.find(key + b);
            if (!t)
              detail::raise<ValueError>(fn, "tensor '", key, b, "' is missing: the state of ",
                                        name(), " holds ", b);
            used.insert(key + b);
            if (t->shape != st.shape)
              detail::raise<ShapeError>(fn, "tensor '", key, b, "' has shape ",
                                        detail::shape_string(t->shape), ", its parameter has ",
                                        detail::shape_string(st.shape));
            st.buffers.emplace(b, t->values<T>());
          }
        }
        g.state[i] = std::move(st);
      }
    }
    std::vector<std::string> unexpected;
    for (const auto& [k, t] : sd)
      if (k.compare(0, prefix.size(), prefix) == 0 && !used.count(k)) unexpected.push_back(k);
    if (!unexpected.empty())
      detail::raise<ValueError>(fn, "unexpected tensors: ", io::detail::name_list(unexpected));
    groups_ = std::move(next);
  }

 protected:
  struct Group {
    std::vector<ParameterRef<T>> params;
    double lr = 0, initial_lr = 0, weight_decay = 0;
    bool own_lr = false;
    std::vector<ParamState<T>> state;  // one per parameter
  };

  // `fn` is the public name ("tessera::optim::AdamW"); `default_lr` and `default_weight_decay`
  // are the optimizer's options, already checked.
  Optimizer(std::string fn, std::vector<ParamGroup<T>> groups, double default_lr,
            double default_weight_decay)
      : fn_(std::move(fn)) {
    if (groups.empty())
      detail::raise<ValueError>(fn_, "argument 'params' is empty, expected at least one parameter");
    std::set<const void*> seen;
    std::set<std::string, std::less<>> names;
    for (std::size_t gi = 0; gi < groups.size(); ++gi) {
      auto& pg = groups[gi];
      const std::string where = "groups[" + std::to_string(gi) + "].";
      if (pg.lr) impl::check_lr_like(fn_, where + "lr", *pg.lr);
      if (pg.weight_decay) impl::check_lr_like(fn_, where + "weight_decay", *pg.weight_decay);
      for (const auto& p : pg.params) {
        if (!seen.insert(p.address()).second)
          detail::raise<ValueError>(fn_, "parameter ", io::detail::quote_name(p.name()),
                                    " appears more than once in the parameter groups");
        if (!names.insert(p.name()).second)
          detail::raise<ValueError>(fn_, "two parameters are named ",
                                    io::detail::quote_name(p.name()),
                                    ", expected unique names (they key the state dict)");
      }
      Group g;
      g.lr = g.initial_lr = pg.lr.value_or(default_lr);
      g.own_lr = pg.lr.has_value();
      g.weight_decay = pg.weight_decay.value_or(default_weight_decay);
      g.state.resize(pg.params.size());
      g.params = std::move(pg.params);
      groups_.push_back(std::move(g));
    }
  }
  static std::vector<ParamGroup<T>> one_group(std::vector<ParameterRef<T>> params,
                                              std::string_view fn) {
    if (params.empty())
      detail::raise<ValueError>(fn, "argument 'params' is empty, expected at least one parameter");
    std::vector<ParamGroup<T>> g(1);
    g[0].params = std::move(params);
    return g;
  }

  // The optimizer-wide options as strings, for the state dict ({"betas[0]", "0.9"}, ...).
  virtual std::vector<std::pair<std::string, std::string>> options() const = 0;
  // The buffers an initialised state holds.
  virtual std::vector<std::string> buffer_names() const = 0;

  // Checks every parameter that has (or has a misshapen) gradient against its state, throwing
  // ShapeError from `fn`, then calls update(group, param, state) for each parameter with a
  // gradient, in group order, after initialising its state (shape recorded, step 0); bumps each
  // updated parameter's version.
  template <class F>
  void for_each_param_with_grad(std::string_view fn, F&& update) {
    for (const auto& g : groups_)
      for (std::size_t i = 0; i < g.params.size(); ++i) {
        const auto& p = g.params[i];
        if (p.grad_mismatched())
          detail::raise<ShapeError>(
              fn, "parameter ", io::detail::quote_name(p.name()), " has a gradient of shape ",
              detail::shape_string(p.grad_shape()), ", expected its value's shape ",
              detail::shape_string(p.shape()));
        const auto& st = g.state[i];
        if (st.initialized && p.has_grad() &&
            !std::equal(st.shape.begin(), st.shape.end(), p.shape().begin(), p.shape().end()))
          detail::raise<ShapeError>(fn, "parameter ", io::detail::quote_name(p.name()),
                                    " has shape ", detail::shape_string(p.shape()),
                                    ", but its optimizer state was created for shape ",
                                    detail::shape_string(st.shape));
      }
    for (auto& g : groups_)
      for (std::size_t i = 0; i < g.params.size(); ++i) {
        const auto& p = g.params[i];
        if (!p.has_grad()) continue;
        auto& st = g.state[i];
        if (!st.initialized) {
          st.initialized = true;
          st.step = 0;
          st.shape.assign(p.shape().begin(), p.shape().end());
        }
        update(g, p, st);
        p.bump_version();
      }
  }

  std::vector<Group> groups_;
  std::string fn_;

 private:
  static std::string param_list(const Group& g) {
    std::string s;
    for (const auto& p : g.params) {
      if (!s.empty()) s += ", ";
      s += p.name();
    }
    return s;
  }
  const Group& checked_group(std::string_view what, std::size_t group) const {
    if (group >= groups_.size())
      detail::raise<ValueError>(fn_ + "::" + std::string(what), "argument 'group' is ", group,
                                ", expected less than the ", groups_.size(), " parameter groups");
    return groups_[group];
  }
  Group& checked_group(std::string_view what, std::size_t group) {
    return const_cast<Group&>(std::as_const(*this).checked_group(what, group));
  }
};

}  // namespace tessera::optim

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::optim::Optimizer)
