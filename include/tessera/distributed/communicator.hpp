// tessera::distributed::Communicator: the few collective and point-to-point operations tessera's
// distributed losses and data-parallel training need, over the MPI C API (MPI-3.1 standard,
// https://www.mpi-forum.org/docs/).
//
//   int main(int argc, char** argv) {
//     tessera::distributed::Environment env(argc, argv);        // MPI_Init_thread ... MPI_Finalize
//     auto comm = tessera::distributed::Communicator::world();   // a duplicate of MPI_COMM_WORLD
//     comm.rank(); comm.size();
//     comm.all_reduce_sum(std::span<float>(grads));             // in place, on every rank
//   }
//   mpirun -np 4 ./program
//
// Built with MPI (the tessera::mpi CMake target, which defines TESSERA_WITH_MPI), every operation
// is the MPI call it names. Built without it, the same code runs as one process: rank 0 of a world
// of size 1, where a gather is a copy and a reduction leaves the data as it is, so a program
// written for several ranks also runs, unchanged, on a machine without MPI.
//
// Errors. MPI reports errors through return codes on tessera's communicators (MPI_ERRORS_RETURN);
// each becomes a tessera::distributed::CommunicationError naming the operation and MPI's own
// message. A rank that fails must not leave the others waiting in a collective forever:
// Environment installs a std::terminate handler, so an exception that escapes main on any rank
// prints "tessera: rank R of P failed: <what>" and ends the whole job (MPI_Abort); a rank killed
// by a signal is reported and the job ended by mpirun itself.
//
// Threads: MPI is initialised at MPI_THREAD_FUNNELED: tessera's kernels use OpenMP threads, and
// only the thread that called Environment's constructor calls MPI.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

#ifdef TESSERA_WITH_MPI
#include <mpi.h>
#endif

namespace tessera::distributed {

// An MPI operation failed (or the job was set up in a way tessera cannot use, such as an MPI
// library without MPI_THREAD_FUNNELED).
class CommunicationError : public Error {
 public:
  using Error::Error;
};

// True when tessera was built against MPI (TESSERA_WITH_MPI); false in the single-process build.
inline constexpr bool kWithMpi =
#ifdef TESSERA_WITH_MPI
    true;
#else
    false;
#endif

namespace impl {

#ifdef TESSERA_WITH_MPI
template <class T>
MPI_Datatype datatype() {
  if constexpr (std::is_same_v<T, float>)
    return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>)
    return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return MPI_INT64_T;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return MPI_INT32_T;
  else if constexpr (std::is_same_v<T, unsigned char>)
    return MPI_UNSIGNED_CHAR;
  else
    static_assert(sizeof(T) == 0, "tessera::distributed: no MPI datatype for this type");
}

// Throws CommunicationError for an MPI return code other than MPI_SUCCESS.
inline void check(int rc, std::string_view fn, std::string_view call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  tessera::detail::raise<CommunicationError>(
      fn, call, " failed: ", len ? std::string(text, len) : "error code " + std::to_string(rc));
}
#endif

// MPI counts are int: a larger count is an error here, never a silently truncated message.
inline int mpi_count(std::string_view fn, std::string_view what, std::size_t n) {
  if (n > static_cast<std::size_t>(INT_MAX))
    tessera::detail::raise<ValueError>(fn, what, " has ", n, " elements, expected at most ",
                                       INT_MAX, " (MPI counts are int)");
  return static_cast<int>(n);
}

// Rank r's rank and world size, for the messages of the terminate handler.
inline int& failure_rank() {
  static int r = 0;
  return r;
}
inline int& failure_size() {
  static int s = 1;
  return s;
}

// Prints "tessera: rank R of P failed: <what>" and ends every rank of the job. `unwinding`: called
// from a destructor while an exception propagates (which is not yet the current exception).
[[noreturn]] inline void terminate_job(bool unwinding = false) {
  const int r = failure_rank(), p = failure_size();
  std::string what = unwinding ? "an exception is propagating out of the scope of its "
                                 "tessera::distributed::Environment"
                               : "std::terminate was called without an active exception";
  if (auto e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
      what = "an exception not derived from std::exception";
    }
  }
  std::fprintf(stderr, "tessera: rank %d of %d failed: %s; ending every rank\n", r, p,
               what.c_str());
  std::fflush(stderr);
#ifdef TESSERA_WITH_MPI
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (initialised && !finalised) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
  std::abort();
}

}  // namespace impl

// Starts MPI for the process's lifetime (MPI_Init_thread, MPI_THREAD_FUNNELED) and ends it
// (MPI_Finalize) when destroyed; a no-op without MPI. Create one, first thing in main. It also
// makes a failure on any rank end the whole job instead of leaving the other ranks waiting in a
// collective: an uncaught exception (std::terminate) prints the rank and the exception's message
// and calls MPI_Abort; so does destroying the Environment during stack unwinding. Throws
// CommunicationError when MPI cannot give MPI_THREAD_FUNNELED or is already initialised by
// someone else (then use Communicator without an Environment).
class Environment {
 public:
  Environment(int& argc, char**& argv) {
#ifdef TESSERA_WITH_MPI
    constexpr std::string_view fn = "tessera::distributed::Environment";
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (initialised)
      tessera::detail::raise<CommunicationError>(
          fn, "MPI is already initialised; expected to be the one that initialises it");
    int provided = 0;
    impl::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), fn,
                "MPI_Init_thread");
    MPI_Comm_rank(MPI_COMM_WORLD, &impl::failure_rank());
    MPI_Comm_size(MPI_COMM_WORLD, &impl::failure_size());
    if (provided < MPI_THREAD_FUNNELED) {
      MPI_Finalize();
      tessera::detail::raise<CommunicationError>(fn, "MPI provides thread level ", provided,
                                                 ", expected MPI_THREAD_FUNNELED (",
                                                 MPI_THREAD_FUNNELED, ") or higher");
    }
#else
    (void)argc;
    (void)argv;
#endif
    previous_ = std::set_terminate([] { impl::terminate_job(); });
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  ~Environment() {
    // Unwinding from an exception: the other ranks may be inside a collective this rank will
    // never enter; end them all instead of hanging in MPI_Finalize.
    if (std::uncaught_exceptions() > 0) impl::terminate_job(/*unwinding=*/true);
    std::set_terminate(previous_);
#ifdef TESSERA_WITH_MPI
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (!finalised) MPI_Finalize();
#endif
  }

 private:
  std::terminate_handler previous_ = nullptr;
};

// A pending non-blocking operation (isend, irecv, iall_reduce_sum). wait() completes it. A
// point-to-point request destroyed before completing is cancelled and freed, so an error path
// never blocks on it (the buffers it named must then not be read); a collective one cannot be
// cancelled, and its destructor waits for it.
class Request {
 public:
  Request() = default;
  Request(Request&& o) noexcept { *this = std::move(o); }
  Request& operator=(Request&& o) noexcept {
    if (this != &o) {
      release();
#ifdef TESSERA_WITH_MPI
      req_ = std::exchange(o.req_, MPI_REQUEST_NULL);
#endif
      collective_ = o.collective_;
      fn_ = o.fn_;
    }
    return *this;
  }
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request() { release(); }

  // Blocks until the operation completes. Throws CommunicationError if it failed.
  void wait() {
#ifdef TESSERA_WITH_MPI
    if (req_ != MPI_REQUEST_NULL) impl::check(MPI_Wait(&req_, MPI_STATUS_IGNORE), fn_, "MPI_Wait");
#endif
  }

  // Whether the operation has completed, without blocking (MPI_Test). Calling it also lets the
  // MPI library move data: many transports progress large messages only inside MPI calls, so
  // a long computation that overlaps a transfer should call it now and then.
  bool test() {
#ifdef TESSERA_WITH_MPI
    if (req_ == MPI_REQUEST_NULL) return true;
    int done = 0;
    impl::check(MPI_Test(&req_, &done, MPI_STATUS_IGNORE), fn_, "MPI_Test");
    return done != 0;
#else
    return true;
#endif
  }

 private:
  friend class Communicator;
  void release() noexcept {
#ifdef TESSERA_WITH_MPI
    if (req_ != MPI_REQUEST_NULL) {
      int finalised = 0;
      MPI_Finalized(&finalised);
      if (!finalised && collective_) {
        // A non-blocking collective cannot be cancelled (MPI-3.1, section 5.12): it completes
        // once every rank has posted it.
        MPI_Wait(&req_, MPI_STATUS_IGNORE);
      } else if (!finalised) {
        MPI_Cancel(&req_);
        MPI_Request_free(&req_);
      }
      req_ = MPI_REQUEST_NULL;
    }
#endif
  }
#ifdef TESSERA_WITH_MPI
  MPI_Request req_ = MPI_REQUEST_NULL;
#endif
  bool collective_ = false;
  std::string_view fn_ = "tessera::distributed::Request::wait";
};

// Waits for every request in order.
inline void wait_all(std::span<Request> requests) {
  for (auto& r : requests) r.wait();
}

// Tests every request once (see Request::test); true when all have completed.
inline bool test_all(std::span<Request> requests) {
  bool all = true;
  for (auto& r : requests) all = r.test() && all;
  return all;
}

// A communicator: a group of ranks that exchange data. Communicator::world() is every process of
// the job. Each Communicator owns a duplicate of the MPI communicator it was made from
// (MPI_Comm_dup), so tessera's messages never match an application's own. Collectives must be
// called by every rank of the communicator, in the same order, with matching sizes. Not
// copyable; movable. Without MPI: rank 0 of size 1.
class Communicator {
 public:
  // Every process of the job (MPI_COMM_WORLD). Throws CommunicationError when MPI is not
  // initialised (create an Environment first).
  static Communicator world() {
#ifdef TESSERA_WITH_MPI
    return Communicator(MPI_COMM_WORLD);
#else
    return Communicator();
#endif
  }

#ifdef TESSERA_WITH_MPI
  // A duplicate of `comm` (which stays the caller's).
  explicit Communicator(MPI_Comm comm) {
    constexpr std::string_view fn = "tessera::distributed::Communicator";
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised)
      tessera::detail::raise<CommunicationError>(
          fn,
          "MPI is not initialised; expected a tessera::distributed::Environment (or "
          "MPI_Init_thread) first");
    impl::check(MPI_Comm_dup(comm, &comm_), fn, "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  // The MPI communicator, for calls of the application's own.
  MPI_Comm native() const noexcept { return comm_; }
#endif

  Communicator(Communicator&& o) noexcept { *this = std::move(o); }
  Communicator& operator=(Communicator&& o) noexcept {
    if (this != &o) {
      free();
#ifdef TESSERA_WITH_MPI
      comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
#endif
      rank_ = o.rank_;
      size_ = o.size_;
    }
    return *this;
  }
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator() { free(); }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  // Waits until every rank has called it.
  void barrier() const {
#ifdef TESSERA_WITH_MPI
    check_usable("tessera::distributed::Communicator::barrier");
    impl::check(MPI_Barrier(comm_), "tessera::distributed::Communicator::barrier", "MPI_Barrier");
#endif
  }

  // data = the element-wise sum of every rank's data, on every rank (MPI_Allreduce, in place).
  // Every rank passes the same number of elements.
  template <class T>
  void all_reduce_sum(std::span<T> data) const {
#ifdef TESSERA_WITH_MPI
    constexpr std::string_view fn = "tessera::distributed::Communicator::all_reduce_sum";
    check_usable(fn);
    if (data.empty()) return;
    impl::check(MPI_Allreduce(MPI_IN_PLACE, data.data(), impl::mpi_count(fn, "data", data.size()),
                              impl::datatype<T>(), MPI_SUM, comm_),
                fn, "MPI_Allreduce");
#else
    (void)data;
#endif
  }

  // data = the element-wise maximum over the ranks, on every rank (MPI_Allreduce, MPI_MAX): exact,
  // so the same on every rank.
  template <class T>
  void all_reduce_max(std::span<T> data) const {
#ifdef TESSERA_WITH_MPI
    constexpr std::string_view fn = "tessera::distributed::Communicator::all_reduce_max";
    check_usable(fn);
    if (data.empty()) return;
    impl::check(MPI_Allreduce(MPI_IN_PLACE, data.data(), impl::mpi_count(fn, "data", data.size()),
                              impl::datatype<T>(), MPI_MAX, comm_),
                fn, "MPI_Allreduce");
#else
    (void)data;
#endif
  }

  // The ranks' `send` buffers summed element-wise, and block r of the sum delivered to rank r
  // (MPI_Reduce_scatter): counts[r] elements each, in rank order; send holds their sum, recv
  // counts[rank()]. Throws ValueError for sizes that do not match.
  template <class T>
  void reduce_scatter_sum(std::span<const T> send, std::span<T> recv,
                          std::span<const Index> counts) const {
    constexpr std::string_view fn = "tessera::distributed::Communicator::reduce_scatter_sum";
    check_usable(fn);
    const auto n = checked_counts(fn, counts);
    std::size_t total = 0;
    for (int c : n) total += static_cast<std::size_t>(c);
    if (send.size() != total)
      tessera::detail::raise<ValueError>(fn, "argument 'send' has ", send.size(),
                                         " elements, expected the sum of 'counts', ", total);
    if (recv.size() != static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]))
      tessera::detail::raise<ValueError>(fn, "argument 'recv' has ", recv.size(),
                                         " elements, expected counts[", rank_,
                                         "] = ", counts[static_cast<std::size_t>(rank_)]);
#ifdef TESSERA_WITH_MPI
    if (total == 0) return;
    impl::check(
        MPI_Reduce_scatter(send.data(), recv.data(), n.data(), impl::datatype<T>(), MPI_SUM, comm_),
        fn, "MPI_Reduce_scatter");
#else
    std::copy(send.begin(), send.end(), recv.begin());
#endif
  }

  // The same, started and left running (MPI_Iallreduce): `data` must stay alive and untouched
  // until the request's wait() returns.
  template <class T>
  Request iall_reduce_sum(std::span<T> data) const {
    Request r;
#ifdef TESSERA_WITH_MPI
    constexpr std::string_view fn = "tessera::distributed::Communicator::iall_reduce_sum";
    check_usable(fn);
    r.fn_ = fn;
    r.collective_ = true;
    if (data.empty()) return r;
    impl::check(MPI_Iallreduce(MPI_IN_PLACE, data.data(), impl::mpi_count(fn, "data", data.size()),
                               impl::datatype<T>(), MPI_SUM, comm_, &r.req_),
                fn, "MPI_Iallreduce");
#else
    (void)data;
#endif
    return r;
  }

  // Copies rank `root`'s data into every other rank's (MPI_Bcast). Throws ValueError for a root
  // outside [0, size).
  template <class T>
  void broadcast(std::span<T> data, int root = 0) const {
    constexpr std::string_view fn = "tessera::distributed::Communicator::broadcast";
    check_usable(fn);
    check_rank(fn, "root", root);
#ifdef TESSERA_WITH_MPI
    if (data.empty()) return;
    impl::check(MPI_Bcast(data.data(), impl::mpi_count(fn, "data", data.size()),
                          impl::datatype<T>(), root, comm_),
                fn, "MPI_Bcast");
#else
    (void)data;
#endif
  }

  // Every rank's value of n, in rank order (MPI_Allgather): how many rows each rank holds.
  std::vector<Index> all_gather_counts(Index n) const {
    std::vector<std::int64_t> all(static_cast<std::size_t>(size_));
    all[static_cast<std::size_t>(rank_)] = n;
#ifdef TESSERA_WITH_MPI
    check_usable("tessera::distributed::Communicator::all_gather_counts");
    impl::check(
        MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, all.data(), 1, MPI_INT64_T, comm_),
        "tessera::distributed::Communicator::all_gather_counts", "MPI_Allgather");
#endif
    return {all.begin(), all.end()};
  }

  // The ranks' `send` blocks concatenated in rank order into `recv`, on every rank
  // (MPI_Allgatherv). counts[r] is rank r's number of elements (all_gather_counts); recv holds
  // their sum. Throws ValueError when this rank's send size is not counts[rank()] or recv's size
  // is not the sum.
  template <class T>
  void all_gather(std::span<const T> send, std::span<T> recv, std::span<const Index> counts) const {
    constexpr std::string_view fn = "tessera::distributed::Communicator::all_gather";
    check_usable(fn);
    const std::vector<int> n = checked_counts(fn, counts);
    std::size_t total = 0;
    std::vector<int> offset(counts.size());
    for (std::size_t r = 0; r < counts.size(); ++r) {
      offset[r] = static_cast<int>(total);
      total += static_cast<std::size_t>(n[r]);
    }
    if (send.size() != static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]))
      tessera::detail::raise<ValueError>(fn, "argument 'send' has ", send.size(),
                                         " elements, expected counts[", rank_,
                                         "] = ", counts[static_cast<std::size_t>(rank_)]);
    if (recv.size() != total)
      tessera::detail::raise<ValueError>(fn, "argument 'recv' has ", recv.size(),
                                         " elements, expected the sum of 'counts', ", total);
#ifdef TESSERA_WITH_MPI
    impl::check(MPI_Allgatherv(send.data(), n[static_cast<std::size_t>(rank_)], impl::datatype<T>(),
                               recv.data(), n.data(), offset.data(), impl::datatype<T>(), comm_),
                fn, "MPI_Allgatherv");
#else
    std::copy(send.begin(), send.end(), recv.begin());
#endif
  }

  // Sends `data` to rank `dest` without waiting (MPI_Isend); `data` must stay alive and
  // untouched until the request's wait() returns. Messages between two ranks with the same tag
  // arrive in the order they were sent. Throws ValueError for a rank outside [0, size) or a
  // negative tag; without MPI only the single rank's self-messages exist, and they are not
  // supported (a world of one has no neighbour).
  template <class T>
  Request isend(std::span<const T> data, int dest, int tag) const {
    constexpr std::string_view fn = "tessera::distributed::Communicator::isend";
    check_usable(fn);
    check_rank(fn, "dest", dest);
    check_tag(fn, tag);
    Request r;
#ifdef TESSERA_WITH_MPI
    r.fn_ = fn;
    impl::check(MPI_Isend(data.data(), impl::mpi_count(fn, "data", data.size()),
                          impl::datatype<T>(), dest, tag, comm_, &r.req_),
                fn, "MPI_Isend");
#else
    (void)data;
    no_self_messages(fn);
#endif
    return r;
  }

  // Receives into `data` from rank `source` without waiting (MPI_Irecv); the message must have
  // exactly data.size() elements.
  template <class T>
  Request irecv(std::span<T> data, int source, int tag) const {
    constexpr std::string_view fn = "tessera::distributed::Communicator::irecv";
    check_usable(fn);
    check_rank(fn, "source", source);
    check_tag(fn, tag);
    Request r;
#ifdef TESSERA_WITH_MPI
    r.fn_ = fn;
    impl::check(MPI_Irecv(data.data(), impl::mpi_count(fn, "data", data.size()),
                          impl::datatype<T>(), source, tag, comm_, &r.req_),
                fn, "MPI_Irecv");
#else
    (void)data;
    no_self_messages(fn);
#endif
    return r;
  }

  // Ends every rank of the job now (MPI_Abort), after printing "tessera: rank R of P: message".
  [[noreturn]] void abort(std::string_view message, int code = 1) const {
    std::fprintf(stderr, "tessera: rank %d of %d: %.*s; ending every rank\n", rank_, size_,
                 static_cast<int>(message.size()), message.data());
    std::fflush(stderr);
#ifdef TESSERA_WITH_MPI
    MPI_Abort(comm_ != MPI_COMM_NULL ? comm_ : MPI_COMM_WORLD, code);
#endif
    std::exit(code);
  }

 private:
  Communicator() = default;  // the single-process world

  void check_rank(std::string_view fn, std::string_view arg, int r) const {
    if (r < 0 || r >= size_)
      tessera::detail::raise<ValueError>(fn, "argument '", arg, "' is ", r,
                                         ", expected a rank in [0, ", size_, ")");
  }
  // A moved-from Communicator has no MPI communicator left: using it is an error, not a fatal
  // MPI call on MPI_COMM_NULL.
  void check_usable(std::string_view fn) const {
#ifdef TESSERA_WITH_MPI
    if (comm_ == MPI_COMM_NULL)
      tessera::detail::raise<CommunicationError>(
          fn, "this Communicator was moved from; expected one that still owns its communicator");
#else
    (void)fn;
#endif
  }

  // Per-rank counts as MPI's ints, after checking there is one per rank, each >= 0, and that
  // their sum fits an int.
  std::vector<int> checked_counts(std::string_view fn, std::span<const Index> counts) const {
    if (counts.size() != static_cast<std::size_t>(size_))
      tessera::detail::raise<ValueError>(fn, "argument 'counts' has ", counts.size(),
                                         " entries, expected one per rank (", size_, ")");
    std::vector<int> n(counts.size());
    std::size_t total = 0;
    for (std::size_t r = 0; r < counts.size(); ++r) {
      if (counts[r] < 0)
        tessera::detail::raise<ValueError>(fn, "argument 'counts' holds ", counts[r], " for rank ",
                                           r, ", expected a count >= 0");
      n[r] = impl::mpi_count(fn, "a rank's block", static_cast<std::size_t>(counts[r]));
      total += static_cast<std::size_t>(counts[r]);
    }
    impl::mpi_count(fn, "the whole buffer", total);
    return n;
  }

  static void check_tag(std::string_view fn, int tag) {
    if (tag < 0)
      tessera::detail::raise<ValueError>(fn, "argument 'tag' is ", tag, ", expected a tag >= 0");
  }
#ifndef TESSERA_WITH_MPI
  [[noreturn]] static void no_self_messages(std::string_view fn) {
    tessera::detail::raise<CommunicationError>(
        fn, "point-to-point messages need MPI; this build is single-process (no TESSERA_WITH_MPI)");
  }
#endif

  void free() noexcept {
#ifdef TESSERA_WITH_MPI
    if (comm_ != MPI_COMM_NULL) {
      int finalised = 0;
      MPI_Finalized(&finalised);
      if (!finalised) MPI_Comm_free(&comm_);
      comm_ = MPI_COMM_NULL;
    }
#endif
  }

#ifdef TESSERA_WITH_MPI
  MPI_Comm comm_ = MPI_COMM_NULL;
#endif
  int rank_ = 0, size_ = 1;
};

}  // namespace tessera::distributed
