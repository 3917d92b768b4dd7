// tessera: what every module shares — walking its parameters under PyTorch's state_dict names,
// loading them from a StateDict (strict by default, as PyTorch's load_state_dict), and saving them.
//
// A module derives from Module<Derived> and defines one template,
//
//   template <class Self, class F>
//   static void visit(Self& self, F&& f, const std::string& prefix);
//
// that calls f(prefix + "name", self.param) for each of its Parameters and forwards to its child
// modules with prefix + "child.". `Self` is the module or a const module, so one definition
// serves loading (mutable) and saving or counting (const).
#pragma once

#include <algorithm>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::detail {

// Hands freed heap memory back to the system. glibc raises its mmap threshold as large blocks
// are freed, so in a process that has freed big buffers before, a checkpoint's tensors may sit
// on the heap, where freeing them releases nothing; malloc_trim returns such pages (also from
// the middle of the heap), which keeps a consuming load near the checkpoint's size.
inline void return_free_memory() noexcept {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace tessera::detail

namespace tessera::nn {

template <class Derived>
class Module {
 public:
  // Calls f(name, parameter) for every parameter, names prefixed by `prefix`.
  template <class F>
  void for_each_parameter(F&& f, const std::string& prefix = "") {
    Derived::visit(static_cast<Derived&>(*this), f, prefix);
  }
  template <class F>
  void for_each_parameter(F&& f, const std::string& prefix = "") const {
    Derived::visit(static_cast<const Derived&>(*this), f, prefix);
  }

  // Number of learnable scalars.
  Index num_parameters() const {
    Index n = 0;
    for_each_parameter([&](const std::string&, const auto& p) { n += p.size(); });
    return n;
  }

  // Copies every parameter from `dict[prefix + name]`, converting the stored dtype to the
  // module's scalar type. A stored shape that differs throws ShapeError naming the key. With
  // `strict`, keys the module lacks and keys under `prefix` that the module does not have are
  // listed together in one ValueError, as PyTorch's strict loading does (each list capped at
  // the first 20 and their count, so a checkpoint under another naming gives a short message);
  // nothing is changed then.
  void load_state_dict(const io::StateDict& dict, const std::string& prefix = "",
                       bool strict = true) {
    load_from(dict, prefix, strict);
  }
  // The same, consuming `dict`: each tensor is released as soon as it is copied into its
  // parameter, so loading a checkpoint holds about its size in memory once, not twice (with
  // parameters allocated in an nn::SkipInit scope, whose pages are not resident until written).
  // When a check fails (missing, unexpected or misshapen keys) nothing is changed and `dict`
  // keeps every tensor.
  void load_state_dict(io::StateDict&& dict, const std::string& prefix = "", bool strict = true) {
    load_from(dict, prefix, strict);
  }

 private:
  // Dict is io::StateDict (consumed) or const io::StateDict.
  template <class Dict>
  void load_from(Dict& dict, const std::string& prefix, bool strict) {
    constexpr std::string_view fn = "tessera::nn::Module::load_state_dict";
    std::vector<std::string> missing;
    std::set<std::string> used;
    // First pass: check everything, so a failed load leaves the module as it was.
    for_each_parameter(
        [&](const std::string& name, auto& p) {
          const io::StoredTensor* st = dict.find(name);
          if (!st) {
            missing.push_back(name);
            return;
          }
          used.insert(name);
          const std::span<const Index> expected(p.value.shape().data(), p.value.shape().size());
          // Compared element by element: a scalar parameter's shape is an empty array whose
          // data() may be null, and std::equal would pass that to memcmp.
          bool same = st->shape.size() == expected.size();
          for (std::size_t i = 0; same && i < expected.size(); ++i)
            same = st->shape[i] == expected[i];
          if (!same)
            detail::raise<ShapeError>(fn, "key ", io::detail::quote_name(name), " has shape ",
                                      detail::shape_string(st->shape),
                                      " in the state dict, the module expects ",
                                      detail::shape_string(expected));
        },
        prefix);
    std::vector<std::string> unexpected;
    for (const auto& [key, st] : dict)
      if (key.compare(0, prefix.size(), prefix) == 0 && !used.count(key)) unexpected.push_back(key);
    if (strict && (!missing.empty() || !unexpected.empty())) {
      std::ostringstream os;
      os << "error loading the state dict";
      if (!missing.empty()) os << "; missing keys: " << io::detail::name_list(missing);
      if (!unexpected.empty()) os << "; unexpected keys: " << io::detail::name_list(unexpected);
      detail::raise<ValueError>(fn, os.str());
    }
    for_each_parameter(
        [&](const std::string& name, auto& p) {
          if (const io::StoredTensor* st = dict.find(name)) {
            st->copy_to(p.value.data(), fn, "key " + io::detail::quote_name(name) + ": ");
            ++p.version;  // packed copies of the old value are stale now
            if constexpr (!std::is_const_v<Dict>) {
              const bool large = st->bytes.size() >= (std::size_t{1} << 20);
              dict.erase(name);
              if (large) detail::return_free_memory();
            }
          }
        },
        prefix);
  }

 public:
  // Every parameter's value under its PyTorch name (prefixed).
  io::StateDict state_dict(const std::string& prefix = "") const {
    io::StateDict dict;
    for_each_parameter([&](const std::string& name, const auto& p) { dict.insert(name, p.value); },
                       prefix);
    return dict;
  }

  // Allocates and zeroes every parameter's gradient.
  void zero_grad() {
    for_each_parameter([](const std::string&, auto& p) { p.zero_grad(); });
  }

 protected:
  Module() = default;
};

}  // namespace tessera::nn
