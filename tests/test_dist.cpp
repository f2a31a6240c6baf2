// Data-parallel pieces that run in one process: SyncBatchNorm's arithmetic against
// LibTorch's own batch_norm (with one rank the two must agree), and the Distributed of a
// single process.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dist/dist.h"
#include "dist/sync_bn.h"
#include "fkd/launch.h"
#include "fkd/models.h"

namespace {

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

TEST(SyncBatchNorm, OneRankMatchesBatchNormForwardBackwardAndRunningStats) {
  torch::manual_seed(3);
  fkd::Distributed alone(fkd::DistEnv{}, 10, torch::kCPU);
  auto sync = fkd::make_sync_batch_norm(alone);
  const int64_t c = 5;
  auto x = (torch::randn({6, c, 7, 4}) * 3 + 1).requires_grad_(true);
  auto w = (torch::rand({c}) + 0.5).requires_grad_(true);
  auto bias = torch::randn({c}).requires_grad_(true);
  auto dy = torch::randn({6, c, 7, 4});

  fkd::BatchNormSync::Layer layer{
      w, bias, torch::zeros({c}), torch::ones({c}), torch::zeros({}, torch::kLong), 0.1, 1e-5};
  auto y = sync->forward(x, layer);
  auto [gx, gw, gb] = [&] {
    auto g = torch::autograd::grad({y}, {x, w, bias}, {dy});
    return std::tuple{g[0], g[1], g[2]};
  }();

  auto x2 = x.detach().clone().requires_grad_(true);
  auto w2 = w.detach().clone().requires_grad_(true);
  auto b2 = bias.detach().clone().requires_grad_(true);
  auto rm = torch::zeros({c}), rv = torch::ones({c});
  auto y2 = torch::batch_norm(x2, w2, b2, rm, rv, /*training=*/true, 0.1, 1e-5, false);
  auto g2 = torch::autograd::grad({y2}, {x2, w2, b2}, {dy});

  EXPECT_LT(max_diff(y, y2), 1e-5);
  EXPECT_LT(max_diff(gx, g2[0]), 1e-5);
  EXPECT_LT(max_diff(gw, g2[1]), 1e-4);
  EXPECT_LT(max_diff(gb, g2[2]), 1e-4);
  EXPECT_LT(max_diff(layer.running_mean, rm), 1e-6);
  EXPECT_LT(max_diff(layer.running_var, rv), 1e-6);
  EXPECT_EQ(layer.num_batches_tracked.item<int64_t>(), 1);
}

}  // namespace
