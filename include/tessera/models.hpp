// tessera/models.hpp: checkpoint models: CLIP, SigLIP, ViT (needs nlohmann-json).
// An area header: it includes the public headers of tessera/models/ and nothing else.
#pragma once

#if !__has_include(<nlohmann/json.hpp>)
#error "tessera/models.hpp needs nlohmann-json (Debian: nlohmann-json3-dev)"
#endif

#include "tessera/models/architecture_check.hpp"
#include "tessera/models/clip.hpp"
#include "tessera/models/loading.hpp"
#include "tessera/models/map_head.hpp"
#include "tessera/models/naming.hpp"
#include "tessera/models/position_embedding.hpp"
#include "tessera/models/siglip.hpp"
#include "tessera/models/text_transformer.hpp"
#include "tessera/models/vision_transformer.hpp"
#include "tessera/models/vit.hpp"
