// tessera: what the fusion modules share: the per-modality inputs (token sequences and their
// key-padding masks), their checks, and the concatenation of sequences and masks along the
// tokens.
//
//   fusion::TokenSequences<T>   one [batch, L_m, embed_dim] view per modality; a braced list of
//                               tensors converts: fusion.forward({video, audio})
//   fusion::KeyPaddingMasks     empty (no padding anywhere) or one std::optional<Mask> per
//                               modality, each [batch, L_m] (PyTorch's bool padding mask, true =
//                               padding, is Mask::blocked(pad))
//   fusion::encoder_layer_flops the floating-point operations of one encoder layer on L tokens,
//                               the unit the modules' forward_flops count in
//   fusion::TokenSequenceGrads  what the modules' backward returns: dL/dinputs, one
//                               [batch, L_m, embed_dim] tensor per modality
#pragma once

#include <algorithm>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::fusion {

template <class T>
using TokenSequences = std::vector<TensorMap<const T, 3>>;
using KeyPaddingMasks = std::vector<std::optional<Mask>>;

// The gradients a fusion module's backward returns: inputs[m] = dL/dinputs[m], [batch, L_m, E].
template <class T>
struct TokenSequenceGrads {
  std::vector<Tensor<T, 3>> inputs;
};

// Floating-point operations (a multiply-add counts 2) of one nn::TransformerEncoderLayer with
// d_model d and dim_feedforward f on one sequence of L tokens, counting the products only:
//   q, k, v projections 2 L d (3d);  scores Q K^T and weights V: 2 (2 L L d);
//   output projection 2 L d d;       feed-forward 2 (2 L d f).
// Softmax, norms, biases and activations are O(L d + L L) and left out. L is a double: the
// modules' sums of lengths may not fit an Index.
inline double encoder_layer_flops(double l, const nn::TransformerLayerOptions& layer) {
  const double d = static_cast<double>(layer.d_model),
               f = static_cast<double>(layer.dim_feedforward);
  return 2 * l * d * 3 * d + 4 * l * l * d + 2 * l * d * d + 4 * l * d * f;
}

}  // namespace tessera::fusion

namespace tessera::detail {

// Constructor checks every fusion module shares: num_modalities > 0 and a positive d_model.
inline void check_fusion_options(std::string_view fn, Index num_modalities,
                                 const nn::TransformerEncoderOptions& encoder) {
  if (num_modalities <= 0)
    raise<ValueError>(fn, "num_modalities is ", num_modalities, ", expected a value > 0");
  if (encoder.layer.d_model <= 0)
    raise<ValueError>(fn, "encoder.layer.d_model is ", encoder.layer.d_model,
                      ", expected a value > 0");
  // The layer options, reported under the fusion module's name rather than the layer's.
  nn::check_transformer_layer_options(fn, encoder.layer);
}

// Checks one token sequence [batch, L, embed_dim] and its optional key-padding mask [batch, L].
// `arg` names the sequence ("inputs[1]", "a"), `mask_arg` its mask.
template <class T>
void check_token_sequence(std::string_view fn, std::string_view arg, TensorMap<const T, 3> x,
                          Index batch, Index embed_dim, const std::optional<Mask>& mask,
                          std::string_view mask_arg) {
  if (x.dim(0) != batch || x.dim(2) != embed_dim)
    raise<ShapeError>(fn, "argument '", arg, "' has shape ", shape_string(x.shape()),
                      ", expected [", batch, ", L, ", embed_dim, "] ([batch, L, embed_dim], batch ",
                      batch, ", embed_dim ", embed_dim, ")");
  if (mask) {
    const Index expected[] = {batch, x.dim(1)};
    const auto s = mask->shape();
    if (!std::equal(s.begin(), s.end(), std::begin(expected), std::end(expected)))
      raise<ShapeError>(fn, "argument '", mask_arg, "' has shape ", shape_string(s), ", expected ",
                        shape_string(expected), " ([batch, L] of '", arg, "' with shape ",
                        shape_string(x.shape()), ")");
  }
}

// Checks a fusion module's public vector of encoders before a forward reads it: `count` encoders
// (ValueError otherwise), each built for d_model and num_layers of `encoder` (ValueError), every
// parameter of the shape its options give (ShapeError, named as `prefix` + "encoders.<m>.*").
template <class T>
void check_fusion_encoders(std::string_view fn, std::string_view prefix,
                           const std::vector<nn::TransformerEncoder<T>>& encoders, Index count,
                           const nn::TransformerEncoderOptions& encoder) {
  if (static_cast<Index>(encoders.size()) != count)
    raise<ValueError>(fn, "member '", prefix, "encoders' holds ", encoders.size(),
                      " encoders, expected ", count);
  for (std::size_t m = 0; m < encoders.size(); ++m) {
    const auto& o = encoders[m].options();
    if (o.layer.d_model != encoder.layer.d_model || o.num_layers != encoder.num_layers ||
        o.final_norm != encoder.final_norm)
      raise<ValueError>(fn, "member '", prefix, "encoders[", m, "]' has d_model ", o.layer.d_model,
                        ", num_layers ", o.num_layers, " and final_norm ", o.final_norm,
                        ", expected ", encoder.layer.d_model, ", ", encoder.num_layers, " and ",
                        encoder.final_norm, " (options.encoder)");
    encoders[m].check_parameters(fn, ParameterPrefix(prefix, "encoders.", m));
  }
}

// Checks the sequence lengths given to a fusion module's forward_flops: one per modality, >= 0.
inline void check_flops_lengths(std::string_view fn, const std::vector<Index>& lengths,
                                Index num_modalities) {
  if (static_cast<Index>(lengths.size()) != num_modalities)
    raise<ValueError>(fn, "argument 'lengths' holds ", lengths.size(), " lengths, expected ",
                      num_modalities, " (num_modalities)");
  for (std::size_t m = 0; m < lengths.size(); ++m)
    if (lengths[m] < 0)
      raise<ValueError>(fn, "argument 'lengths[", m, "]' is ", lengths[m],
                        ", expected a value >= 0");
}

// Checks the inputs of a fusion module: `num_modalities` sequences [batch, L_m, embed_dim] with
// one batch, and no masks or one optional mask [batch, L_m] per sequence. `arg` names the
// sequences in messages.
template <class T>
void check_modality_inputs(std::string_view fn, const std::vector<TensorMap<const T, 3>>& inputs,
                           Index num_modalities, Index embed_dim,
                           const std::vector<std::optional<Mask>>& masks,
                           std::string_view arg = "inputs") {
  const auto M = static_cast<Index>(inputs.size());
  if (M != num_modalities)
    raise<ValueError>(fn, "argument '", arg, "' holds ", M, " sequences, expected ", num_modalities,
                      " (num_modalities)");
  if (!masks.empty() && static_cast<Index>(masks.size()) != M)
    raise<ValueError>(fn, "argument 'key_padding_masks' holds ", masks.size(),
                      " masks, expected none or ", M, " (one per modality)");
  const Index batch = M > 0 ? inputs[0].dim(0) : 0;
  for (Index m = 0; m < M; ++m) {
    const std::string i = "[" + std::to_string(m) + "]";
    check_token_sequence<T>(fn, std::string(arg) + i, inputs[m], batch, embed_dim,
                            masks.empty() ? std::nullopt : masks[m], "key_padding_masks" + i);
  }
}

// The key-padding masks of sequences of `lengths` (each mask [batch, L_m] or none), concatenated
// as one additive mask [batch, sum L_m + extra]: 0 where a token takes part, -inf where it is
// masked out (an additive mask's own values are kept), and `extra` trailing zero columns for
// tokens no mask covers. nullopt when there is no mask at all.
template <class T>
std::optional<Tensor<T, 2>> concat_key_padding(std::string_view fn,
                                               std::span<const std::optional<Mask>> masks,
                                               std::span<const Index> lengths, Index batch,
                                               Index extra = 0) {
  if (std::none_of(masks.begin(), masks.end(), [](const auto& m) { return m.has_value(); }))
    return std::nullopt;
  Index total = extra;
  for (Index l : lengths) total += l;
  // pad: [batch, total], zero where no mask covers a token
  Tensor<T, 2> pad(Shape<2>{batch, total});
  Index offset = 0;
  for (std::size_t m = 0; m < lengths.size(); ++m) {
    const Index L = lengths[m];
    if (m < masks.size() && masks[m]) {
      const Index target[] = {batch, L};
      const MaskRows rows(*masks[m], target, fn, "key_padding_masks");
      std::vector<T> zeros(static_cast<std::size_t>(L), T(0));
      for (Index b = 0; b < batch; ++b) rows.apply(b, zeros.data(), &pad(b, offset), L);
    }
    offset += L;
  }
  return pad;
}

// Whether every token of row b of an additive key-padding mask [batch, L] is masked out (-inf);
// true for L = 0.
template <class T>
bool all_masked(const Tensor<T, 2>& pad, Index b) {
  const T* row = pad.data() + b * pad.dim(1);
  return std::all_of(row, row + pad.dim(1),
                     [](T v) { return v == -std::numeric_limits<T>::infinity(); });
}

// The sequences [batch, L_m, E] concatenated along the tokens: [batch, sum L_m, E].
template <class T>
Tensor<T, 3> concat_tokens(std::span<const TensorMap<const T, 3>> parts) {
  const Index B = parts.empty() ? 0 : parts[0].dim(0), E = parts.empty() ? 0 : parts[0].dim(2);
  Index total = 0;
  for (const auto& p : parts) total += p.dim(1);
  // out: [B, sum L_m, E]
  Tensor<T, 3> out(Shape<3>{B, total, E}, uninitialized);
  for (Index b = 0; b < B; ++b) {
    T* dst = out.data() + b * total * E;
    for (const auto& p : parts) dst = std::copy_n(p.data() + b * p.dim(1) * E, p.dim(1) * E, dst);
  }
  return out;
}

// Tokens [begin, begin + length) of x [batch, L, E]: [batch, length, E].
template <class T>
Tensor<T, 3> slice_tokens(TensorMap<const T, 3> x, Index begin, Index length) {
  const Index B = x.dim(0), L = x.dim(1), E = x.dim(2);
  Tensor<T, 3> out(Shape<3>{B, length, E}, uninitialized);
  for (Index b = 0; b < B; ++b)
    std::copy_n(x.data() + (b * L + begin) * E, length * E, out.data() + b * length * E);
  return out;
}

// The backward of concat_tokens: x [batch, sum L_m, E] split along the tokens into
// [batch, L_m, E] for each of `lengths`.
template <class T>
std::vector<Tensor<T, 3>> split_tokens(TensorMap<const T, 3> x, std::span<const Index> lengths) {
  std::vector<Tensor<T, 3>> parts;
  Index begin = 0;
  for (Index L : lengths) {
    parts.push_back(slice_tokens<T>(x, begin, L));
    begin += L;
  }
  return parts;
}

// Checks the per-sequence gradients a fusion module's backward takes: `expected.size()` tensors
// (ValueError otherwise), tensor m of shape expected[m] (ShapeError naming `arg`[m]).
template <class T>
void check_grad_sequences(std::string_view fn, std::string_view arg,
                          const std::vector<TensorMap<const T, 3>>& grads,
                          const std::vector<Shape<3>>& expected) {
  if (grads.size() != expected.size())
    raise<ValueError>(fn, "argument '", arg, "' holds ", grads.size(), " tensors, expected ",
                      expected.size(), " (one per modality)");
  for (std::size_t m = 0; m < grads.size(); ++m)
    check_shape_equal(fn, std::string(arg) + "[" + std::to_string(m) + "]", grads[m].shape(),
                      expected[m]);
}

}  // namespace tessera::detail
