// Building transformer layers and their forward options from a fixture's JSON.
#pragma once

#include "fixture.hpp"
#include "tessera/nn/transformer_decoder.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::test {

inline nn::TransformerLayerOptions layer_options_from(const nlohmann::json& j) {
  return {.d_model = j.at("d_model").get<Index>(),
          .nhead = j.at("nhead").get<Index>(),
          .dim_feedforward = j.at("dim_feedforward").get<Index>(),
          .activation = activation_from(j.at("activation").get<std::string>()),
          .layer_norm_eps = j.at("layer_norm_eps").get<double>(),
          .norm_first = j.at("norm_first").get<bool>(),
          .bias = j.value("bias", true)};
}

// Masks of a fixture, kept alive with their tensors.
template <class T>
struct FixtureMasks {
  Tensor<bool, 2> b2[4];
  Tensor<T, 2> f2[4];
  Tensor<bool, 3> b3[4];
  Tensor<T, 3> f3[4];
  int used = 0;

  std::optional<Mask> get(const Fixture& fx, const std::string& name) {
    if (!fx.has_input(name)) return std::nullopt;
    const int i = used++;
    if (fx.dict.at("input." + name).shape.size() == 3) return fx.mask<T, 3>(name, b3[i], f3[i]);
    return fx.mask<T, 2>(name, b2[i], f2[i]);
  }
};

template <class T>
nn::TransformerDecoderLayerForwardOptions decoder_forward_from(const Fixture& fx,
                                                               FixtureMasks<T>& m) {
  nn::TransformerDecoderLayerForwardOptions fo;
  fo.tgt_mask = m.get(fx, "tgt_mask");
  fo.memory_mask = m.get(fx, "memory_mask");
  fo.tgt_key_padding_mask = m.get(fx, "tgt_key_padding_mask");
  fo.memory_key_padding_mask = m.get(fx, "memory_key_padding_mask");
  return fo;
}

template <class T>
nn::TransformerEncoderLayerForwardOptions encoder_forward_from(const Fixture& fx,
                                                               FixtureMasks<T>& m) {
  nn::TransformerEncoderLayerForwardOptions fo;
  fo.src_mask = m.get(fx, "src_mask");
  fo.src_key_padding_mask = m.get(fx, "src_key_padding_mask");
  return fo;
}

}  // namespace tessera::test
