#include "tessera/nn/feed_forward.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

namespace feed_forward_test {

using tessera::Index;
using tessera::Tensor;
using tessera::nn::FeedForward;

template <class T>
class FeedForwardTest : public ::testing::Test {};
TYPED_TEST_SUITE(FeedForwardTest, tessera::test::Scalars);

TYPED_TEST(FeedForwardTest, EqualsLinearActivationLinear) {
  using T = TypeParam;
  for (auto act :
       {tessera::Activation::relu, tessera::Activation::gelu, tessera::Activation::silu}) {
    FeedForward<T> ff({.d_model = 6, .dim_feedforward = 10, .activation = act, .seed = 4});
    Tensor<T, 3> x(2, 3, 6);
    x.setRandom(5);
    const auto y = ff.forward(x);
    // Plain loops: h = act(x W1^T + b1), y = h W2^T + b2.
    for (Index b = 0; b < 2; ++b)
      for (Index i = 0; i < 3; ++i) {
        std::vector<T> h(10);
        for (Index f = 0; f < 10; ++f) {
          T a = ff.linear1.bias.value(f);
          for (Index c = 0; c < 6; ++c) a += ff.linear1.weight.value(f, c) * x(b, i, c);
          h[f] = act == tessera::Activation::relu ? std::max(a, T(0))
                 : act == tessera::Activation::gelu
                     ? T(0.5) * a * (1 + std::erf(a / std::sqrt(T(2))))
                     : a / (1 + std::exp(-a));
        }
        for (Index o = 0; o < 6; ++o) {
          T a = ff.linear2.bias.value(o);
          for (Index f = 0; f < 10; ++f) a += ff.linear2.weight.value(o, f) * h[f];
          EXPECT_NEAR(y(b, i, o), a, 20 * tessera::test::tol<T>());
        }
      }
  }
  FeedForward<T> ff({.d_model = 6, .dim_feedforward = 10});
  EXPECT_EQ(ff.state_dict().keys(), (std::vector<std::string>{"linear1.bias", "linear1.weight",
                                                              "linear2.bias", "linear2.weight"}));
  TESSERA_EXPECT_THROW_MSG(ff.forward(Tensor<T, 2>(2, 5)), tessera::ShapeError,
                           "tessera::nn::FeedForward::forward", "argument 'x' has shape [2, 5]",
                           "last dimension of 6 (d_model)");
}

TYPED_TEST(FeedForwardTest, ForwardIntoEqualsForwardAndAllocatesOnce) {
  using T = TypeParam;
  FeedForward<T> ff(
      {.d_model = 6, .dim_feedforward = 10, .activation = tessera::Activation::gelu, .seed = 7});
  Tensor<T, 3> x(2, 3, 6), res(2, 3, 6);
  x.setRandom(8), res.setRandom(9);
  const auto rows = res.template reshape<2>({-1, 6});
  for (const bool with_residual : {false, true}) {
    const std::optional<tessera::TensorMap<const T, 2>> r =
        with_residual ? std::optional(rows) : std::nullopt;
    tessera::test::expect_into_equals(x, ff.forward(x, r), [&](const auto& in, auto& out) {
      ff.forward_into(in, out, r);  // out may be x
    });
  }
  // The hidden layer comes from the thread's scratch arena: a second call allocates none.
  Tensor<T, 3> out(2, 3, 6);
  tessera::test::expect_repeat_allocates_nothing([&] { ff.forward_into(x, out); });
  Tensor<T, 3> bad(2, 3, 10);
  TESSERA_EXPECT_THROW_MSG(ff.forward_into(x, bad), tessera::ShapeError,
                           "tessera::nn::FeedForward::forward_into", "'out'", "[2, 3, 10]",
                           "[2, 3, 6]");
  EXPECT_EQ(tessera::detail::scratch().live_frames(), 0);
}

}  // namespace feed_forward_test
