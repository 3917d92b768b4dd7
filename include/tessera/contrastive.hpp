// tessera/contrastive.hpp: contrastive learning: CLIP, SigLIP, InfoNCE and pair losses, dual
// encoders, zero-shot and linear probes. An area header: it includes the public headers of
// tessera/contrastive/ and nothing else.
#pragma once

#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/contrastive/common.hpp"
#include "tessera/contrastive/dual_encoder.hpp"
#include "tessera/contrastive/info_nce.hpp"
#include "tessera/contrastive/linear_probe.hpp"
#include "tessera/contrastive/pair_loss.hpp"
#include "tessera/contrastive/projection_head.hpp"
#include "tessera/contrastive/siglip_loss.hpp"
#include "tessera/contrastive/zero_shot_classifier.hpp"
