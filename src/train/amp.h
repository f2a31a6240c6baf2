// Mixed precision in training: dynamic loss scaling, as PyTorch's torch.cuda.amp.GradScaler
// does it, for LibTorch (which has the ATen operations but not the Python class); the
// autocast regions are models/autocast.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/autocast.h"

namespace fkd {

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
