#include "tessera/optim/param_group.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tessera/nn/module.hpp"
#include "test_util.hpp"

namespace param_group_test {

using tessera::Shape;
using tessera::nn::Parameter;

// Names as open_clip's CLIP has them, plus 2-D parameters excluded by their names only.
template <class T>
struct ClipLike : tessera::nn::Module<ClipLike<T>> {
  Parameter<T, 0> logit_scale{Shape<0>{}};
  Parameter<T, 4> conv1{Shape<4>{2, 3, 2, 2}};
  Parameter<T, 2> bn_gain{Shape<2>{2, 2}};
  Parameter<T, 1> ln_pre{Shape<1>{4}};
  Parameter<T, 2> proj{Shape<2>{4, 3}};
  Parameter<T, 2> head_bias{Shape<2>{3, 3}};
  Parameter<T, 2> c_fc{Shape<2>{8, 4}};
  Parameter<T, 1> c_fc_b{Shape<1>{8}};
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "logit_scale", self.logit_scale);
    f(prefix + "visual.conv1.weight", self.conv1);
    f(prefix + "visual.bn1.weight", self.bn_gain);
    f(prefix + "visual.ln_pre.weight", self.ln_pre);
    f(prefix + "visual.proj", self.proj);
    f(prefix + "head.bias", self.head_bias);
    f(prefix + "transformer.resblocks.0.mlp.c_fc.weight", self.c_fc);
    f(prefix + "transformer.resblocks.0.mlp.c_fc.bias", self.c_fc_b);
  }
};

std::vector<std::string> names_of(const auto& group) {
  std::vector<std::string> out;
  for (const auto& p : group.params) out.push_back(p.name());
  return out;
}

TEST(OpenClipRule, SubstringsAndRank) {
  using tessera::optim::open_clip_excludes_from_weight_decay;
  EXPECT_TRUE(open_clip_excludes_from_weight_decay("visual.proj", 1));  // ndim < 2
  EXPECT_TRUE(open_clip_excludes_from_weight_decay("logit_scale", 0));
  EXPECT_TRUE(open_clip_excludes_from_weight_decay("x.bn.weight", 2));
  EXPECT_TRUE(open_clip_excludes_from_weight_decay("ln_final.weight", 2));
  EXPECT_TRUE(open_clip_excludes_from_weight_decay("a.bias", 2));
  EXPECT_TRUE(open_clip_excludes_from_weight_decay("kiln.weight", 2));  // substring, as open_clip
  EXPECT_FALSE(open_clip_excludes_from_weight_decay("visual.proj", 2));
  EXPECT_FALSE(open_clip_excludes_from_weight_decay("token_embedding.weight", 2));
}

template <class T>
class ParamGroupTest : public ::testing::Test {};
TYPED_TEST_SUITE(ParamGroupTest, tessera::test::Scalars);

TYPED_TEST(ParamGroupTest, OpenClipGroupsInOpenClipOrder) {
  using T = TypeParam;
  ClipLike<T> m;
  const auto groups = tessera::optim::open_clip_param_groups(m, 0.2);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(names_of(groups[0]),
            (std::vector<std::string>{"logit_scale", "visual.bn1.weight", "visual.ln_pre.weight",
                                      "head.bias", "transformer.resblocks.0.mlp.c_fc.bias"}));
  EXPECT_EQ(names_of(groups[1]),
            (std::vector<std::string>{"visual.conv1.weight", "visual.proj",
                                      "transformer.resblocks.0.mlp.c_fc.weight"}));
  EXPECT_EQ(groups[0].weight_decay, 0.0);
  EXPECT_EQ(groups[1].weight_decay, 0.2);
  EXPECT_FALSE(groups[0].lr.has_value());
  EXPECT_FALSE(groups[1].lr.has_value());
  EXPECT_EQ(groups[1].params[1].address(), &m.proj);

  const auto prefixed = tessera::optim::open_clip_param_groups<T>(m, 0.1, "clip.");
  EXPECT_EQ(prefixed[1].params[0].name(), "clip.visual.conv1.weight");
}

TYPED_TEST(ParamGroupTest, RejectsBadWeightDecay) {
  using T = TypeParam;
  ClipLike<T> m;
  TESSERA_EXPECT_THROW_MSG(tessera::optim::open_clip_param_groups(m, -0.1), tessera::ValueError,
                           "tessera::optim::open_clip_param_groups", "'weight_decay'", "-0.1",
                           ">= 0");
  TESSERA_EXPECT_THROW_MSG(
      tessera::optim::open_clip_param_groups(m, std::numeric_limits<double>::quiet_NaN()),
      tessera::ValueError, "tessera::optim::open_clip_param_groups", "'weight_decay'", "nan");
  TESSERA_EXPECT_THROW_MSG(
      tessera::optim::open_clip_param_groups(m, std::numeric_limits<double>::infinity()),
      tessera::ValueError, "tessera::optim::open_clip_param_groups", "'weight_decay'", "inf");
}

}  // namespace param_group_test
