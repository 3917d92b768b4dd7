// tessera/text.hpp: text input: CLIP's tokenizer (link tessera::text).
// An area header: it includes the public headers of tessera/text/ and nothing else, but for
// text/sentencepiece_tokenizer.hpp, which needs tessera::sentencepiece besides.
#pragma once

#include "tessera/text/bpe.hpp"
#include "tessera/text/clip_tokenizer.hpp"
#include "tessera/text/fix_text.hpp"
#include "tessera/text/html_unescape.hpp"
#include "tessera/text/text_cleaning.hpp"
#include "tessera/text/unicode.hpp"
