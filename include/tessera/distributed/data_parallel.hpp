// tessera::distributed::DataParallel: data-parallel training over MPI, as PyTorch's
// DistributedDataParallel (Li et al. 2020, PyTorch Distributed: Experiences on Accelerating Data
// Parallel Training): every rank holds the same model, trains on its own shard of each batch, and
// the parameters' gradients are averaged over the ranks before the optimizer steps, so every
// rank's optimizer (any of optim/, unchanged) takes the same step.
//
//   tessera::distributed::Environment env(argc, argv);
//   auto comm = tessera::distributed::Communicator::world();
//   tessera::models::CLIP<float> model(options);
//   tessera::distributed::DataParallel<float> ddp(comm, model);  // rank 0's weights everywhere
//   tessera::optim::AdamW<float> opt(tessera::optim::parameters(model), {...});
//   for (...) {                                                   // each rank: its shard
//     model.zero_grad();
//     float loss = tessera::distributed::clip_train_loss(comm, model, images, ids);
//     ddp.average_gradients();
//     opt.step();
//   }
//
// Gradients are reduced in buckets of about bucket_cap_mb (DDP's default, 25 MB), the last
// parameters first (they are the first whose gradients the backward finishes, as in DDP); each
// bucket's MPI_Iallreduce is posted as soon as it is packed, so packing and reducing overlap.
// tessera's backward has no per-parameter hooks, so the reduction starts when the backward ends
// rather than during it. The model and the communicator must not move, nor end, while a
// DataParallel refers to them. Construction (and broadcast_parameters) bumps every parameter's
// version: call prepack() again afterwards.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/distributed/communicator.hpp"
#include "tessera/optim/parameter_ref.hpp"

namespace tessera::distributed {

struct DataParallelOptions {
  double bucket_cap_mb = 25.0;  // gradient bytes per all-reduce (> 0), PyTorch DDP's default
  int root = 0;                 // the rank whose parameters every rank starts from
};

template <class T>
class DataParallel {
 public:
  // Collects `module`'s parameters, checks that every rank's module has the same parameters
  // (names, shapes, order) and copies rank `root`'s values to every rank (as DDP's constructor).
  // A collective. Throws, on every rank alike, ValueError for options out of range or a module
  // that differs between ranks (naming the first differing rank and parameter count or name);
  // CommunicationError when MPI fails.
  template <class Module>
  DataParallel(const Communicator& comm, Module& module, const DataParallelOptions& options = {})
      : comm_(&comm), params_(optim::parameters(module)), options_(options) {
    constexpr std::string_view fn = "tessera::distributed::DataParallel";
    check_same_options(fn);
    if (!(options.bucket_cap_mb > 0) || !(options.bucket_cap_mb < 1e9))
      tessera::detail::raise<ValueError>(fn, "option 'bucket_cap_mb' is ", options.bucket_cap_mb,
                                         ", expected a value in (0, 1e9)");
    if (options.root < 0 || options.root >= comm.size())
      tessera::detail::raise<ValueError>(fn, "option 'root' is ", options.root,
                                         ", expected a rank in [0, ", comm.size(), ")");
    check_same_module(fn);
    make_buckets();
    broadcast_parameters();
  }

  // The communicator is held by reference: it must outlive the DataParallel and stay in place.
  template <class Module>
  DataParallel(const Communicator&& comm, Module& module,
               const DataParallelOptions& options = {}) = delete;

  // Copies rank root's parameter values to every rank again (after loading a checkpoint on the
  // root alone, say) and bumps their versions. A collective.
  void broadcast_parameters() {
    for (const auto& p : params_) {
      comm_->broadcast(p.value(), options_.root);
      p.bump_version();
    }
  }

  // Every parameter's gradient becomes the mean over the ranks of its gradients (a parameter
  // without a gradient on a rank counts as zeros there, and gets one). A collective: call it on
  // every rank after the backward, before the optimizer's step.
  void average_gradients() {
    const T inv = T(1) / static_cast<T>(comm_->size());
    std::vector<Request> pending;
    pending.reserve(buckets_.size());
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      auto& buf = buffers_[b];
      Index at = 0;
      for (std::size_t i = buckets_[b].first; i < buckets_[b].second; ++i) {
        const auto& p = params_[i];
        if (!p.has_grad()) p.zero_grad();
        const auto g = p.grad();
        std::copy(g.begin(), g.end(), buf.begin() + at);
        at += static_cast<Index>(g.size());
      }
      pending.push_back(comm_->iall_reduce_sum(std::span<T>(buf)));
    }
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      pending[b].wait();
      const auto& buf = buffers_[b];
      Index at = 0;
      for (std::size_t i = buckets_[b].first; i < buckets_[b].second; ++i) {
        const auto g = params_[i].grad();
        for (std::size_t j = 0; j < g.size(); ++j)
          g[j] = buf[static_cast<std::size_t>(at) + j] * inv;
        at += static_cast<Index>(g.size());
      }
    }
  }

  const Communicator& communicator() const noexcept { return *comm_; }
  // The parameters, in the order the gradients are reduced (the module's order, reversed).
  std::span<const optim::ParameterRef<T>> parameters() const noexcept { return params_; }
  // How many all-reduces one average_gradients() posts.
  std::size_t bucket_count() const noexcept { return buckets_.size(); }

 private:
  // The options must agree between ranks (different buckets would mismatch the all-reduces).
  void check_same_options(std::string_view fn) const {
    const double mine[2] = {options_.bucket_cap_mb, static_cast<double>(options_.root)};
    const auto p = static_cast<std::size_t>(comm_->size());
    std::vector<double> all(2 * p);
    const std::vector<Index> counts(p, 2);
    comm_->all_gather(std::span<const double>(mine), std::span<double>(all), counts);
    for (std::size_t r = 1; r < p; ++r)
      for (std::size_t k = 0; k < 2; ++k)
        if (!(all[2 * r + k] == all[k]) && !(all[2 * r + k] != all[2 * r + k] && all[k] != all[k]))
          tessera::detail::raise<ValueError>(fn, "option '", k == 0 ? "bucket_cap_mb" : "root",
                                             "' is ", all[2 * r + k], " on rank ", r, " and ",
                                             all[k],
                                             " on rank 0, expected the same value on "
                                             "every rank");
  }

  // Each rank's parameter count, element count and a hash of the names and shapes, compared.
  void check_same_module(std::string_view fn) const {
    std::uint64_t hash = 1469598103934665603ull;  // FNV-1a (Fowler, Noll, Vo)
    const auto mix = [&](std::uint64_t v) {
      for (int k = 0; k < 8; ++k) hash = (hash ^ ((v >> (8 * k)) & 0xff)) * 1099511628211ull;
    };
    std::int64_t elements = 0;
    for (const auto& p : params_) {
      for (char c : p.name()) mix(static_cast<unsigned char>(c));
      for (Index d : p.shape()) mix(static_cast<std::uint64_t>(d));
      elements += p.size();
    }
    const auto counts = comm_->all_gather_counts(static_cast<Index>(params_.size()));
    const auto sizes = comm_->all_gather_counts(elements);
    const auto hashes = comm_->all_gather_counts(static_cast<Index>(hash));
    for (std::size_t r = 0; r < counts.size(); ++r) {
      if (counts[r] != counts[0] || sizes[r] != sizes[0])
        tessera::detail::raise<ValueError>(fn, "rank ", r, "'s module has ", counts[r],
                                           " parameters of ", sizes[r], " values, rank 0's ",
                                           counts[0], " of ", sizes[0],
                                           "; expected the same model on every rank");
      if (hashes[r] != hashes[0])
        tessera::detail::raise<ValueError>(
            fn, "rank ", r, "'s module has parameters named or shaped differently from rank 0's (",
            counts[r], " parameters each); expected the same model on every rank");
    }
  }

  void make_buckets() {
    std::reverse(params_.begin(), params_.end());
    const double cap = options_.bucket_cap_mb * 1024 * 1024 / sizeof(T);
    std::size_t begin = 0;
    Index size = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Index n = params_[i].size();
      if (i > begin && static_cast<double>(size + n) > cap) {
        close_bucket(begin, i, size);
        begin = i;
        size = 0;
      }
      size += n;
    }
    if (begin < params_.size()) close_bucket(begin, params_.size(), size);
  }
  void close_bucket(std::size_t begin, std::size_t end, Index size) {
    buckets_.emplace_back(begin, end);
    buffers_.emplace_back(static_cast<std::size_t>(size));
  }

  const Communicator* comm_;
  std::vector<optim::ParameterRef<T>> params_;
  DataParallelOptions options_;
  std::vector<std::pair<std::size_t, std::size_t>> buckets_;  // [begin, end) into params_
  std::vector<std::vector<T>> buffers_;
};

}  // namespace tessera::distributed
