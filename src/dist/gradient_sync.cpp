#include "gradient_sync.h"

#if FKD_C10D_API > 0
#include <torch/csrc/distributed/c10d/reducer.hpp>
#endif

#include <fmt/core.h>

#include "fkd/error.h"

namespace fkd {

namespace {
// DistributedDataParallel's defaults.
constexpr size_t kFirstBucketBytes = size_t(1) << 20;
constexpr size_t kBucketBytes = size_t(25) << 20;

/// The architecture as rank 0 must see it too: every parameter's and buffer's name and shape.
std::string architecture(const torch::nn::Module& net) {
  std::string s;
  for (const auto& p : net.named_parameters()) s += p.key() + c10::str(p.value().sizes()) + ";";
  for (const auto& b : net.named_buffers()) s += b.key() + c10::str(b.value().sizes()) + ";";
  return s;
}
}  // namespace

GradientSync::GradientSync(Distributed& dist, torch::nn::Module& net) : dist_(dist) {
  if (!dist.active()) return;
  std::unordered_map<size_t, std::string> names;
  for (const auto& p : net.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    names[params_.size()] = p.key();
    params_.push_back(p.value());
  }
  for (const auto& b : net.named_buffers()) buffers_.push_back(b.value());
  // A hash would name nothing: the shapes themselves, compared with rank 0's.
  dist.check_same("model (parameter names and shapes)",
                  fmt::format("{:016x}", std::hash<std::string>{}(architecture(net))));
  std::vector<torch::Tensor> state = params_;
  state.insert(state.end(), buffers_.begin(), buffers_.end());
  dist.broadcast_from_leader(state, "giving every rank rank 0's initial weights");
#if FKD_C10D_API > 0
  const std::vector<bool> sparse(params_.size(), false);
  auto [buckets, limits] =
      c10d::compute_bucket_assignment_by_size(params_, {kFirstBucketBytes, kBucketBytes}, sparse);
  reducer_ = std::make_shared<c10d::Reducer>(
      params_, buckets, limits, dist.group(), sparse, int64_t(kBucketBytes),
      /*find_unused_parameters=*/false,
      /*gradient_as_bucket_view=*/false, names, int64_t(kFirstBucketBytes));
#endif
}

GradientSync::~GradientSync() = default;

void GradientSync::prepare_backward() {
#if FKD_C10D_API > 0
  if (!reducer_) return;
  dist_.run("preparing the gradient all-reduce", [&] { reducer_->prepare_for_backward({}); });
#endif
}

void GradientSync::sync_buffers() {
  if (!reducer_) return;
  dist_.broadcast_from_leader(buffers_, "giving every rank rank 0's BatchNorm statistics");
}

}  // namespace fkd
