// Running a network in the precision --amp names: autocast regions, as PyTorch's
// torch.autocast opens them, for LibTorch (which has the ATen state but not the Python
// class), and the resolution of --amp auto per device.
#pragma once
#include <torch/torch.h>

#include "fkd/amp.h"

namespace fkd {

/// kAuto resolved for training on `device`: kBf16 on a CUDA device of compute capability
/// 8.0 or more, kOff otherwise. Throws ConfigError for kFp16 on a CPU (LibTorch's CPU
/// autocast runs bfloat16 only). Other modes are returned as given.
AmpMode resolve_amp(AmpMode m, const torch::Device& device);

/// Whether `device` computes bfloat16 convolutions and matrix products natively: a CUDA
/// device of compute capability 8.0 or more, or a CPU with AVX512-BF16 or AMX-BF16
/// instructions (where oneDNN runs them at about twice the float32 rate).
bool native_bf16(const torch::Device& device);

/// The autocast dtype of a resolved mode: bfloat16, float16, or float32 for kOff.
at::ScalarType amp_dtype(AmpMode m);

/// Autocast for the device's type while alive (the region of a forward pass), restoring
/// the previous state after; kOff does nothing. Losses computed inside should be cast to
/// float32 before use (soft_cross_entropy does). Autocast state is per thread: open the
/// region on the thread that runs the network.
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

}  // namespace fkd
