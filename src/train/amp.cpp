#include "amp.h"

#include "fkd/error.h"

namespace fkd {
LossScaler::LossScaler(bool enabled, const torch::Device& device, Options o)
    : enabled_(enabled), device_(device), o_(o), scale_(o.init_scale) {
  FKD_CHECK(o.init_scale > 0 && o.growth_factor > 1 && o.backoff_factor > 0 &&
                o.backoff_factor < 1 && o.growth_interval >= 1,
            ConfigError,
            "loss scaler: expected init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
            "growth_interval >= 1");
}

torch::Tensor LossScaler::scale(const torch::Tensor& loss) const {
  return enabled_ ? loss * scale_ : loss;
}

bool LossScaler::unscale_and_check(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  const auto on = torch::TensorOptions(device_).dtype(torch::kFloat);
  auto found_inf = torch::zeros({1}, on);
  const auto inv_scale = torch::full({1}, 1.0 / scale_, on);
  if (device_.is_cuda()) {
    // GradScaler's fused kernel: one launch per group of tensors.
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
  } else {
    // LibTorch builds its fused kernel for CUDA only; the same in plain operations.
    for (auto& g : grads) {
      found_inf.add_(g.isfinite().logical_not().any().to(torch::kFloat));
      g.mul_(inv_scale.to(g.scalar_type()));
    }
  }
  // The host decides whether the optimizer steps, so it reads the flag (one sync a step).
  return found_inf.item<float>() == 0.0f;
}

void LossScaler::update(bool ok) {
  // _amp_update_scale_'s rule: back off and restart the count on a non-finite step; grow
  // after growth_interval clean steps in a row.
  if (!ok) {
    ++skipped_;
    scale_ *= o_.backoff_factor;
    tracker_ = 0;
  } else if (++tracker_ >= o_.growth_interval) {
    scale_ *= o_.growth_factor;
    tracker_ = 0;
  }
}

torch::Tensor LossScaler::state() const {
  return torch::tensor({scale_, double(tracker_), double(skipped_)}, torch::kDouble);
}

void LossScaler::load_state(const torch::Tensor& s) {
  FKD_CHECK(s.numel() == 3 && s.scalar_type() == torch::kDouble, FormatError,
            "loss scaler state: expected 3 float64 values, found {} of {}", s.numel(),
            c10::toString(s.scalar_type()));
  const auto v = s.contiguous();
  scale_ = v[0].item<double>();
  tracker_ = int64_t(v[1].item<double>());
  skipped_ = int64_t(v[2].item<double>());
}

}  // namespace fkd
