// tessera/optim.hpp: optimizers, learning-rate schedules and gradient clipping.
// An area header: it includes the public headers of tessera/optim/ and nothing else.
#pragma once

#include "tessera/optim/adam.hpp"
#include "tessera/optim/adamw.hpp"
#include "tessera/optim/clip_grad_norm.hpp"
#include "tessera/optim/lr_schedule.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/optim/param_group.hpp"
#include "tessera/optim/parameter_ref.hpp"
#include "tessera/optim/sgd.hpp"
// Parts that read or write JSON need nlohmann-json; without it they are left out.
#if __has_include(<nlohmann/json.hpp>)
#include "tessera/optim/training_state.hpp"
#endif
