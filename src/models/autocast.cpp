#include "models/autocast.h"

#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "fkd/error.h"

namespace fkd {
namespace {

/// AVX512-BF16 (CPUID leaf 7, subleaf 1, EAX bit 5), usable: the OS saves the AVX-512 state
/// (XCR0 bits 1, 2 and 5-7).
bool cpu_avx512_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0xe6u) != 0xe6u) return false;
  if (__get_cpuid_max(0, nullptr) < 7 || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a & (1u << 5)) != 0;
#else
  return false;
#endif
}

}  // namespace

AmpMode resolve_amp(AmpMode m, const torch::Device& device) {
  if (m == AmpMode::kAuto) {
    // Compute capability 8.0 (Ampere) and later run bfloat16 natively; before it, bf16
    // matrix products are emulated and slower than float32.
    return device.is_cuda() && native_bf16(device) ? AmpMode::kBf16 : AmpMode::kOff;
  }
  FKD_CHECK(!(m == AmpMode::kFp16 && !device.is_cuda()), ConfigError,
            "--amp fp16 needs a CUDA device (LibTorch's CPU autocast runs bfloat16 only): use "
            "--amp bf16 on {}",
            device.str());
  return m;
}

bool native_bf16(const torch::Device& device) {
  if (device.is_cuda()) return at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8();
  if (device.is_cpu()) {
    static const bool cpu = cpu_avx512_bf16();
    return cpu;
  }
  return false;
}

at::ScalarType amp_dtype(AmpMode m) {
  return m == AmpMode::kBf16 ? at::kBFloat16 : m == AmpMode::kFp16 ? at::kHalf : at::kFloat;
}

Autocast::Autocast(AmpMode mode, const torch::Device& device) {
  if (mode != AmpMode::kBf16 && mode != AmpMode::kFp16) return;
  active_ = true;
  cuda_ = device.is_cuda();
  const at::ScalarType dtype = amp_dtype(mode);
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

}  // namespace fkd
