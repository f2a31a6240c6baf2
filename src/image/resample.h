// Internals of resized_crop, exposed for tests and benchmarks: the choice between the
// portable kernels and the AVX2 ones, which must produce identical bytes.
#pragma once
#include <cstdint>
#include <vector>

#include "fkd/image.h"

namespace fkd::detail {

/// Which resampling kernels resized_crop_with uses.
enum class Kernels {
  kPortable,  ///< plain C++ loops, PIL's arithmetic written out directly
  kAvx2,      ///< AVX2 intrinsics (only where avx2_available())
  kBest,      ///< AVX2 when the CPU has it, else portable (what resized_crop uses)
};

/// True when this CPU runs the AVX2 kernels.
bool avx2_available();

/// resized_crop with an explicit kernel choice.
void resized_crop_with(Kernels kernels, const Image& src, const PixelBox& box, bool flip, int out_h,
                       int out_w, Interp interp, uint8_t* out, std::vector<uint8_t>& scratch);

}  // namespace fkd::detail
