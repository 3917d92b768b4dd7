// tessera: basic configuration shared by every header.
#pragma once

#include <cassert>
#include <cstddef>

#define TESSERA_VERSION_MAJOR 0
#define TESSERA_VERSION_MINOR 1
#define TESSERA_VERSION_PATCH 0

// Debug-only checks. They add to, and never replace, the checks that throw at the public boundary.
#ifdef NDEBUG
#define TESSERA_DEBUG_ASSERT(cond, msg) ((void)0)
#else
#define TESSERA_DEBUG_ASSERT(cond, msg) assert((cond) && (msg))
#endif

// Explicit instantiation of tessera's modules and optimizers for float and double. Each header
// lists its own classes at its end (TESSERA_INSTANTIATE_FLOATING). In the compiled mode
// (TESSERA_COMPILED, which the CMake target tessera::compiled defines) the lists are `extern
// template` declarations: a consumer's translation units use the library's instantiations instead
// of compiling their own. What the instantiation of a class covers are its members that are not
// templates themselves; member templates (a forward taking any TensorLike, say) are compiled by
// the consumer. The library's sources (src/instantiate_*.cpp) redefine TESSERA_INSTANTIATE_AS as
// empty before including their area, and so compile the same lists as definitions, at the x86-64
// baseline: the modules' arithmetic runs in the dispatched kernels. Header-only, the lists are
// empty.
#if defined(TESSERA_COMPILED)
#define TESSERA_INSTANTIATE_AS extern
#define TESSERA_INSTANTIATE(...) TESSERA_INSTANTIATE_AS template __VA_ARGS__;
#else
#define TESSERA_INSTANTIATE(...)
#endif
// `kind name<float>` and `kind name<double>`: TESSERA_INSTANTIATE_FLOATING(class
// tessera::nn::Linear).
#define TESSERA_INSTANTIATE_FLOATING(...) \
  TESSERA_INSTANTIATE(__VA_ARGS__<float>) \
  TESSERA_INSTANTIATE(__VA_ARGS__<double>)

// The entry points that differ between the modes are declared in an inline namespace named after
// the mode, so that a program mixing header-only and compiled translation units holds both
// versions side by side instead of one the linker picks for both (kernels/dispatch.hpp).
#if defined(TESSERA_COMPILED)
#define TESSERA_BEGIN_MODE_NAMESPACE inline namespace compiled_mode {
#if defined(__GNUC__)
#define TESSERA_MODE_TAG [[gnu::abi_tag("tessera_compiled")]]
#endif
#else
#define TESSERA_BEGIN_MODE_NAMESPACE inline namespace header_only_mode {
#endif
#define TESSERA_END_MODE_NAMESPACE }
#ifndef TESSERA_MODE_TAG
#define TESSERA_MODE_TAG
#endif

// The functions that read or write JSON (the safetensors reader and writer, the Hugging Face
// config.json readers) are declared TESSERA_JSON_FUNCTION in their headers, inside the mode's
// namespace. Header-only, each such header then includes its `_impl.hpp` and every includer
// compiles them inline. In the compiled mode the library holds them (src/json_functions.cpp
// includes the `_impl.hpp` files) and a consumer's translation units see the declarations alone:
// neither nlohmann-json's header nor its parsers' instantiations, which are most of what the
// umbrella header costs beyond Eigen. A library built without nlohmann_json
// (TESSERA_COMPILED_WITHOUT_MODELS) holds none of them, and its consumers compile them as
// header-only does.
#if defined(TESSERA_COMPILED) && !defined(TESSERA_COMPILED_WITHOUT_MODELS)
#define TESSERA_JSON_FUNCTION
#define TESSERA_JSON_IN_LIBRARY 1
#else
#define TESSERA_JSON_FUNCTION inline
#endif

namespace tessera {

// Signed index type for sizes and offsets, the same as Eigen::Index.
using Index = std::ptrdiff_t;

// Alignment of every buffer a Tensor owns: one cache line, and one AVX-512 register.
inline constexpr std::size_t kTensorAlignment = 64;

}  // namespace tessera
