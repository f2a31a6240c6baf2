// resized_crop: PIL's Image.crop(box).resize(size, BILINEAR|BICUBIC), byte for byte.
//
// PIL (libImaging/Resample.c) resamples in two separable passes, horizontal then vertical,
// each rounding to uint8. Each output sample is a weighted sum of a window of inputs with
// fixed-point weights (PRECISION_BITS = 22) computed in double and normalized per output;
// the filter support widens by the scale factor when downscaling. The crop is PIL's: the
// window limits and normalization use the crop's size, and pixels outside the source are 0.
// Zero pixels add nothing to a sum, so taps that fall outside the source are dropped here
// instead of materializing the zero-filled crop.
//
// The AVX2 kernels compute the very same integer sums (32-bit multiply-adds, 8 lanes):
//  - horizontal pass: blocks of 16 source rows are transposed (byte j of row i -> T[j*16+i])
//    so that a tap weight multiplies the same input of 16 rows at once; the 16 result rows are
//    transposed back. Any scale and channel count take the same path.
//  - vertical pass: rows are contiguous, so lanes run along the row.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "fkd/error.h"
#include "fkd/image.h"
#include "image/resample.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FKD_HAVE_AVX2_KERNELS 1
#define FKD_AVX2 __attribute__((target("avx2")))
#endif

namespace fkd {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // PIL's PRECISION_BITS
constexpr int32_t kRoundHalf = 1 << (kPrecisionBits - 1);

inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

constexpr int kBlockRows = 16;  // rows per block of the AVX2 horizontal pass: two 8-lane halves

struct Bilinear {
  static constexpr double kSupport = 1.0;
  static double at(double x) {
    x = std::fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
  }
};

// Keys' cubic convolution with a = -0.5, as PIL.
struct Bicubic {
  static constexpr double kSupport = 2.0;
  static double at(double x) {
    constexpr double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
  }
};

/// The weights of one 1-D pass: output o reads inputs first[o] .. first[o]+count[o]-1
/// (source coordinates) with fixed-point weights coef[o*ksize ...]; the slots from count[o]
/// up to ksize hold 0.
struct Taps {
  int ksize = 0;
  int32_t* first = nullptr;
  int32_t* count = nullptr;
  int32_t* coef = nullptr;
  int lo = 0, hi = 0;  ///< all inputs used, [lo, hi); empty when lo >= hi
  int max_count = 0;   ///< the largest count
};

/// PIL's maximum window length for resampling in_size samples to out_size.
int taps_ksize(int in_size, int out_size, Interp interp) {
  const double scale = double(in_size) / out_size;
  const double support =
      (interp == Interp::kBilinear ? Bilinear::kSupport : Bicubic::kSupport) * std::max(scale, 1.0);
  return int(std::ceil(support)) * 2 + 1;
}

/// PIL's precompute_coeffs + normalize_coeffs_8bpc for a crop of in_size samples whose
/// sample 0 is source index `offset`. Inputs outside the source [0, src_size) read as 0, and
/// zero weights add 0, so both are dropped from the ends of each window.
/// `w` holds ksize doubles of workspace.
template <typename Filter>
void compute_taps(int in_size, int out_size, int offset, int src_size, Taps& t, double* w) {
  const double scale = double(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = Filter::kSupport * filterscale;
  const double ss = 1.0 / filterscale;
  const int valid_lo = -offset, valid_hi = src_size - offset;  // crop coordinates
  t.lo = INT_MAX;
  t.hi = INT_MIN;
  t.max_count = 0;
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int xmin = std::max(int(center - support + 0.5), 0);  // int(): truncation, as PIL
    const int xmax = std::min(int(center + support + 0.5), in_size);
    double ww = 0.0;
    for (int x = xmin; x < xmax; ++x) {
      w[x - xmin] = Filter::at((x - center + 0.5) * ss);
      ww += w[x - xmin];
    }
    int32_t* k = t.coef + size_t(o) * t.ksize;
    int lo = std::max(xmin, valid_lo), n = 0;
    for (int x = lo; x < std::min(xmax, valid_hi); ++x) {
      double v = w[x - xmin];
      if (ww != 0.0) v /= ww;
      k[n] = v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits))
                   : int32_t(0.5 + v * (1 << kPrecisionBits));
      if (n == 0 && k[0] == 0)
        ++lo;  // a leading zero weight: start one input later
      else
        ++n;
    }
    while (n > 0 && k[n - 1] == 0) --n;
    std::fill(k + n, k + t.ksize, 0);
    t.first[o] = lo + offset;
    t.count[o] = n;
    if (n > 0) {
      t.lo = std::min(t.lo, lo + offset);
      t.hi = std::max(t.hi, lo + n + offset);
      t.max_count = std::max(t.max_count, n);
    }
  }
  if (t.lo >= t.hi) t.lo = t.hi = 0;
  // Outputs without inputs point at the first input used, so that kernels which run the
  // maximum tap count (with zero weights) for every output still read inside the row.
  for (int o = 0; o < out_size; ++o) {
    if (t.count[o] == 0) t.first[o] = t.lo;
  }
}

void compute_taps(Interp interp, int in_size, int out_size, int offset, int src_size, Taps& t,
                  double* w) {
  if (interp == Interp::kBilinear)
    compute_taps<Bilinear>(in_size, out_size, offset, src_size, t, w);
  else
    compute_taps<Bicubic>(in_size, out_size, offset, src_size, t, w);
}

// ------------------------------------------------------------- portable kernels

/// One row of the horizontal pass; output xo holds source output x (mirrored when flipping).
template <int C>
void h_row_portable(const uint8_t* row, const Taps& t, int out_w, bool flip, uint8_t* out) {
  for (int xo = 0; xo < out_w; ++xo) {
    const int x = flip ? out_w - 1 - xo : xo;
    const uint8_t* p = row + size_t(t.first[x]) * C;
    const int32_t* k = t.coef + size_t(x) * t.ksize;
    int32_t acc[C];
    for (int c = 0; c < C; ++c) acc[c] = kRoundHalf;
    for (int i = 0; i < t.count[x]; ++i) {
      for (int c = 0; c < C; ++c) acc[c] += p[i * C + c] * k[i];
    }
    for (int c = 0; c < C; ++c) out[xo * C + c] = clip8(acc[c]);
  }
}

/// The crop of one row without resampling: zero outside the source, mirrored when flipping.
template <int C>
void h_row_copy(const uint8_t* row, int left, int src_w, int out_w, bool flip, uint8_t* out) {
  const int lo = std::clamp(-left, 0, out_w), hi = std::clamp(src_w - left, lo, out_w);
  const uint8_t* in = hi > lo ? row + (ptrdiff_t(left) + lo) * C : row;
  if (!flip) {
    std::memset(out, 0, size_t(lo) * C);
    std::memcpy(out + lo * C, in, size_t(hi - lo) * C);
    std::memset(out + hi * C, 0, size_t(out_w - hi) * C);
    return;
  }
  // Output xo holds crop column out_w-1-xo: the zero margins swap sides.
  std::memset(out, 0, size_t(out_w - hi) * C);
  uint8_t* o = out + size_t(out_w - 1 - lo) * C;
  for (int x = lo; x < hi; ++x, in += C, o -= C) {
    for (int c = 0; c < C; ++c) o[c] = in[c];
  }
  std::memset(out + size_t(out_w - lo) * C, 0, size_t(lo) * C);
}

/// The vertical pass: out row y sums rows first[y]-row0 ... of H. `acc` holds row_bytes ints.
void v_pass_portable(const uint8_t* H, size_t hstride, int row0, const Taps& t, int out_h,
                     int row_bytes, uint8_t* out, int32_t* acc) {
  for (int y = 0; y < out_h; ++y) {
    std::fill(acc, acc + row_bytes, kRoundHalf);
    const int32_t* k = t.coef + size_t(y) * t.ksize;
    for (int i = 0; i < t.count[y]; ++i) {
      const uint8_t* src = H + size_t(t.first[y] - row0 + i) * hstride;
      const int32_t ki = k[i];
      for (int b = 0; b < row_bytes; ++b) acc[b] += src[b] * ki;
    }
    uint8_t* o = out + size_t(y) * row_bytes;
    for (int b = 0; b < row_bytes; ++b) o[b] = clip8(acc[b]);
  }
}

// ------------------------------------------------------------- AVX2 kernels
#ifdef FKD_HAVE_AVX2_KERNELS

FKD_AVX2 inline __m256i load8_epu8_epi32(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

/// Four sums (8 lanes each) -> 32 bytes a0..a7 b0..b7 c0..c7 d0..d7, PIL's rounding and clip.
FKD_AVX2 inline __m256i finish4(__m256i a, __m256i b, __m256i c, __m256i d) {
  a = _mm256_srai_epi32(a, kPrecisionBits);
  b = _mm256_srai_epi32(b, kPrecisionBits);
  c = _mm256_srai_epi32(c, kPrecisionBits);
  d = _mm256_srai_epi32(d, kPrecisionBits);
  // Saturating packs clip to [0, 255]; the sums stay far inside int16 after the shift.
  const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/// Transposes, in each 128-bit lane, the 16x16 byte matrix whose row i is lane of v[i]:
/// afterwards v[j] holds column j. Two independent transposes, one per lane.
FKD_AVX2 inline void transpose_16x16_lanes(__m256i v[16]) {
  __m256i t[16];
  for (int i = 0; i < 16; i += 2) {  // rows i, i+1 interleaved: byte pairs
    t[i] = _mm256_unpacklo_epi8(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi8(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 rows: columns in 4-byte groups
    v[i] = _mm256_unpacklo_epi16(t[i], t[i + 2]);
    v[i + 1] = _mm256_unpackhi_epi16(t[i], t[i + 2]);
    v[i + 2] = _mm256_unpacklo_epi16(t[i + 1], t[i + 3]);
    v[i + 3] = _mm256_unpackhi_epi16(t[i + 1], t[i + 3]);
  }
  for (int g = 0; g < 16; g += 8) {  // 8 rows: columns in 8-byte groups
    for (int m = 0; m < 4; ++m) {
      t[g + 2 * m] = _mm256_unpacklo_epi32(v[g + m], v[g + 4 + m]);
      t[g + 2 * m + 1] = _mm256_unpackhi_epi32(v[g + m], v[g + 4 + m]);
    }
  }
  for (int n = 0; n < 8; ++n) {  // 16 rows: whole columns
    v[2 * n] = _mm256_unpacklo_epi64(t[n], t[8 + n]);
    v[2 * n + 1] = _mm256_unpackhi_epi64(t[n], t[8 + n]);
  }
}

/// dst[j*16 + i] = rows[i][j] for j < 32, i < 16.
FKD_AVX2 inline void transpose_rows_16x32(const uint8_t* const rows[16], uint8_t* dst) {
  __m256i v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i]));
  transpose_16x16_lanes(v);  // v[j]: column j (low lane), column 16+j (high lane)
  auto* out = reinterpret_cast<__m256i*>(dst);
  for (int j = 0; j < 16; j += 2) {
    _mm256_storeu_si256(out + j / 2, _mm256_permute2x128_si256(v[j], v[j + 1], 0x20));
    _mm256_storeu_si256(out + 8 + j / 2, _mm256_permute2x128_si256(v[j], v[j + 1], 0x31));
  }
}

/// The inverse: rows[i][j] = src[j*16 + i] for j < 32 and the first n rows.
FKD_AVX2 inline void untranspose_rows_16x32(const uint8_t* src, uint8_t* const rows[16], int n) {
  __m256i v[16];
  for (int j = 0; j < 16; ++j) {
    v[j] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(src + (16 + j) * 16),
                               reinterpret_cast<const __m128i*>(src + j * 16));
  }
  transpose_16x16_lanes(v);  // v[i]: row i, columns 0-15 and 16-31
  for (int i = 0; i < n; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows[i]), v[i]);
}

/// One output pixel of a 16-row block: sums `taps` weights k over the inputs at T + p (rows
/// contiguous, channels C*16 bytes apart per input) and stores its C columns of 16 bytes,
/// rounded and clipped, at out. N > 0 fixes the tap count at compile time (unrolled loop).
template <int C, int N>
FKD_AVX2 inline void h_pixel(const uint8_t* p, const int32_t* k, int taps, uint8_t* out) {
  const int n = N > 0 ? N : taps;
  __m256i s[C][2];
  for (int c = 0; c < C; ++c) s[c][0] = s[c][1] = _mm256_set1_epi32(kRoundHalf);
  for (int i = 0; i < n; ++i, p += C * kBlockRows) {
    const __m256i kv = _mm256_set1_epi32(k[i]);
    for (int c = 0; c < C; ++c) {
      for (int h = 0; h < 2; ++h) {
        const __m256i px = load8_epu8_epi32(p + c * kBlockRows + h * 8);
        s[c][h] = _mm256_add_epi32(s[c][h], _mm256_mullo_epi32(px, kv));
      }
    }
  }
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int c = 0; c < C; ++c) {
    // rows 0-7 and 8-15 -> 16 bytes; the saturating packs clip to [0, 255].
    const __m256i w = _mm256_packus_epi32(_mm256_srai_epi32(s[c][0], kPrecisionBits),
                                          _mm256_srai_epi32(s[c][1], kPrecisionBits));
    const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w, w), order);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c * kBlockRows), _mm256_castsi256_si128(b));
  }
}

/// All output pixels of a 16-row block; output xo (mirrored from x when flipping) goes to
/// R[(xo*C + c)*16 + row].
template <int C, int N>
FKD_AVX2 void h_block(const uint8_t* T, const Taps& t, int out_w, bool flip, uint8_t* R) {
  for (int xo = 0; xo < out_w; ++xo) {
    const int x = flip ? out_w - 1 - xo : xo;
    h_pixel<C, N>(T + size_t(t.first[x] - t.lo) * C * kBlockRows, t.coef + size_t(x) * t.ksize,
                  t.max_count, R + size_t(xo) * C * kBlockRows);
  }
}

/// Horizontal pass over source rows [r0, r1) into H (row stride hstride, a multiple of 32).
/// Weights past each count must be zero.
/// T: (round_up(row bytes used, 32) + max_count * C) * 16 bytes; R: hstride * 16 bytes.
template <int C>
FKD_AVX2 void h_pass_avx2(const Image& src, int r0, int r1, const Taps& t, int out_w, bool flip,
                          uint8_t* H, size_t hstride, uint8_t* T, uint8_t* R) {
  const int col0 = t.lo;
  const int L = (t.hi - t.lo) * C;  // bytes of each source row that the taps read
  for (int r = r0; r < r1; r += kBlockRows) {
    const int nr = std::min(kBlockRows, r1 - r);
    // Short blocks repeat their last row; those results are not stored.
    const uint8_t* rows[kBlockRows];
    for (int i = 0; i < kBlockRows; ++i)
      rows[i] = src.row(r + std::min(i, nr - 1)) + size_t(col0) * C;
    int j = 0;
    for (; j + 32 <= L; j += 32) {
      const uint8_t* at[kBlockRows];
      for (int i = 0; i < kBlockRows; ++i) at[i] = rows[i] + j;
      transpose_rows_16x32(at, T + size_t(j) * kBlockRows);
    }
    if (j < L) {  // the rows end inside this 32-byte chunk: never read past them
      alignas(32) uint8_t tail[kBlockRows][32] = {};
      const uint8_t* at[kBlockRows];
      for (int i = 0; i < kBlockRows; ++i) {
        std::memcpy(tail[i], rows[i] + j, size_t(L - j));
        at[i] = tail[i];
      }
      transpose_rows_16x32(at, T + size_t(j) * kBlockRows);
    }

    // Every pixel runs max_count taps (short windows are padded with zero weights): the loop
    // has the same shape for every pixel, and common counts are unrolled.
    switch (t.max_count) {
      case 2:
        h_block<C, 2>(T, t, out_w, flip, R);
        break;
      case 3:
        h_block<C, 3>(T, t, out_w, flip, R);
        break;
      case 4:
        h_block<C, 4>(T, t, out_w, flip, R);
        break;
      case 5:
        h_block<C, 5>(T, t, out_w, flip, R);
        break;
      case 6:
        h_block<C, 6>(T, t, out_w, flip, R);
        break;
      default:
        h_block<C, 0>(T, t, out_w, flip, R);
        break;
    }

    uint8_t* dst[kBlockRows];
    for (int i = 0; i < kBlockRows; ++i)
      dst[i] = H + size_t(r - r0 + std::min(i, nr - 1)) * hstride;
    for (size_t b = 0; b < hstride; b += 32) {
      uint8_t* at[kBlockRows];
      for (int i = 0; i < kBlockRows; ++i) at[i] = dst[i] + b;
      untranspose_rows_16x32(R + b * kBlockRows, at, nr);
    }
  }
}

/// Vertical pass, as v_pass_portable. H rows are readable up to a multiple of 32 bytes.
FKD_AVX2 void v_pass_avx2(const uint8_t* H, size_t hstride, int row0, const Taps& t, int out_h,
                          int row_bytes, uint8_t* out) {
  const __m256i half = _mm256_set1_epi32(kRoundHalf);
  for (int y = 0; y < out_h; ++y) {
    const int n = t.count[y];
    const int32_t* k = t.coef + size_t(y) * t.ksize;
    const uint8_t* base = n > 0 ? H + size_t(t.first[y] - row0) * hstride : H;
    uint8_t* o = out + size_t(y) * row_bytes;
    for (int b = 0; b < row_bytes; b += 32) {
      __m256i a0 = half, a1 = half, a2 = half, a3 = half;
      const uint8_t* p = base + b;
      for (int i = 0; i < n; ++i, p += hstride) {
        const __m256i kv = _mm256_set1_epi32(k[i]);
        a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(load8_epu8_epi32(p), kv));
        a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(load8_epu8_epi32(p + 8), kv));
        a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(load8_epu8_epi32(p + 16), kv));
        a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(load8_epu8_epi32(p + 24), kv));
      }
      const __m256i v = finish4(a0, a1, a2, a3);
      if (b + 32 <= row_bytes) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + b), v);
      } else {
        alignas(32) uint8_t tail[32];
        _mm256_store_si256(reinterpret_cast<__m256i*>(tail), v);
        std::memcpy(o + b, tail, size_t(row_bytes - b));
      }
    }
  }
}

#endif  // FKD_HAVE_AVX2_KERNELS

/// Carves 64-byte aligned blocks out of the caller's scratch vector (which only grows).
class ScratchLayout {
 public:
  size_t add(size_t bytes) {
    const size_t at = total_;
    total_ += (bytes + 63) / 64 * 64;
    return at;
  }
  uint8_t* base(std::vector<uint8_t>& scratch) const {
    if (scratch.size() < total_ + 64) scratch.resize(total_ + 64);
    const auto addr = reinterpret_cast<uintptr_t>(scratch.data());
    return scratch.data() + ((64 - addr % 64) % 64);
  }

 private:
  size_t total_ = 0;
};

template <int C>
void resized_crop_impl(bool avx2, const Image& src, const PixelBox& box, bool flip, int out_h,
                       int out_w, Interp interp, uint8_t* out, std::vector<uint8_t>& scratch) {
  const bool need_h = box.width != out_w;
  const bool need_v = box.height != out_h;
  const int row_bytes = out_w * C;
  // H rows are padded so that the AVX2 kernels move whole 32-byte chunks.
  const size_t hstride = size_t(round_up(row_bytes, 32));
  const int max_rows =
      std::max(0, std::min(box.top + box.height, src.height) - std::max(box.top, 0));
  const int ks_h = need_h ? taps_ksize(box.width, out_w, interp) : 0;
  const int ks_v = need_v ? taps_ksize(box.height, out_h, interp) : 0;
  const int max_cols =
      std::max(0, std::min(box.left + box.width, src.width) - std::max(box.left, 0));

  ScratchLayout layout;
  const size_t o_hfirst = layout.add(sizeof(int32_t) * out_w);
  const size_t o_hcount = layout.add(sizeof(int32_t) * out_w);
  const size_t o_hcoef = layout.add(sizeof(int32_t) * size_t(out_w) * ks_h);
  const size_t o_vfirst = layout.add(sizeof(int32_t) * out_h);
  const size_t o_vcount = layout.add(sizeof(int32_t) * out_h);
  const size_t o_vcoef = layout.add(sizeof(int32_t) * size_t(out_h) * ks_v);
  const size_t o_w = layout.add(sizeof(double) * std::max(ks_h, ks_v));
  const size_t o_h = layout.add(hstride * std::max(max_rows, 1));
  const size_t o_t =
      avx2 ? layout.add(size_t(round_up(max_cols * C, 32) + ks_h * C) * kBlockRows) : 0;
  const size_t o_r = avx2 ? layout.add(hstride * kBlockRows) : 0;
  const size_t o_acc = avx2 ? 0 : layout.add(sizeof(int32_t) * row_bytes);
  uint8_t* base = layout.base(scratch);
  auto ints = [&](size_t off) { return reinterpret_cast<int32_t*>(base + off); };
  double* w = reinterpret_cast<double*>(base + o_w);
  uint8_t* H = base + o_h;

  Taps th, tv;
  if (need_h) {
    th = Taps{ks_h, ints(o_hfirst), ints(o_hcount), ints(o_hcoef)};
    compute_taps(interp, box.width, out_w, box.left, src.width, th, w);
  }
  // Source rows the horizontal pass produces, [r0, r1).
  int r0 = std::max(box.top, 0), r1 = std::min(box.top + box.height, src.height);
  if (need_v) {
    tv = Taps{ks_v, ints(o_vfirst), ints(o_vcount), ints(o_vcoef)};
    compute_taps(interp, box.height, out_h, box.top, src.height, tv, w);
    r0 = tv.lo;
    r1 = tv.hi;
  }
  r1 = std::max(r0, r1);

  if (need_h) {
#ifdef FKD_HAVE_AVX2_KERNELS
    if (avx2) {
      h_pass_avx2<C>(src, r0, r1, th, out_w, flip, H, hstride, base + o_t, base + o_r);
    } else
#endif
    {
      for (int r = r0; r < r1; ++r)
        h_row_portable<C>(src.row(r), th, out_w, flip, H + (r - r0) * hstride);
    }
  } else {
    for (int r = r0; r < r1; ++r) {
      h_row_copy<C>(src.row(r), box.left, src.width, out_w, flip, H + (r - r0) * hstride);
    }
  }

  if (need_v) {
#ifdef FKD_HAVE_AVX2_KERNELS
    if (avx2) {
      v_pass_avx2(H, hstride, r0, tv, out_h, row_bytes, out);
      return;
    }
#endif
    v_pass_portable(H, hstride, r0, tv, out_h, row_bytes, out, ints(o_acc));
    return;
  }
  // No vertical resampling: output row y is crop row y, zero outside the source.
  for (int y = 0; y < out_h; ++y) {
    const int r = box.top + y;
    uint8_t* o = out + size_t(y) * row_bytes;
    if (r >= r0 && r < r1)
      std::memcpy(o, H + (r - r0) * hstride, size_t(row_bytes));
    else
      std::memset(o, 0, size_t(row_bytes));
  }
}

}  // namespace

namespace detail {

bool avx2_available() {
#ifdef FKD_HAVE_AVX2_KERNELS
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

void resized_crop_with(Kernels kernels, const Image& src, const PixelBox& box, bool flip, int out_h,
                       int out_w, Interp interp, uint8_t* out, std::vector<uint8_t>& scratch) {
  FKD_CHECK(src.channels == 1 || src.channels == 3, ConfigError,
            "resized_crop: image has {} channels (expected 1 or 3)", src.channels);
  FKD_CHECK(src.height > 0 && src.width > 0 &&
                src.pixels.size() == size_t(src.height) * src.width * src.channels,
            ConfigError, "resized_crop: image of {}x{}x{} holds {} bytes", src.height, src.width,
            src.channels, src.pixels.size());
  FKD_CHECK(box.width > 0 && box.height > 0, ConfigError, "resized_crop: empty crop box {}x{}",
            box.width, box.height);
  FKD_CHECK(out_h > 0 && out_w > 0, ConfigError, "resized_crop: empty output size {}x{}", out_h,
            out_w);
  bool avx2 = kernels == Kernels::kAvx2 || (kernels == Kernels::kBest && avx2_available());
  FKD_CHECK(!avx2 || avx2_available(), ConfigError, "resized_crop: this CPU has no AVX2");
  if (src.channels == 1) {
    resized_crop_impl<1>(avx2, src, box, flip, out_h, out_w, interp, out, scratch);
  } else {
    resized_crop_impl<3>(avx2, src, box, flip, out_h, out_w, interp, out, scratch);
  }
}

}  // namespace detail

void resized_crop(const Image& src, const PixelBox& box, bool flip, int out_h, int out_w,
                  Interp interp, uint8_t* out, std::vector<uint8_t>& scratch) {
  detail::resized_crop_with(detail::Kernels::kBest, src, box, flip, out_h, out_w, interp, out,
                            scratch);
}

}  // namespace fkd
