// tessera::distributed::clip_train_loss and siglip_train_loss: one data-parallel training step's
// forward and backward of a CLIP or SigLIP model (models/), each rank on its own shard of the
// batch, with the contrastive loss over every rank's examples (distributed::clip_loss,
// distributed::siglip_loss).
//
// They leave in the parameters' gradients what PyTorch's DDP with open_clip's
// `gather_with_grad=True, local_loss=True` leaves before its all-reduce: the towers'
// gradients of the rank's examples, scaled by the world size P (open_clip's all_gather
// backward sums every rank's contribution to the local embeddings; ours are computed whole and
// multiplied by P), and the scale's (and bias's) gradient over the global batch. After
// DataParallel::average_gradients(), every parameter holds the gradient of the single-process
// loss over the concatenated batch, so P ranks with batch B each take the same step as one
// process with batch P B. Returns the global loss (the same on every rank).
#pragma once

#include "tessera/distributed/clip_loss.hpp"
#include "tessera/distributed/siglip_loss.hpp"
#include "tessera/models/clip.hpp"
#include "tessera/models/siglip.hpp"

namespace tessera::distributed {

// images [B_r, C, H, W] and ids [B_r, L]: this rank's pairs. A collective. Adds into the
// gradients (zero them first); throws what CLIP::train_loss and distributed::clip_loss throw.
template <class T, TensorLike X, TensorLike I>
T clip_train_loss(const Communicator& comm, models::CLIP<T>& model, const X& images, const I& ids,
                  const contrastive::ClipLossOptions& opts = {}) {
  const T p = static_cast<T>(comm.size());
  return model.train_loss_with(images, ids, [&](const Tensor<T, 2>& a, const Tensor<T, 2>& b, T t) {
    auto r = clip_loss(comm, a, b, t, opts);
    r.grad_a.as_array() *= p;
    r.grad_b.as_array() *= p;
    return r;
  });
}

// The same for SigLIP's sigmoid loss (the text blocks travel around the ring of ranks).
template <class T, TensorLike X, TensorLike I>
T siglip_train_loss(const Communicator& comm, models::SigLIP<T>& model, const X& images,
                    const I& ids, const contrastive::SigLipLossOptions& opts = {}) {
  const T p = static_cast<T>(comm.size());
  return model.train_loss_with(images, ids,
                               [&](const Tensor<T, 2>& a, const Tensor<T, 2>& b, T t, T bias) {
                                 auto r = siglip_loss(comm, a, b, t, bias, opts);
                                 r.grad_a.as_array() *= p;
                                 r.grad_b.as_array() *= p;
                                 return r;
                               });
}

}  // namespace tessera::distributed
