// tessera/fusion.hpp: multimodal fusion: early, late, bottleneck and cross-modal attention.
// An area header: it includes the public headers of tessera/fusion/ and nothing else.
#pragma once

#include "tessera/fusion/bottleneck_fusion.hpp"
#include "tessera/fusion/cross_modal_attention.hpp"
#include "tessera/fusion/early_fusion.hpp"
#include "tessera/fusion/late_fusion.hpp"
#include "tessera/fusion/token_sequences.hpp"
