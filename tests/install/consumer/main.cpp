// Uses tessera through its umbrella header and checks one result, so a broken package fails.
#include <cmath>
#include <cstdio>
#include <tessera/tessera.hpp>

int main() {
  tessera::Tensor<float, 2> logits{{1.0f, 2.0f, 3.0f}, {0.0f, 0.0f, 0.0f}};
  const auto p = tessera::softmax(logits);
  const float expected = std::exp(3.0f) / (std::exp(1.0f) + std::exp(2.0f) + std::exp(3.0f));
  if (std::fabs(p(0, 2) - expected) > 1e-6f || std::fabs(p(1, 1) - 1.0f / 3.0f) > 1e-6f) {
    std::printf("consumer: wrong softmax %f %f\n", p(0, 2), p(1, 1));
    return 1;
  }
  std::printf("consumer: tessera %d.%d.%d works (softmax row 0 = %.4f %.4f %.4f)\n",
              TESSERA_VERSION_MAJOR, TESSERA_VERSION_MINOR, TESSERA_VERSION_PATCH, p(0, 0), p(0, 1),
              p(0, 2));
  return 0;
}
