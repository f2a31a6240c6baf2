// Crop geometry (torchvision/PIL rounding), whole-image resize, and the float conversion.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "fkd/error.h"
#include "fkd/image.h"

namespace fkd {

Interp parse_interp(const std::string& name) {
  if (name == "bilinear") return Interp::kBilinear;
  if (name == "bicubic") return Interp::kBicubic;
  fail<ConfigError>("unknown interpolation '{}' (expected bilinear or bicubic)", name);
}

PixelBox to_pixel_box(const CropBox& c, int height, int width) {
  // Corners as the reference computes them: float32 coordinates times the size in double,
  // then Python's round() (half to even, which nearbyint does in the default rounding mode).
  const double top = double(c.i) * height, left = double(c.j) * width;
  const double bottom = top + double(c.h) * height, right = left + double(c.w) * width;
  constexpr double kLimit = 1 << 30;
  FKD_CHECK(std::fabs(top) < kLimit && std::fabs(left) < kLimit && std::fabs(bottom) < kLimit &&
                std::fabs(right) < kLimit,
            DataError,
            "crop box (i={}, j={}, h={}, w={}) is not finite or far outside a {}x{} image", c.i,
            c.j, c.h, c.w, height, width);
  PixelBox b;
  b.top = int(std::nearbyint(top));
  b.left = int(std::nearbyint(left));
  b.height = std::max(1, int(std::nearbyint(bottom)) - b.top);
  b.width = std::max(1, int(std::nearbyint(right)) - b.left);
  return b;
}

CropBox to_crop_box(const PixelBox& b, int height, int width) {
  CropBox c;
  c.i = float(double(b.top) / height);
  c.j = float(double(b.left) / width);
  c.h = float(double(b.height) / height);
  c.w = float(double(b.width) / width);
  return c;
}

namespace {

// One axis of torchvision's CenterCrop: a crop larger than the image first pads it with
// zeros, floor(excess/2) before and the rest after, then crops at 0.
int center_offset(int size, int crop) {
  if (crop > size) return -((crop - size) / 2);
  return int(std::nearbyint((size - crop) / 2.0));
}

}  // namespace

PixelBox center_box(int height, int width, int out_h, int out_w) {
  PixelBox b;
  b.top = center_offset(height, out_h);
  b.left = center_offset(width, out_w);
  b.height = out_h;
  b.width = out_w;
  return b;
}

Image resize_shorter(const Image& src, int size, Interp interp) {
  FKD_CHECK(size > 0, ConfigError, "resize: size must be positive, got {}", size);
  const int shorter = std::min(src.height, src.width), longer = std::max(src.height, src.width);
  FKD_CHECK(shorter > 0, ConfigError, "resize: empty image {}x{}", src.height, src.width);
  if (shorter == size) return src;
  // Python's int(size * long / short): exact product, correctly rounded quotient, truncated.
  const int new_long = int(double(int64_t(size) * longer) / shorter);
  Image out;
  out.channels = src.channels;
  out.width = src.width <= src.height ? size : new_long;
  out.height = src.width <= src.height ? new_long : size;
  out.pixels.resize(size_t(out.height) * out.width * out.channels);
  std::vector<uint8_t> scratch;
  resized_crop(src, PixelBox{0, 0, src.width, src.height}, false, out.height, out.width, interp,
               out.pixels.data(), scratch);
  return out;
}

namespace {

/// The exact values, one table per channel: torchvision's operations in float (ToTensor
/// divides by 255, Normalize subtracts the mean, then divides by the std).
void exact_table(const Normalize& norm, int channels, float table[3][256]) {
  for (int c = 0; c < channels; ++c) {
    for (int v = 0; v < 256; ++v) table[c][v] = (float(v) / 255.0f - norm.mean[c]) / norm.std[c];
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define FKD_AVX2_FMA __attribute__((target("avx2,fma")))

/// Per-channel constants of the vector conversion.
struct NormVec {
  __m256 mean, std, inv_std;
};

/// (x/255 - mean)/std for 8 levels, with each division done as a reciprocal multiply plus one
/// FMA correction step, which in practice rounds exactly like the division. Whether it does
/// for a given mean and std is checked against the exact table before use.
FKD_AVX2_FMA inline __m256 normalize8(__m256 x, const NormVec& n) {
  const __m256 d255 = _mm256_set1_ps(255.0f), r255 = _mm256_set1_ps(1.0f / 255.0f);
  __m256 q = _mm256_mul_ps(x, r255);
  q = _mm256_fmadd_ps(_mm256_fnmadd_ps(q, d255, x), r255, q);
  const __m256 y = _mm256_sub_ps(q, n.mean);
  __m256 z = _mm256_mul_ps(y, n.inv_std);
  return _mm256_fmadd_ps(_mm256_fnmadd_ps(z, n.std, y), n.inv_std, z);
}

FKD_AVX2_FMA inline __m256 levels8(__m128i bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}

/// True when the vector conversion gives exactly the table's value for every level and
/// channel of this normalization.
FKD_AVX2_FMA bool avx2_matches_table(const Normalize& norm, int channels,
                                     const float table[3][256]) {
  for (int c = 0; c < channels; ++c) {
    const NormVec n{_mm256_set1_ps(norm.mean[c]), _mm256_set1_ps(norm.std[c]),
                    _mm256_set1_ps(1.0f / norm.std[c])};
    for (int v = 0; v < 256; v += 8) {
      alignas(32) float got[8];
      _mm256_store_ps(
          got, normalize8(_mm256_cvtepi32_ps(_mm256_add_epi32(
                              _mm256_set1_epi32(v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))),
                          n));
      if (std::memcmp(got, table[c] + v, sizeof got) != 0) return false;
    }
  }
  return true;
}

/// The vector conversion; valid where avx2_matches_table holds for norm and table.
FKD_AVX2_FMA void to_float_chw_avx2(const uint8_t* hwc, size_t npx, int channels,
                                    const Normalize& norm, const float table[3][256], float* out) {
  NormVec n[3];
  for (int c = 0; c < channels; ++c) {
    n[c] = {_mm256_set1_ps(norm.mean[c]), _mm256_set1_ps(norm.std[c]),
            _mm256_set1_ps(1.0f / norm.std[c])};
  }
  size_t i = 0;
  if (channels == 1) {
    for (; i + 16 <= npx; i += 16) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(hwc + i));
      _mm256_storeu_ps(out + i, normalize8(levels8(b), n[0]));
      _mm256_storeu_ps(out + i + 8, normalize8(levels8(_mm_srli_si128(b, 8)), n[0]));
    }
  } else {
    // 16 RGB pixels = 48 bytes in three loads; each channel gathers its 16 bytes from them.
    const __m128i pick0 = _mm_setr_epi8(0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i pick1 =
        _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 2, 5, 8, 11, 14, -1, -1, -1, -1, -1);
    const __m128i pick2 =
        _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 1, 4, 7, 10, 13);
    for (; i + 16 <= npx; i += 16) {
      const uint8_t* p = hwc + i * 3;
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32));
      // Channel c starts c bytes in: shift the 48 bytes down by c, then pick every third.
      const __m128i ch[3] = {
          _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, pick0), _mm_shuffle_epi8(b, pick1)),
                       _mm_shuffle_epi8(d, pick2)),
          _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(_mm_alignr_epi8(b, a, 1), pick0),
                                    _mm_shuffle_epi8(_mm_alignr_epi8(d, b, 1), pick1)),
                       _mm_shuffle_epi8(_mm_srli_si128(d, 1), pick2)),
          _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(_mm_alignr_epi8(b, a, 2), pick0),
                                    _mm_shuffle_epi8(_mm_alignr_epi8(d, b, 2), pick1)),
                       _mm_shuffle_epi8(_mm_srli_si128(d, 2), pick2)),
      };
      for (int c = 0; c < 3; ++c) {
        float* o = out + c * npx + i;
        _mm256_storeu_ps(o, normalize8(levels8(ch[c]), n[c]));
        _mm256_storeu_ps(o + 8, normalize8(levels8(_mm_srli_si128(ch[c], 8)), n[c]));
      }
    }
  }
  for (; i < npx; ++i) {
    for (int c = 0; c < channels; ++c) out[c * npx + i] = table[c][hwc[i * channels + c]];
  }
}
#endif

}  // namespace

ChwConverter::ChwConverter(const Normalize& norm, int channels) : norm_(norm), channels_(channels) {
  FKD_CHECK(channels == 1 || channels == 3, ConfigError,
            "to_float_chw: {} channels (expected 1 or 3)", channels);
  exact_table(norm, channels, table_);
#if defined(__x86_64__) || defined(__i386__)
  vector_ = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            avx2_matches_table(norm, channels, table_);
#endif
}

void ChwConverter::convert(const uint8_t* hwc, int h, int w, float* out) const {
  const size_t npx = size_t(h) * w;
#if defined(__x86_64__) || defined(__i386__)
  if (vector_) {
    to_float_chw_avx2(hwc, npx, channels_, norm_, table_, out);
    return;
  }
#endif
  for (int c = 0; c < channels_; ++c) {
    const float* t = table_[c];
    float* o = out + size_t(c) * npx;
    const uint8_t* p = hwc + c;
    for (size_t i = 0; i < npx; ++i) o[i] = t[p[i * channels_]];
  }
}

void to_float_chw(const uint8_t* hwc, int h, int w, int channels, const Normalize& norm,
                  float* out) {
  ChwConverter(norm, channels).convert(hwc, h, w, out);
}

}  // namespace fkd
