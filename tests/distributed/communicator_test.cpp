// tessera::distributed::Communicator under 1, 2 and 4 ranks: each collective's result, the
// point-to-point ring, and every argument error (raised on every rank before any message).
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "../test_util.hpp"
#include "distributed_test_util.hpp"
#include "tessera/distributed/communicator.hpp"

namespace tessera::distributed {
namespace communicator_test {

using test::world;

template <class T>
class CommunicatorTyped : public ::testing::Test {};
TYPED_TEST_SUITE(CommunicatorTyped, test::Scalars);

TEST(Communicator, RanksAreNumberedInOrder) {
  const auto& comm = world();
  EXPECT_GE(comm.rank(), 0);
  EXPECT_LT(comm.rank(), comm.size());
  const auto ranks = comm.all_gather_counts(comm.rank());
  std::vector<Index> expected(static_cast<std::size_t>(comm.size()));
  std::iota(expected.begin(), expected.end(), Index{0});
  EXPECT_EQ(ranks, expected);
  comm.barrier();
}

TYPED_TEST(CommunicatorTyped, AllReduceSumsEveryRanksValues) {
  using T = TypeParam;
  const auto& comm = world();
  const int p = comm.size(), r = comm.rank();
  std::vector<T> x(1000), y(37);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<T>(r + 1) * static_cast<T>(i % 7);
  for (std::size_t i = 0; i < y.size(); ++i) y[i] = static_cast<T>(r) + static_cast<T>(i);
  comm.all_reduce_sum(std::span<T>(x));
  auto req = comm.iall_reduce_sum(std::span<T>(y));
  req.wait();
  const T ranks_sum = static_cast<T>(p * (p + 1) / 2);
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_EQ(x[i], ranks_sum * static_cast<T>(i % 7));
  for (std::size_t i = 0; i < y.size(); ++i)
    EXPECT_EQ(y[i], static_cast<T>(p * (p - 1) / 2) + static_cast<T>(p) * static_cast<T>(i));
  comm.all_reduce_sum(std::span<T>());  // nothing to do, on every rank
}

TYPED_TEST(CommunicatorTyped, MaxAndReduceScatter) {
  using T = TypeParam;
  const auto& comm = world();
  const int p = comm.size(), r = comm.rank();
  std::vector<T> x{static_cast<T>(r), static_cast<T>(-r), T(7)};
  comm.all_reduce_max(std::span<T>(x));
  EXPECT_EQ(x[0], static_cast<T>(p - 1));
  EXPECT_EQ(x[1], T(0));
  EXPECT_EQ(x[2], T(7));
  // Rank q gets q + 1 sums; every rank sends (r + 1) * (index + 1).
  std::vector<Index> counts;
  for (int q = 0; q < p; ++q) counts.push_back(q + 1);
  const auto total = static_cast<std::size_t>(p * (p + 1) / 2);
  std::vector<T> send(total);
  for (std::size_t i = 0; i < total; ++i) send[i] = static_cast<T>((r + 1) * (i + 1));
  std::vector<T> mine(static_cast<std::size_t>(r + 1));
  comm.reduce_scatter_sum(std::span<const T>(send), std::span<T>(mine), counts);
  const auto first = static_cast<std::size_t>(r * (r + 1) / 2);
  for (std::size_t k = 0; k < mine.size(); ++k)
    EXPECT_EQ(mine[k], static_cast<T>(p * (p + 1) / 2) * static_cast<T>(first + k + 1));
  std::vector<T> too_long(total + 1), wrong(mine.size() + 1);
  TESSERA_EXPECT_THROW_MSG(
      comm.reduce_scatter_sum(std::span<const T>(too_long), std::span<T>(mine), counts), ValueError,
      "tessera::distributed::Communicator::reduce_scatter_sum", "'send' has");
  TESSERA_EXPECT_THROW_MSG(
      comm.reduce_scatter_sum(std::span<const T>(send), std::span<T>(wrong), counts), ValueError,
      "'recv' has", "expected counts[");
}

TEST(Communicator, ADroppedCollectiveRequestCompletesInsteadOfAborting) {
  const auto& comm = world();
  std::vector<double> x(1000, 1.0);
  {
    auto pending = comm.iall_reduce_sum(std::span<double>(x));
  }  // destroyed before wait(): it waits (a collective cannot be cancelled)
  EXPECT_EQ(x[999], comm.size());
}

TYPED_TEST(CommunicatorTyped, BroadcastCopiesTheRootsData) {
  using T = TypeParam;
  const auto& comm = world();
  const int root = comm.size() - 1;
  std::vector<T> x(5, static_cast<T>(comm.rank()));
  comm.broadcast(std::span<T>(x), root);
  for (T v : x) EXPECT_EQ(v, static_cast<T>(root));
}

TYPED_TEST(CommunicatorTyped, AllGatherConcatenatesBlocksOfDifferentSizes) {
  using T = TypeParam;
  const auto& comm = world();
  const int r = comm.rank();
  std::vector<T> mine(static_cast<std::size_t>(r + 1), static_cast<T>(r));
  const auto counts = comm.all_gather_counts(r + 1);
  std::vector<T> all(
      static_cast<std::size_t>(std::accumulate(counts.begin(), counts.end(), Index{0})));
  comm.all_gather(std::span<const T>(mine), std::span<T>(all), counts);
  std::size_t at = 0;
  for (int q = 0; q < comm.size(); ++q)
    for (int k = 0; k <= q; ++k) EXPECT_EQ(all[at++], static_cast<T>(q));
}

TEST(Communicator, MessagesGoRoundTheRing) {
  const auto& comm = world();
  if (comm.size() == 1) {
    // A world of one has no neighbour: point-to-point needs MPI and a second rank.
    SUCCEED();
    return;
  }
  const int p = comm.size(), r = comm.rank();
  std::vector<double> out(3, r), in(3, -1);
  auto recv = comm.irecv(std::span<double>(in), (r + p - 1) % p, 7);
  auto send = comm.isend(std::span<const double>(out), (r + 1) % p, 7);
  send.wait();
  recv.wait();
  for (double v : in) EXPECT_EQ(v, (r + p - 1) % p);
}

TEST(Communicator, ArgumentErrorsNameTheFunctionAndTheArgument) {
  const auto& comm = world();
  const int p = comm.size();
  std::vector<float> x(4);
  TESSERA_EXPECT_THROW_MSG(comm.broadcast(std::span<float>(x), p), ValueError,
                           "tessera::distributed::Communicator::broadcast", "'root'",
                           "expected a rank in [0, ");
  TESSERA_EXPECT_THROW_MSG(comm.broadcast(std::span<float>(x), -1), ValueError, "'root' is -1");
  const std::vector<Index> too_few(static_cast<std::size_t>(p + 1), 1);
  TESSERA_EXPECT_THROW_MSG(comm.all_gather(std::span<const float>(x), std::span<float>(x), too_few),
                           ValueError, "tessera::distributed::Communicator::all_gather", "'counts'",
                           "one per rank");
  std::vector<Index> counts(static_cast<std::size_t>(p), 4);
  std::vector<float> all(static_cast<std::size_t>(4 * p));
  TESSERA_EXPECT_THROW_MSG(
      comm.all_gather(std::span<const float>(x.data(), 3), std::span<float>(all), counts),
      ValueError, "'send' has 3 elements", "expected counts[");
  TESSERA_EXPECT_THROW_MSG(
      comm.all_gather(std::span<const float>(x), std::span<float>(all.data(), 1), counts),
      ValueError, "'recv' has 1 elements", "expected the sum of 'counts'");
  counts[0] = -2;
  TESSERA_EXPECT_THROW_MSG(
      comm.all_gather(std::span<const float>(x), std::span<float>(all), counts), ValueError,
      "'counts' holds -2 for rank 0");
  TESSERA_EXPECT_THROW_MSG((void)comm.isend(std::span<const float>(x), p, 0), ValueError,
                           "tessera::distributed::Communicator::isend", "'dest' is");
  TESSERA_EXPECT_THROW_MSG((void)comm.irecv(std::span<float>(x), -1, 0), ValueError,
                           "tessera::distributed::Communicator::irecv", "'source' is -1");
  TESSERA_EXPECT_THROW_MSG((void)comm.isend(std::span<const float>(x), 0, -3), ValueError,
                           "'tag' is -3", "expected a tag >= 0");
  comm.barrier();
}

TEST(Environment, RefusesASecondInitialisation) {
  int argc = 0;
  char** argv = nullptr;
  if (kWithMpi)
    TESSERA_EXPECT_THROW_MSG(Environment(argc, argv), CommunicationError,
                             "tessera::distributed::Environment", "already initialised");
}

#ifdef TESSERA_WITH_MPI
TEST(Communicator, WrapsAnyMpiCommunicator) {
  Communicator self(MPI_COMM_SELF);
  EXPECT_EQ(self.size(), 1);
  EXPECT_EQ(self.rank(), 0);
  std::vector<double> x{1, 2};
  self.all_reduce_sum(std::span<double>(x));
  EXPECT_EQ(x[1], 2);
  Communicator moved = std::move(self);
  EXPECT_EQ(moved.size(), 1);
  TESSERA_EXPECT_THROW_MSG(self.all_reduce_sum(std::span<double>(x)), CommunicationError,
                           "tessera::distributed::Communicator::all_reduce_sum", "moved from");
  TESSERA_EXPECT_THROW_MSG(self.barrier(), CommunicationError, "moved from");
}
#endif

}  // namespace communicator_test
}  // namespace tessera::distributed
