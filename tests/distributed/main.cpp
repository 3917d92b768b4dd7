// The distributed tests' main: starts MPI, then runs every test on every rank. Rank 0 prints
// GoogleTest's usual report; the other ranks print only their failures, prefixed with the rank.
#include <gtest/gtest.h>

#include <cstdio>

#include "distributed_test_util.hpp"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  tessera::distributed::Environment env(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  const auto& comm = tessera::test::world();
  if (comm.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(comm.rank()));
  }
  if (comm.rank() == 0)
    std::printf("tessera distributed tests: %d rank(s)%s\n", comm.size(),
                tessera::distributed::kWithMpi ? "" : " (built without MPI)");
  const int failed = RUN_ALL_TESTS();
  // Every rank's verdict: the job fails if any rank's test failed.
  std::vector<double> verdict{static_cast<double>(failed != 0)};
  comm.all_reduce_sum(std::span<double>(verdict));
  return verdict[0] > 0 ? 1 : 0;
}
