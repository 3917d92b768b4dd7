#include "tessera/optim/lr_schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "tessera/optim/adamw.hpp"
#include "test_util.hpp"

namespace lr_schedule_test {

using tessera::Shape;
using tessera::nn::Parameter;
using tessera::optim::ConstantWithWarmup;
using tessera::optim::CosineWithWarmup;
using tessera::optim::LinearWarmup;
using tessera::optim::ParameterRef;

// open_clip src/training/scheduler.py cosine_lr, written out.
double open_clip_cosine(double base, long warmup, long steps, long step) {
  if (step < warmup) return base * (step + 1) / warmup;
  const long e = step - warmup, es = steps - warmup;
  return 0.5 * (1 + std::cos(std::numbers::pi * e / es)) * base;
}

TEST(CosineWithWarmup, IsOpenClipsCosineLr) {
  const CosineWithWarmup s{.base_lr = 5e-4, .warmup_steps = 10, .total_steps = 100};
  for (long step = 0; step < 100; ++step)
    EXPECT_EQ(s.lr_at(step), open_clip_cosine(5e-4, 10, 100, step)) << step;
  EXPECT_EQ(s.lr_at(0), 5e-5);
  EXPECT_EQ(s.lr_at(9), 5e-4);
  EXPECT_EQ(s.lr_at(10), 5e-4);
  EXPECT_NEAR(s.lr_at(55), 2.5e-4, 1e-18);
  EXPECT_EQ(s.lr_at(100), 0.0);
  EXPECT_EQ(s.lr_at(1000), 0.0);  // stays at the end
}

TEST(CosineWithWarmup, MinLrAndNoWarmup) {
  const CosineWithWarmup s{.base_lr = 1.0, .warmup_steps = 0, .total_steps = 4, .min_lr = 0.2};
  EXPECT_EQ(s.lr_at(0), 1.0);
  EXPECT_NEAR(s.lr_at(2), 0.6, 1e-15);
  EXPECT_NEAR(s.lr_at(4), 0.2, 1e-15);
  EXPECT_NEAR(s.lr_at(7), 0.2, 1e-15);
}

TEST(LinearWarmup, WarmsUpThenDecaysLinearly) {
  const LinearWarmup s{.base_lr = 1.0, .warmup_steps = 2, .total_steps = 6, .min_lr = 0.2};
  EXPECT_EQ(s.lr_at(0), 0.5);
  EXPECT_EQ(s.lr_at(1), 1.0);
  EXPECT_EQ(s.lr_at(2), 1.0);
  EXPECT_NEAR(s.lr_at(4), 0.6, 1e-15);
  EXPECT_NEAR(s.lr_at(6), 0.2, 1e-15);
  EXPECT_NEAR(s.lr_at(60), 0.2, 1e-15);
}

TEST(ConstantWithWarmup, IsOpenClipsConstLr) {
  const ConstantWithWarmup s{.base_lr = 0.3, .warmup_steps = 3};
  EXPECT_EQ(s.lr_at(0), 0.3 * 1 / 3);
  EXPECT_EQ(s.lr_at(1), 0.3 * 2 / 3);
  EXPECT_EQ(s.lr_at(2), 0.3);
  EXPECT_EQ(s.lr_at(50), 0.3);
  EXPECT_EQ((ConstantWithWarmup{.base_lr = 0.3}.lr_at(0)), 0.3);
}

template <class T>
class ScheduleApplyTest : public ::testing::Test {};
TYPED_TEST_SUITE(ScheduleApplyTest, tessera::test::Scalars);

TYPED_TEST(ScheduleApplyTest, SetsEveryGroupKeepingOwnLrRatios) {
  using T = TypeParam;
  Parameter<T, 1> a(Shape<1>{2}), b(Shape<1>{2});
  tessera::optim::AdamW<T> opt(
      std::vector<tessera::optim::ParamGroup<T>>{{{ParameterRef<T>("a", a)}, 0.4, std::nullopt},
                                                 {{ParameterRef<T>("b", b)}, {}, {}}},
      {.lr = 0.1});
  const CosineWithWarmup s{.base_lr = 0.1, .warmup_steps = 2, .total_steps = 10};
  s.apply(opt, 0);
  EXPECT_EQ(opt.lr(1), 0.05);
  EXPECT_EQ(opt.lr(0), 0.05 * (0.4 / 0.1));
  s.apply(opt, 6);
  EXPECT_EQ(opt.lr(1), s.lr_at(6));
  EXPECT_EQ(opt.lr(0), s.lr_at(6) * (0.4 / 0.1));
  EXPECT_EQ(opt.initial_lr(0), 0.4);  // unchanged by the schedule
  LinearWarmup{.base_lr = 0.1, .warmup_steps = 1, .total_steps = 3}.apply(opt, 2);
  EXPECT_NEAR(opt.lr(1), 0.05, 1e-15);
  ConstantWithWarmup{.base_lr = 0.2}.apply(opt, 5);
  EXPECT_EQ(opt.lr(1), 0.2);
  EXPECT_EQ(opt.lr(0), 0.2 * (0.4 / 0.2));
  TESSERA_EXPECT_THROW_MSG(ConstantWithWarmup{.base_lr = 0.0}.apply(opt, 5), tessera::ValueError,
                           "tessera::optim::ConstantWithWarmup::apply", "group 0", "own lr",
                           "base_lr > 0");
}

TEST(LrSchedules, RejectBadArguments) {
  const char* cos = "tessera::optim::CosineWithWarmup::lr_at";
  TESSERA_EXPECT_THROW_MSG(
      (CosineWithWarmup{.base_lr = -1, .warmup_steps = 1, .total_steps = 5}.lr_at(0)),
      tessera::ValueError, cos, "'base_lr'", "-1", ">= 0");
  TESSERA_EXPECT_THROW_MSG(
      (CosineWithWarmup{.base_lr = std::numeric_limits<double>::infinity(), .total_steps = 5}.lr_at(
          0)),
      tessera::ValueError, cos, "'base_lr'", "inf", "finite");
  TESSERA_EXPECT_THROW_MSG(
      (CosineWithWarmup{.base_lr = 1, .warmup_steps = 1, .total_steps = 5, .min_lr = -0.1}.lr_at(
          0)),
      tessera::ValueError, cos, "'min_lr'", "-0.1", ">= 0");
  TESSERA_EXPECT_THROW_MSG(
      (CosineWithWarmup{.base_lr = 1, .warmup_steps = 1, .total_steps = 5, .min_lr = 2}.lr_at(0)),
      tessera::ValueError, cos, "'min_lr'", "2", "at most base_lr (1)");
  TESSERA_EXPECT_THROW_MSG(
      (CosineWithWarmup{.base_lr = 1, .warmup_steps = -1, .total_steps = 5}.lr_at(0)),
      tessera::ValueError, cos, "'warmup_steps'", "-1", ">= 0");
  TESSERA_EXPECT_THROW_MSG(
      (CosineWithWarmup{.base_lr = 1, .warmup_steps = 5, .total_steps = 5}.lr_at(0)),
      tessera::ValueError, cos, "'total_steps'", "5", "more than warmup_steps (5)");
  TESSERA_EXPECT_THROW_MSG(
      (CosineWithWarmup{.base_lr = 1, .warmup_steps = 1, .total_steps = 5}.lr_at(-3)),
      tessera::ValueError, cos, "'step'", "-3", ">= 0");
  TESSERA_EXPECT_THROW_MSG((LinearWarmup{.base_lr = 1, .warmup_steps = 2}.lr_at(0)),
                           tessera::ValueError, "tessera::optim::LinearWarmup::lr_at",
                           "'total_steps'", "0", "more than warmup_steps (2)");
  TESSERA_EXPECT_THROW_MSG(
      (LinearWarmup{.base_lr = 1, .warmup_steps = 1, .total_steps = 3}.lr_at(-1)),
      tessera::ValueError, "tessera::optim::LinearWarmup::lr_at", "'step'", "-1");
  const char* cst = "tessera::optim::ConstantWithWarmup::lr_at";
  TESSERA_EXPECT_THROW_MSG((ConstantWithWarmup{.base_lr = -0.5}.lr_at(0)), tessera::ValueError, cst,
                           "'base_lr'", "-0.5");
  TESSERA_EXPECT_THROW_MSG((ConstantWithWarmup{.base_lr = 0.5, .warmup_steps = -2}.lr_at(0)),
                           tessera::ValueError, cst, "'warmup_steps'", "-2");
  TESSERA_EXPECT_THROW_MSG((ConstantWithWarmup{.base_lr = 0.5}.lr_at(-1)), tessera::ValueError, cst,
                           "'step'", "-1");
}

}  // namespace lr_schedule_test
