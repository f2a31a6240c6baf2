// DistributedDataParallel's gradient synchronization for one model, on LibTorch's own
// c10d::Reducer: gradients are bucketed (about 25 MB each, the first bucket 1 MB) and each
// bucket is all-reduced, averaged over the ranks, as soon as the backward pass has filled it,
// overlapping communication with the rest of the backward pass.
#pragma once
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "dist/dist.h"

namespace c10d {
class Reducer;
}

namespace fkd {

class GradientSync {
 public:
  /// Gives every rank rank 0's parameters and buffers, checks that every rank holds the same
  /// architecture (WorkMismatch otherwise), and hooks the Reducer into the model's
  /// parameters. With one process it does nothing.
  GradientSync(Distributed& dist, torch::nn::Module& net);
  ~GradientSync();

  /// Before each backward pass: arms the Reducer, so that the backward pass leaves every
  /// parameter's gradient averaged over the ranks.
  void prepare_backward();
  /// Gives every rank rank 0's buffers (BatchNorm statistics): rank 0's are authoritative,
  /// as in DistributedDataParallel. Before evaluating and before saving.
  void sync_buffers();

 private:
  Distributed& dist_;
  std::vector<torch::Tensor> params_, buffers_;
  std::shared_ptr<c10d::Reducer> reducer_;  // shared: destructible where c10d is left out
};

}  // namespace fkd
