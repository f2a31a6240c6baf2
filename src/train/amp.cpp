#include "amp.h"

#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include "fkd/enum_names.h"
#include "fkd/error.h"

namespace fkd {
namespace {

constexpr EnumNames<AmpMode, 4> kAmpNames({{{AmpMode::kAuto, "auto"},
                                            {AmpMode::kOff, "off"},
                                            {AmpMode::kBf16, "bf16"},
                                            {AmpMode::kFp16, "fp16"}}});

}  // namespace

const char* amp_name(AmpMode m) { return kAmpNames.name(m); }
AmpMode parse_amp(const std::string& name) { return kAmpNames.parse(name, "--amp mode"); }

AmpMode resolve_amp(AmpMode m, const torch::Device& device) {
  if (m == AmpMode::kAuto) {
    // Compute capability 8.0 (Ampere) and later run bfloat16 natively; before it, bf16
    // matrix products are emulated and slower than float32.
    const bool native_bf16 =
        device.is_cuda() && at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8();
    return native_bf16 ? AmpMode::kBf16 : AmpMode::kOff;
  }
  FKD_CHECK(!(m == AmpMode::kFp16 && !device.is_cuda()), ConfigError,
            "--amp fp16 needs a CUDA device (LibTorch's CPU autocast runs bfloat16 only): use "
            "--amp bf16 on {}",
            device.str());
  return m;
}

Autocast::Autocast(AmpMode mode, const torch::Device& device) {
  if (mode != AmpMode::kBf16 && mode != AmpMode::kFp16) return;
  active_ = true;
  cuda_ = device.is_cuda();
  const at::ScalarType dtype = mode == AmpMode::kBf16 ? at::kBFloat16 : at::kHalf;
  if (cuda_) {
    was_enabled_ = at::autocast::is_enabled();
    was_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(true);
  } else {
    was_enabled_ = at::autocast::is_cpu_enabled();
    was_dtype_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(true);
  }
  at::autocast::increment_nesting();
}

Autocast::~Autocast() {
  if (!active_) return;
  // As torch.autocast's exit: the cache of casted weights lives for the outermost region.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  if (cuda_) {
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(was_dtype_);
  } else {
    at::autocast::set_cpu_enabled(was_enabled_);
    at::autocast::set_autocast_cpu_dtype(was_dtype_);
  }
}

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
