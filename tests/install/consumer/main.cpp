// Uses tessera through its umbrella header and checks one result, so a broken package fails.
#include <cmath>
#include <cstdio>
#include <string>
#include <tessera/tessera.hpp>

// In the compiled mode the readers of JSON are the library's (TESSERA_JSON_FUNCTION,
// core/config.hpp): the umbrella header must not bring in nlohmann-json's header.
#if defined(TESSERA_JSON_IN_LIBRARY) && defined(INCLUDE_NLOHMANN_JSON_HPP_)
#error "the compiled mode's umbrella header included nlohmann/json.hpp"
#endif

int main() {
  tessera::Tensor<float, 2> logits{{1.0f, 2.0f, 3.0f}, {0.0f, 0.0f, 0.0f}};
  const auto p = tessera::softmax(logits);
  const float expected = std::exp(3.0f) / (std::exp(1.0f) + std::exp(2.0f) + std::exp(3.0f));
  if (std::fabs(p(0, 2) - expected) > 1e-6f || std::fabs(p(1, 1) - 1.0f / 3.0f) > 1e-6f) {
    std::printf("consumer: wrong softmax %f %f\n", p(0, 2), p(1, 1));
    return 1;
  }
  // Modules and safetensors through the installed package: save a module's weights, load them
  // into another module, and get the same output.
  tessera::nn::MultiheadAttention<float> a({.embed_dim = 8, .num_heads = 2, .seed = 1});
  tessera::nn::MultiheadAttention<float> b({.embed_dim = 8, .num_heads = 2, .seed = 2});
  const std::string path = "consumer_weights.safetensors";
  tessera::io::save_safetensors(path, a.state_dict());
  b.load_state_dict(tessera::io::load_safetensors(path));
  tessera::Tensor<float, 3> x(1, 3, 8);
  x.setRandom(3);
  const auto ya = a.forward(x, x, x).output, yb = b.forward(x, x, x).output;
  for (tessera::Index i = 0; i < ya.size(); ++i)
    if (ya.data()[i] != yb.data()[i]) {
      std::printf("consumer: loaded weights give a different output\n");
      return 1;
    }
#ifdef TESSERA_COMPILED
  const char* mode = "compiled";
#else
  const char* mode = "header-only";
#endif
  std::printf(
      "consumer: tessera %d.%d.%d works, %s, kernels at level %s (softmax row 0 = %.4f %.4f "
      "%.4f)\n",
      TESSERA_VERSION_MAJOR, TESSERA_VERSION_MINOR, TESSERA_VERSION_PATCH, mode,
      std::string(tessera::cpu_capability()).c_str(), p(0, 0), p(0, 1), p(0, 2));
  return 0;
}
