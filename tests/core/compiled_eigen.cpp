// Compiled (not run) by the tests core.CompiledMode.Eigen* (tests/CMakeLists.txt): in the compiled
// mode, a translation unit whose Eigen is configured otherwise than the library's must not compile
// (core/eigen.hpp), whichever tessera header brings Eigen in. By default this file uses a Tensor;
// with TESSERA_TEST_INCLUDED_HEADER defined it is empty, and the header under test is given with
// the compiler's -include.
#ifndef TESSERA_TEST_INCLUDED_HEADER
#include "tessera/core/tensor.hpp"

int main() {
  tessera::Tensor<float, 2> x(2, 3);
  return static_cast<int>(x.size()) - 6;
}
#else
int main() { return 0; }
#endif
