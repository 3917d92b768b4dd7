// tessera: tensors and attention for multimodal models, header-only, on Eigen.
// The umbrella header: including it gives every public part of the library.
#pragma once

#include "tessera/core/config.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/kernels/normalize.hpp"
#include "tessera/kernels/simd.hpp"
#include "tessera/kernels/softmax.hpp"
#include "tessera/kernels/attention.hpp"
#include "tessera/nn/attention.hpp"
#include "tessera/nn/attention_pooling.hpp"
#include "tessera/nn/audio_patch_embedding.hpp"
#include "tessera/nn/embedding.hpp"
#include "tessera/nn/feed_forward.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/modality_embedding.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/multihead_attention.hpp"
#include "tessera/nn/parameter.hpp"
#include "tessera/nn/patch_embedding.hpp"
#include "tessera/nn/positional_encoding.hpp"
#include "tessera/nn/token_embedding.hpp"
#include "tessera/nn/transformer_decoder.hpp"
#include "tessera/nn/transformer_decoder_layer.hpp"
#include "tessera/nn/transformer_encoder.hpp"
#include "tessera/nn/transformer_encoder_layer.hpp"
#include "tessera/io/state_dict.hpp"
// The safetensors reader parses its JSON header with nlohmann-json; without it the rest of
// tessera works and io/safetensors.hpp is simply not included here.
#if __has_include(<nlohmann/json.hpp>)
#include "tessera/io/safetensors.hpp"
#endif
