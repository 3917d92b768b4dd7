// tessera/distributed.hpp: data-parallel training over MPI (one process without tessera::mpi; needs
// nlohmann-json). An area header: it includes the public headers of tessera/distributed/ and
// nothing else.
#pragma once

#if !__has_include(<nlohmann/json.hpp>)
#error "tessera/distributed.hpp needs nlohmann-json (Debian: nlohmann-json3-dev)"
#endif

#include "tessera/distributed/clip_loss.hpp"
#include "tessera/distributed/communicator.hpp"
#include "tessera/distributed/data_parallel.hpp"
#include "tessera/distributed/info_nce.hpp"
#include "tessera/distributed/loss_common.hpp"
#include "tessera/distributed/siglip_loss.hpp"
#include "tessera/distributed/training.hpp"
