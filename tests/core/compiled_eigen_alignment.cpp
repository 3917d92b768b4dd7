// Compiled (not run) by the tests core.CompiledMode.*EigenAlignment* (tests/CMakeLists.txt): in
// the compiled mode, a translation unit whose Eigen is configured with another heap alignment
// than the library's must not compile (core/tensor.hpp).
#include "tessera/core/tensor.hpp"

int main() {
  tessera::Tensor<float, 2> x(2, 3);
  return static_cast<int>(x.size()) - 6;
}
