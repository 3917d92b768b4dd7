// tessera/nn.hpp: modules: linear, norms, embeddings, attention, transformer layers and stacks, and
// their training. An area header: it includes the public headers of tessera/nn/ and nothing else.
#pragma once

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
#include "tessera/nn/training.hpp"
#include "tessera/nn/transformer_decoder.hpp"
#include "tessera/nn/transformer_decoder_layer.hpp"
#include "tessera/nn/transformer_encoder.hpp"
#include "tessera/nn/transformer_encoder_layer.hpp"
