// What reaches the model and in what precision: autocast and loss scaling, the model EMA
// against hand computations, and uint8 batches normalized on the device against the
// loader's float path.
#include <cmath>

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/loader.h"
#include "testutil.h"
#include "train/amp.h"
#include "train/device.h"
#include "train/ema.h"

namespace fkd {
namespace {

/// A module with a weight, a bias and an integer buffer, like a BatchNorm's counter.
struct Small : torch::nn::Module {
  Small() {
    w = register_parameter("w", torch::tensor({1.0f, 2.0f}));
    b = register_parameter("b", torch::tensor({0.5f}));
    count = register_buffer("count", torch::tensor({int64_t(0)}));
  }
  torch::Tensor w, b, count;
};

void set_values(Small& m, float w0, float w1, float b, int64_t count) {
  torch::NoGradGuard g;
  m.w.copy_(torch::tensor({w0, w1}));
  m.b.copy_(torch::tensor({b}));
  m.count.fill_(count);
}

TEST(ModelEma, DecayFollowsTimmSchedule) {
  ModelEma::Options o;
  o.decay = 0.999;
  EXPECT_EQ(ModelEma::decay_at(o, 1), 0.0);  // the first update copies
  EXPECT_EQ(ModelEma::decay_at(o, 2), 0.999);
  EXPECT_EQ(ModelEma::decay_at(o, 5000), 0.999);
  o.warmup = true;
  // 1 - (1 + t)^(-2/3) with t = step - 1
  EXPECT_NEAR(ModelEma::decay_at(o, 10), 1.0 - std::pow(10.0, -2.0 / 3.0), 1e-12);
  EXPECT_NEAR(ModelEma::decay_at(o, 2), 1.0 - std::pow(2.0, -2.0 / 3.0), 1e-12);
  // capped at the decay once the warm-up passes it (10^(9/2) steps for 0.999 at power 2/3)
  EXPECT_EQ(ModelEma::decay_at(o, 100000), 0.999);
}

TEST(ModelEma, AveragesLikeAHandComputation) {
  Small m;
  ModelEma::Options o;
  o.decay = 0.9;
  ModelEma ema(m, o);
  const float w0[] = {3.0f, -1.0f, 4.0f, 10.0f};
  double e = 1.0;  // hand average of w[0]
  for (int step = 1; step <= 4; ++step) {
    set_values(m, w0[step - 1], 7.0f, 0.25f * float(step), step * 3);
    ema.update(m, step);
    const double d = step == 1 ? 0.0 : 0.9;
    e = d * e + (1 - d) * w0[step - 1];
  }
  const auto& t = ema.tensors();
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].first, "w");
  EXPECT_NEAR(t[0].second[0].item<double>(), e, 1e-5);
  EXPECT_NEAR(t[0].second[1].item<double>(), 7.0, 1e-5);  // constant input stays
  EXPECT_EQ(t[2].second.item<int64_t>(), 12);             // integer buffers are copied
  EXPECT_NE(t[0].second[0].item<double>(), m.w[0].item<double>());
}

TEST(ModelEma, SwapShowsTheAverageAndRestoresTheModel) {
  Small m;
  ModelEma ema(m, ModelEma::Options{});
  set_values(m, 5.0f, 6.0f, 1.0f, 9);
  {
    ModelEma::Swap swap(ema, m);
    EXPECT_FLOAT_EQ(m.w[0].item<float>(), 1.0f);
    EXPECT_EQ(m.count.item<int64_t>(), 0);
  }
  EXPECT_FLOAT_EQ(m.w[0].item<float>(), 5.0f);
  EXPECT_EQ(m.count.item<int64_t>(), 9);
}

TEST(ModelEma, LoadChecksNamesAndShapes) {
  Small m;
  ModelEma ema(m, ModelEma::Options{});
  EXPECT_THROW(ema.load({{"w", torch::zeros({2})}}, "ck.pt"), FormatError);
  EXPECT_THROW(ema.load({{"w", torch::zeros({3})},
                         {"b", torch::zeros({1})},
                         {"count", torch::zeros({1}, torch::kLong)}},
                        "ck.pt"),
               FormatError);
  ema.load({{"w", torch::full({2}, 4.0f)},
            {"b", torch::zeros({1})},
            {"count", torch::zeros({1}, torch::kLong)}},
           "ck.pt");
  EXPECT_FLOAT_EQ(ema.tensors()[0].second[1].item<float>(), 4.0f);
  EXPECT_THROW(ModelEma(m, ModelEma::Options{1.5}), ConfigError);
}

TEST(LossScaler, SkipsNonFiniteStepsAndBacksOff) {
  const torch::Device cpu(torch::kCPU);
  LossScaler::Options o;
  o.init_scale = 1024;
  o.growth_interval = 3;
  LossScaler s(true, cpu, o);
  auto p = torch::ones({2}, torch::requires_grad());
  int steps_taken = 0;
  auto run = [&](float g0) {
    p.mutable_grad() = torch::tensor({g0, 2048.0f});
    return s.step({p}, [&] { ++steps_taken; });
  };
  EXPECT_TRUE(run(1024.0f));
  EXPECT_FLOAT_EQ(p.grad()[0].item<float>(), 1.0f);  // unscaled
  EXPECT_FLOAT_EQ(p.grad()[1].item<float>(), 2.0f);
  EXPECT_FALSE(run(INFINITY));
  EXPECT_FALSE(run(NAN));
  EXPECT_EQ(steps_taken, 1);
  EXPECT_EQ(s.skipped_steps(), 2);
  EXPECT_DOUBLE_EQ(s.current_scale(), 256.0);  // halved twice
  // three clean steps in a row double it
  EXPECT_TRUE(run(1.0f));
  EXPECT_TRUE(run(1.0f));
  EXPECT_DOUBLE_EQ(s.current_scale(), 256.0);
  EXPECT_TRUE(run(1.0f));
  EXPECT_DOUBLE_EQ(s.current_scale(), 512.0);
  EXPECT_DOUBLE_EQ(s.scale(torch::tensor(2.0f)).item<double>(), 1024.0);
  // its state survives a checkpoint
  LossScaler t(true, cpu, o);
  t.load_state(s.state());
  EXPECT_DOUBLE_EQ(t.current_scale(), 512.0);
  EXPECT_EQ(t.skipped_steps(), 2);
}

TEST(LossScaler, DisabledPassesThrough) {
  LossScaler s(false, torch::Device(torch::kCPU));
  auto p = torch::ones({1}, torch::requires_grad());
  p.mutable_grad() = torch::tensor({INFINITY});
  bool stepped = false;
  EXPECT_TRUE(s.step({p}, [&] { stepped = true; }));
  EXPECT_TRUE(stepped);
  EXPECT_DOUBLE_EQ(s.scale(torch::tensor(3.0f)).item<double>(), 3.0);
}

TEST(Amp, Bf16AutocastOnCpuAndRestores) {
  const torch::Device cpu(torch::kCPU);
  const auto a = torch::randn({4, 8}), b = torch::randn({8, 3});
  ASSERT_FALSE(at::autocast::is_cpu_enabled());
  {
    Autocast ac(AmpMode::kBf16, cpu);
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat);
  {
    Autocast off(AmpMode::kOff, cpu);
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat);
  }
}

TEST(Amp, ResolvesPerDevice) {
  const torch::Device cpu(torch::kCPU);
  EXPECT_EQ(resolve_amp(AmpMode::kAuto, cpu), AmpMode::kOff);
  EXPECT_EQ(resolve_amp(AmpMode::kBf16, cpu), AmpMode::kBf16);
  EXPECT_THROW(resolve_amp(AmpMode::kFp16, cpu), ConfigError);
  EXPECT_EQ(parse_amp("bf16"), AmpMode::kBf16);
  EXPECT_THROW(parse_amp("half"), ConfigError);
}

TEST(DeviceInput, Uint8BatchesNormalizeToTheFloatPathsPixels) {
  test::TempDir d;
  test::write_idx_split(d.path(), "train", 20, 28, 28, 4);
  DatasetOptions dopt;
  dopt.channels = 3;  // three channels with their own statistics
  auto ds = open_dataset(d.path(), Split::kTrain, dopt);
  TrainTransform t;
  t.crop = {CropKind::kRandomResized, 16};
  LoaderOptions fo;
  fo.batch_size = 6;
  LoaderOptions uo = fo;
  uo.uint8_nhwc = true;
  auto src = std::make_shared<RandomCropSource>(t, 7, 2);
  Loader fl(ds, t, src, fo), ul(ds, t, src, uo);
  fl.start_epoch(0);
  ul.start_epoch(0);
  const torch::Device cpu(torch::kCPU);
  Batch fb, ub;
  int batches = 0;
  while (fl.next(fb)) {
    ASSERT_TRUE(ul.next(ub));
    for (bool cl : {true, false}) {
      const auto want = batch_images(fb, cpu, cl), got = batch_images(ub, cpu, cl);
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_EQ(got.is_contiguous(at::MemoryFormat::ChannelsLast), cl);
      // Same operations in the same order: equal to the last bit.
      EXPECT_TRUE(torch::equal(got, want))
          << "batch " << batches << " channels_last " << cl << " max diff "
          << (got - want).abs().max().item<float>();
    }
    ++batches;
  }
  EXPECT_GT(batches, 1);
}

TEST(DeviceInput, FeedHandsOutEveryBatchWithItsTensors) {
  test::TempDir d;
  test::write_idx_split(d.path(), "train", 22, 20, 20, 3);
  auto ds = open_dataset(d.path(), Split::kTrain);
  TrainTransform t;
  t.crop = {CropKind::kRandomResized, 12};
  LoaderOptions o;
  o.batch_size = 8;
  o.workers = 2;
  o.uint8_nhwc = true;
  auto src = std::make_shared<RandomCropSource>(t, 3, 2);
  Loader plain(ds, t, src, o), fed(ds, t, src, o);
  const torch::Device cpu(torch::kCPU);
  DeviceFeed feed(fed, cpu, true);
  for (int e = 0; e < 2; ++e) {
    plain.start_epoch(e);
    feed.start_epoch(e);
    Batch want;
    DeviceBatch got;
    size_t n = 0;
    while (plain.next(want)) {
      ASSERT_TRUE(feed.next(got)) << "epoch " << e << " batch " << n;
      EXPECT_EQ(got.batch.index, want.index);
      EXPECT_TRUE(torch::equal(got.x, batch_images(want, cpu, true)));
      EXPECT_TRUE(torch::equal(got.y, batch_targets(want, cpu)));
      EXPECT_FALSE(got.soft.defined());
      ++n;
    }
    EXPECT_FALSE(feed.next(got));
    EXPECT_EQ(n, plain.num_batches());
  }
}

}  // namespace
}  // namespace fkd
