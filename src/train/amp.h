// Mixed precision: autocast regions and dynamic loss scaling, as PyTorch's torch.autocast and
// torch.cuda.amp.GradScaler do them, for LibTorch (which has the ATen operations but neither
// Python class).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace fkd {

/// --amp: the precision of the forward pass's matrix products and convolutions.
enum class AmpMode : uint8_t {
  kAuto,  ///< bf16 on a CUDA device that runs it natively, else off (resolve_amp)
  kOff,   ///< float32 everywhere
  kBf16,  ///< bfloat16 autocast (CUDA and CPU); no loss scaling needed
  kFp16,  ///< float16 autocast with dynamic loss scaling (CUDA only)
};
const char* amp_name(AmpMode m);             ///< "auto", "off", "bf16", "fp16"
AmpMode parse_amp(const std::string& name);  ///< throws ConfigError naming the choices
/// kAuto resolved for `device`: kBf16 on a CUDA device of compute capability 8.0 or more,
/// kOff otherwise. Throws ConfigError for kFp16 on a CPU (LibTorch's CPU autocast runs
/// bfloat16 only).
AmpMode resolve_amp(AmpMode m, const torch::Device& device);

/// Autocast for the device's type while alive (the region of a forward pass), restoring
/// the previous state after; kOff does nothing. Losses computed inside should be cast to
/// float32 before use (soft_cross_entropy does).
class Autocast {
 public:
  Autocast(AmpMode mode, const torch::Device& device);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  bool active_ = false, cuda_ = false, was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kFloat;
};

/// Dynamic loss scaling for fp16 (torch.cuda.amp.GradScaler's semantics and defaults): the
/// loss is multiplied by `scale` before backward; before the step the gradients are divided
/// by it and checked. A step whose gradients hold an inf or NaN is skipped and the scale
/// halves; after `growth_interval` clean steps in a row it doubles. Disabled, every call is
/// a pass-through, so the training loop has one shape.
class LossScaler {
 public:
  struct Options {
    double init_scale = 65536.0;  ///< 2^16
    double growth_factor = 2.0;
    double backoff_factor = 0.5;
    int64_t growth_interval = 2000;
  };
  LossScaler(bool enabled, const torch::Device& device, Options o);
  LossScaler(bool enabled, const torch::Device& device) : LossScaler(enabled, device, Options{}) {}
  bool enabled() const { return enabled_; }
  /// loss * scale (the loss itself when disabled).
  torch::Tensor scale(const torch::Tensor& loss) const;
  /// Unscales the gradients of `params` in place and records whether any is non-finite;
  /// then runs `optimizer_step` unless one was, and updates the scale. Returns true when the
  /// step was taken.
  template <typename Step>
  bool step(const std::vector<torch::Tensor>& params, Step&& optimizer_step) {
    if (!enabled_) {
      optimizer_step();
      return true;
    }
    const bool ok = unscale_and_check(params);
    if (ok) optimizer_step();
    update(ok);
    return ok;
  }
  double current_scale() const { return scale_; }
  int64_t skipped_steps() const { return skipped_; }  ///< steps skipped since construction/load
  /// The scaler's state for checkpoints: {scale, growth tracker, skipped} as float64 [3].
  torch::Tensor state() const;
  void load_state(const torch::Tensor& s);

  /// Divides the gradients by the scale; false when any gradient holds an inf or NaN.
  bool unscale_and_check(const std::vector<torch::Tensor>& params);
  /// The scale's update after a step that was (ok) or was not (skipped) finite.
  void update(bool ok);

 private:
  bool enabled_;
  torch::Device device_;
  Options o_;
  double scale_;
  int64_t tracker_ = 0;  ///< clean steps since the last change of scale
  int64_t skipped_ = 0;
};

}  // namespace fkd
