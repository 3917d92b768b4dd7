// tessera/image.hpp: image input: decoding, resizing and the reference transforms (link
// tessera::image). An area header: it includes the public headers of tessera/image/ and nothing
// else.
#pragma once

#include "tessera/image/colormap.hpp"
#include "tessera/image/decode.hpp"
#include "tessera/image/heatmap.hpp"
#include "tessera/image/resize.hpp"
#include "tessera/image/transforms.hpp"
#include "tessera/image/write.hpp"
