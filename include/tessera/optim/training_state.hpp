// tessera: saving and resuming training — a module's parameters, an optimizer's state and the
// step in one safetensors file:
//
//   "model.<parameter name>"                 the module's parameters (Module::state_dict)
//   "optim.<parameter name>.<buffer>"        the optimizer's buffers (exp_avg, momentum_buffer...)
//   "optim.<parameter name>.step"            each parameter's step count (I64 scalar)
//   __metadata__: "tessera.step" (the step to resume from), "optim.*" (the optimizer's type,
//                 options and groups, see optimizer.hpp), and the caller's own entries.
//
// Values are stored in the module's scalar type and every hyper-parameter as a decimal that
// reads back exactly, so a resumed run continues bit for bit:
//
//   tessera::optim::save_training_state("ckpt.safetensors", model, opt, step, {{"run", "a"}});
//   ...
//   const std::int64_t step = tessera::optim::load_training_state("ckpt.safetensors", model, opt);
#pragma once

#include <charconv>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <system_error>

#include "tessera/core/error.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/optim/optimizer.hpp"

namespace tessera::optim {

// Writes `module`'s parameters, `optimizer`'s state and `step` to `path` (see above). `metadata`
// entries are stored as given; their keys must not start with "tessera." or "optim." (ValueError).
// I/O failures throw IoError (tessera::io::save_safetensors).
template <class M, class T>
void save_training_state(const std::filesystem::path& path, const M& module,
                         const Optimizer<T>& optimizer, std::int64_t step,
                         const std::map<std::string, std::string>& metadata = {}) {
  constexpr std::string_view fn = "tessera::optim::save_training_state";
  if (step < 0)
    detail::raise<ValueError>(fn, "argument 'step' is ", step, ", expected a value >= 0");
  for (const auto& [k, v] : metadata)
    if (k.starts_with("tessera.") || k.starts_with("optim."))
      detail::raise<ValueError>(fn, "metadata key ", io::detail::quote_name(k),
                                " is reserved, expected a key not starting with 'tessera.' or "
                                "'optim.'");
  io::StateDict sd = module.state_dict("model.");
  io::StateDict opt = optimizer.state_dict("optim.");
  for (const auto& key : opt.keys()) sd.insert(key, *opt.take(key));
  sd.metadata = metadata;
  sd.metadata.insert(opt.metadata.begin(), opt.metadata.end());
  sd.metadata["tessera.step"] = std::to_string(step);
  io::save_safetensors(path, sd);
}

// Restores what save_training_state wrote into `module` (strictly: every parameter present with
// its shape, nothing extra under "model.") and `optimizer` (Optimizer::load_state_dict), and
// returns the saved step; `metadata`, when given, receives the file's metadata. Throws IoError for
// an unreadable file, ValueError for a file that is not a training state or was written for
// another optimizer, module or grouping, ShapeError for a mismatched shape; a failed load leaves
// the module and the optimizer as they were.
template <class M, class T>
std::int64_t load_training_state(const std::filesystem::path& path, M& module,
                                 Optimizer<T>& optimizer,
                                 std::map<std::string, std::string>* metadata = nullptr) {
  constexpr std::string_view fn = "tessera::optim::load_training_state";
  io::StateDict sd = io::load_safetensors(path);
  const auto it = sd.metadata.find("tessera.step");
  if (it == sd.metadata.end())
    detail::raise<ValueError>(fn, "file '", path.string(),
                              "' has no metadata 'tessera.step': not a training state");
  std::int64_t step = -1;
  const std::string& s = it->second;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), step);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || step < 0)
    detail::raise<ValueError>(fn, "file '", path.string(), "': metadata 'tessera.step' is '", s,
                              "', expected an integer >= 0");
  // Check and stage the optimizer first (it changes nothing on failure), then the module (which
  // checks everything before writing), then commit the optimizer.
  const io::StateDict backup = optimizer.state_dict("optim.");
  optimizer.load_state_dict(sd, "optim.");
  try {
    module.load_state_dict(sd, "model.", /*strict=*/true);
  } catch (...) {
    optimizer.load_state_dict(backup, "optim.");  // exact: every value round-trips
    throw;
  }
  if (metadata) *metadata = sd.metadata;
  return step;
}

}  // namespace tessera::optim
