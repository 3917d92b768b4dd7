// A job whose rank 1 fails while the other ranks wait in a collective: `throw` lets an exception
// escape, `kill` sends the rank SIGKILL. Either way the whole job must end promptly, saying which
// rank failed (tests/CMakeLists.txt checks the message and a timeout).
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "tessera/distributed/communicator.hpp"

int main(int argc, char** argv) {
  tessera::distributed::Environment env(argc, argv);
  const auto comm = tessera::distributed::Communicator::world();
  const bool kill = argc > 1 && std::strcmp(argv[1], "kill") == 0;
  comm.barrier();
  if (comm.rank() == 1) {
    if (kill) std::raise(SIGKILL);
    throw std::runtime_error("probe: rank 1 throws");
  }
  std::vector<float> x(16, 1.0f);
  comm.all_reduce_sum(std::span<float>(x));  // never completes: rank 1 is gone
  return 0;
}
