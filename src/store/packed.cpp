// The packed record codec (docs/label-store.md, "Packed record"): each plane of a record
// (one rank of positions or values over all crops) is bit-packed at one width in four
// interleaved 32-bit lanes, and the few values that do not fit are patched from a short
// exception list. Decoding is shifts and masks on whole vectors, with no entropy decoder
// and no per-record tables to build.
#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
// FKD_PACKED_PORTABLE builds the portable decoder (as on CPUs without SSE2) on x86 too.
#if defined(__SSE2__) && !defined(FKD_PACKED_PORTABLE)
#define FKD_PACKED_SSE2 1
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include <fmt/format.h>

#include "fkd/error.h"
#include "store/bytes.h"
#include "store/record.h"

namespace fkd::store {

namespace {

int bits_of(uint32_t x) { return x == 0 ? 0 : 32 - __builtin_clz(x); }

size_t varint_size(uint32_t v) {
  size_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

/// Bytes of `count` values of `w` bits packed LSB-first.
size_t packed_bytes(size_t count, int w) { return size_t((uint64_t(count) * uint64_t(w) + 7) / 8); }

/// Where one plane's N values of width w sit: value i in lane i % 4 at slot i / 4, each
/// lane a little-endian bit stream of 32-bit words stored row by row (lane 0's word, then
/// lanes 1-3's); of the last row, only the bytes that hold bits are stored.
struct Lanes {
  size_t slots = 0;       ///< values per lane, ceil(N / 4)
  size_t rows = 0;        ///< words per lane, ceil(slots * w / 32)
  size_t tail_bytes = 0;  ///< bytes of each lane's last word that are stored (1-4)
  size_t bytes() const { return rows == 0 ? 0 : 16 * (rows - 1) + 4 * tail_bytes; }
};

Lanes lanes_of(size_t N, int w) {
  Lanes l;
  l.slots = (N + 3) / 4;
  const uint64_t bits = uint64_t(l.slots) * uint64_t(w);
  l.rows = size_t((bits + 31) / 32);
  if (l.rows > 0) l.tail_bytes = size_t((bits - 32 * (l.rows - 1) + 7) / 8);
  return l;
}

// --- encoding ------------------------------------------------------------------------

void put_bits(std::vector<uint8_t>& out, const uint32_t* v, size_t count, int w) {
  const size_t at = out.size();
  out.resize(at + packed_bytes(count, w), 0);
  uint8_t* p = out.data() + at;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t bit = uint64_t(i) * uint64_t(w);
    for (int b = 0; b < w; ++b) {
      if ((v[i] >> b) & 1u) p[(bit + uint64_t(b)) >> 3] |= uint8_t(1u << ((bit + uint64_t(b)) & 7));
    }
  }
}

/// One plane: the width that makes it smallest, the lanes, then the exceptions.
void put_plane(std::vector<uint8_t>& out, const uint32_t* v, size_t N) {
  std::array<size_t, 33> by_length{};
  for (size_t i = 0; i < N; ++i) ++by_length[size_t(bits_of(v[i]))];
  int top = 32;
  while (top > 0 && by_length[size_t(top)] == 0) --top;
  const int index_bits = bits_of(uint32_t(N - 1));
  int w = top;
  size_t best = SIZE_MAX, longer = 0;
  for (int c = top; c >= 0; --c) {
    if (c < top) longer += by_length[size_t(c) + 1];
    size_t cost = lanes_of(N, c).bytes() + varint_size(uint32_t(longer));
    if (longer > 0) cost += 1 + packed_bytes(longer, index_bits) + packed_bytes(longer, top - c);
    if (cost < best) best = cost, w = c;
  }
  const uint32_t mask = w == 32 ? 0xffffffffu : (1u << w) - 1u;
  std::vector<uint32_t> at, high;
  for (size_t i = 0; i < N; ++i) {
    if ((v[i] & ~mask) != 0) at.push_back(uint32_t(i)), high.push_back(v[i] >> w);
  }
  out.push_back(uint8_t(w));
  put_varint(out, uint32_t(at.size()));
  const Lanes l = lanes_of(N, w);
  std::vector<uint32_t> words(4 * l.rows, 0);  // [row][lane]
  for (size_t i = 0; i < N && w > 0; ++i) {
    const uint64_t x = v[i] & mask, bit = uint64_t(i >> 2) * uint64_t(w);
    const size_t row = size_t(bit >> 5), lane = i & 3;
    const unsigned off = unsigned(bit & 31);
    words[row * 4 + lane] |= uint32_t(x << off);
    if (off + unsigned(w) > 32) words[(row + 1) * 4 + lane] |= uint32_t(x >> (32 - off));
  }
  for (size_t row = 0; row < l.rows; ++row) {
    for (size_t lane = 0; lane < 4; ++lane) {
      const size_t n = row + 1 < l.rows ? 4 : l.tail_bytes;
      for (size_t b = 0; b < n; ++b) out.push_back(uint8_t(words[row * 4 + lane] >> (8 * b)));
    }
  }
  if (!at.empty()) {
    out.push_back(uint8_t(top - w));
    put_bits(out, at.data(), at.size(), index_bits);
    put_bits(out, high.data(), high.size(), top - w);
  }
}

uint32_t one_code(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return 0x3f800000u;
    case Precision::kFp16:
      return 0x3c00u;
    case Precision::kU8:
      return 255u;
  }
  return 0;
}

// --- decoding ------------------------------------------------------------------------

/// Unpacks the lanes of `slots` values per lane from `rows` (which must hold whole groups
/// of 32 slots: round_up(slots, 32) / 32 * W rows, zero past the stored ones) into
/// out[0, 4 * round_up(slots, 32)), in value order.
#if defined(FKD_PACKED_SSE2)
template <int W, int K>
inline void unpack_slot(const __m128i* in, uint32_t* out, __m128i mask) {
  constexpr int kBit = K * W, kWord = kBit / 32, kOff = kBit % 32;
  __m128i v = _mm_srli_epi32(_mm_loadu_si128(in + kWord), kOff);
  if constexpr (kOff + W > 32) {
    v = _mm_or_si128(v, _mm_slli_epi32(_mm_loadu_si128(in + kWord + 1), 32 - kOff));
  }
  if constexpr (W < 32) v = _mm_and_si128(v, mask);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * K), v);
}

template <int W, int... K>
inline void unpack_group(const __m128i* in, uint32_t* out, __m128i mask,
                         std::integer_sequence<int, K...>) {
  (unpack_slot<W, K>(in, out, mask), ...);
}

template <int W>
void unpack_lanes(const uint8_t* rows, uint32_t* out, size_t slots) {
  if constexpr (W == 0) {
    std::memset(out, 0, sizeof(uint32_t) * 4 * ((slots + 31) / 32 * 32));
  } else {
    const __m128i mask = _mm_set1_epi32(int32_t(W == 32 ? 0xffffffffu : (1u << (W % 32)) - 1u));
    const __m128i* in = reinterpret_cast<const __m128i*>(rows);
    for (size_t s = 0; s < slots; s += 32, in += W, out += 128) {
      unpack_group<W>(in, out, mask, std::make_integer_sequence<int, 32>{});
    }
  }
}
#else
template <int W>
void unpack_lanes(const uint8_t* rows, uint32_t* out, size_t slots) {
  const size_t n = (slots + 31) / 32 * 32;
  if (W == 0) {
    std::memset(out, 0, sizeof(uint32_t) * 4 * n);
    return;
  }
  const uint32_t mask = W == 32 ? 0xffffffffu : (1u << (W % 32)) - 1u;
  for (size_t s = 0; s < n; ++s) {
    const uint64_t bit = uint64_t(s) * W;
    const size_t row = size_t(bit >> 5);
    const unsigned off = unsigned(bit & 31);
    for (size_t lane = 0; lane < 4; ++lane) {
      uint64_t x = load_u32(rows + 16 * row + 4 * lane);
      if (off + W > 32) x |= uint64_t(load_u32(rows + 16 * (row + 1) + 4 * lane)) << 32;
      out[4 * s + lane] = uint32_t(x >> off) & mask;
    }
  }
}
#endif

using UnpackFn = void (*)(const uint8_t*, uint32_t*, size_t);
template <int... W>
constexpr std::array<UnpackFn, sizeof...(W)> unpack_table(std::integer_sequence<int, W...>) {
  return {&unpack_lanes<W>...};
}
constexpr auto kUnpack = unpack_table(std::make_integer_sequence<int, 33>{});

/// Value i of `w` bits of an LSB-first packed array; `size` bytes from `p` may be read
/// (at least the array's; the caller checks that value i lies within the array).
inline uint32_t bits_at(const uint8_t* p, size_t size, size_t i, int w) {
  const uint64_t bit = uint64_t(i) * uint64_t(w);
  const size_t first = size_t(bit >> 3);
  uint64_t x = 0;
  if (size - first >= 8) {
    x = load_u64(p + first);
  } else {
    for (size_t b = 0; first + b < size; ++b) x |= uint64_t(p[first + b]) << (8 * b);
  }
  return uint32_t(x >> (bit & 7)) & (w == 32 ? 0xffffffffu : (1u << w) - 1u);
}

/// Per-thread buffers of the decoder.
struct Scratch {
  std::vector<uint8_t> rows;
  std::vector<uint32_t> planes, sorted, insert;
  std::vector<int32_t> dict, order;
  std::vector<uint8_t> seen;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

/// Reads one plane of N values of at most `max_bits` bits into out[0, N); the values after
/// those, up to the next multiple of 128, are overwritten too.
void read_plane(RecordCursor& r, size_t N, const char* what, uint32_t* out, Scratch& s,
                int max_bits) {
  const size_t at = r.pos;
  const int w = *r.take(1, what);
  FKD_CHECK(w <= max_bits, FormatError, "{}: {} at record offset {}: width {} is more than {}",
            r.w.str(), what, at, w, max_bits);
  const uint32_t E = r.varint(what);
  FKD_CHECK(E <= N, FormatError, "{}: {} at record offset {}: {} exceptions for {} values",
            r.w.str(), what, at, E, N);
  const Lanes l = lanes_of(N, w);
  const uint8_t* stored = r.take(l.bytes(), what);
  const size_t groups = (l.slots + 31) / 32;
  const size_t rows = std::max(groups * size_t(w), l.rows);
  if (s.rows.size() < 16 * rows) s.rows.resize(16 * rows);
  uint8_t* buf = s.rows.data();
  if (l.rows > 0) {
    std::memcpy(buf, stored, 16 * (l.rows - 1));
    uint8_t* last = buf + 16 * (l.rows - 1);
    std::memset(last, 0, 16 * (rows - l.rows + 1));
    for (size_t lane = 0; lane < 4; ++lane) {
      std::memcpy(last + 4 * lane, stored + 16 * (l.rows - 1) + lane * l.tail_bytes, l.tail_bytes);
    }
  }
  kUnpack[size_t(w)](buf, out, l.slots);
  if (E == 0) return;
  const int high_bits = *r.take(1, what);
  FKD_CHECK(high_bits >= 1 && w + high_bits <= max_bits, FormatError,
            "{}: {} at record offset {}: exception width {} is not in [1, {}]", r.w.str(), what, at,
            high_bits, max_bits - w);
  const int index_bits = bits_of(uint32_t(N - 1));
  const size_t index_size = packed_bytes(E, index_bits), high_size = packed_bytes(E, high_bits);
  const uint8_t* index = r.take(index_size, what);
  const uint8_t* high = r.take(high_size, what);
  // bits_at may read past an array into the rest of the record (not past its end).
  const size_t index_room = index_size + high_size + (r.size - r.pos),
               high_room = high_size + (r.size - r.pos);
  uint32_t prev = 0;
  for (uint32_t e = 0; e < E; ++e) {
    const uint32_t i = bits_at(index, index_room, e, index_bits);
    FKD_CHECK(i < N && (e == 0 || i > prev), FormatError,
              "{}: {} at record offset {}: exception {} at value {} is out of order or past {}",
              r.w.str(), what, at, e, i, N);
    out[i] |= bits_at(high, high_room, e, high_bits) << w;
    prev = i;
  }
}

/// Distance between decoded planes: N values, rounded to whole lanes. The unpacker writes
/// whole groups of 128 values, so a plane's last group runs into the next plane (unpacked
/// after it) or into kPlaneSlack values after the last.
size_t plane_stride(size_t N) { return (N + 3) / 4 * 4; }
constexpr size_t kPlaneSlack = 128;

/// The index of each class id into the dictionary ordered by count, from the stored rank
/// values q: p = q plus the number of excluded positions (those of the ranks above, at most
/// kExcludedRanks of them) at or below it, taken in ascending order.
FKD_VECTOR_CLONES
void undo_exclusion(uint32_t* planes, size_t stride, size_t N, size_t ni, Scratch& s) {
  const size_t kept = std::min<size_t>(ni, kExcludedRanks);
  if (s.sorted.size() < kept * N) s.sorted.resize(kept * N);
  if (s.insert.size() < N) s.insert.resize(N);
  uint32_t* sorted = s.sorted.data();  // [j][n]: the positions of ranks 0..r-1, ascending
  for (size_t r = 0; r < ni; ++r) {
    uint32_t* __restrict q = planes + r * stride;
    const size_t ex = std::min(r, kExcludedRanks);
    for (size_t j = 0; j < ex; ++j) {
      const uint32_t* __restrict u = sorted + j * N;
      for (size_t n = 0; n < N; ++n) q[n] += uint32_t(int32_t(q[n]) >= int32_t(u[n]));
    }
    if (r >= kept || r + 1 == ni) continue;
    uint32_t* __restrict x = s.insert.data();
    std::memcpy(x, q, N * sizeof(uint32_t));
    for (size_t j = 0; j < r; ++j) {
      uint32_t* __restrict u = sorted + j * N;
      for (size_t n = 0; n < N; ++n) {
        const int32_t a = int32_t(u[n]), b = int32_t(x[n]);
        u[n] = uint32_t(a < b ? a : b);
        x[n] = uint32_t(a < b ? b : a);
      }
    }
    std::memcpy(sorted + r * N, x, N * sizeof(uint32_t));
  }
}

/// True when some v[i] >= bound (a flag, not a maximum: it vectorizes without SSE4.1).
FKD_VECTOR_CLONES
bool any_at_least(const uint32_t* v, size_t n, uint32_t bound) {
  uint32_t any = 0;
  for (size_t i = 0; i < n; ++i) any |= uint32_t(v[i] >= bound);
  return any != 0;
}

uint32_t max_of(const uint32_t* v, size_t n) { return n == 0 ? 0 : *std::max_element(v, v + n); }

/// out[n * K + r] = planes[r * stride + n] for 32-bit elements: the crops' rows from
/// rank-major planes, four ranks of four crops at a time through a 4x4 transpose.
template <int K>
void interleave_fixed(const uint32_t* __restrict planes, size_t stride, size_t N,
                      uint32_t* __restrict out) {
  size_t n = 0;
#if defined(FKD_PACKED_SSE2)
  for (; n + 4 <= N; n += 4) {
    for (int r = 0; r + 4 <= K; r += 4) {
      const uint32_t* p = planes + size_t(r) * stride + n;
      __m128 a = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      __m128 b = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + stride)));
      __m128 c =
          _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * stride)));
      __m128 d =
          _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 3 * stride)));
      _MM_TRANSPOSE4_PS(a, b, c, d);
      float* o = reinterpret_cast<float*>(out + n * K + size_t(r));
      _mm_storeu_ps(o, a);
      _mm_storeu_ps(o + K, b);
      _mm_storeu_ps(o + 2 * K, c);
      _mm_storeu_ps(o + 3 * K, d);
    }
    for (int r = K / 4 * 4; r < K; ++r) {
      for (size_t j = 0; j < 4; ++j)
        out[(n + j) * K + size_t(r)] = planes[size_t(r) * stride + n + j];
    }
  }
#endif
  for (; n < N; ++n) {
    for (int r = 0; r < K; ++r) out[n * K + size_t(r)] = planes[size_t(r) * stride + n];
  }
}

void interleave(const uint32_t* planes, size_t stride, size_t N, size_t K, uint32_t* out) {
  switch (K) {
    case 1:
      return std::memcpy(out, planes, N * sizeof(uint32_t)), void();
    case 2:
      return interleave_fixed<2>(planes, stride, N, out);
    case 3:
      return interleave_fixed<3>(planes, stride, N, out);
    case 4:
      return interleave_fixed<4>(planes, stride, N, out);
    case 5:
      return interleave_fixed<5>(planes, stride, N, out);
    case 8:
      return interleave_fixed<8>(planes, stride, N, out);
    case 10:
      return interleave_fixed<10>(planes, stride, N, out);
    default:
      for (size_t n = 0; n < N; ++n)
        for (size_t r = 0; r < K; ++r) out[n * K + r] = planes[r * stride + n];
  }
}

/// out[n * K + r] = ids[planes[r * stride + n]]: class ids in the crops' rows.
template <int K>
void lookup_fixed(const uint32_t* __restrict planes, size_t stride, size_t N,
                  const int32_t* __restrict ids, int32_t* __restrict out) {
  for (size_t n = 0; n < N; ++n, out += K) {
    for (int r = 0; r < K; ++r) out[r] = ids[planes[size_t(r) * stride + n]];
  }
}

void lookup(const uint32_t* planes, size_t stride, size_t N, size_t K, const int32_t* ids,
            int32_t* out) {
  switch (K) {
    case 1:
      return lookup_fixed<1>(planes, stride, N, ids, out);
    case 2:
      return lookup_fixed<2>(planes, stride, N, ids, out);
    case 3:
      return lookup_fixed<3>(planes, stride, N, ids, out);
    case 4:
      return lookup_fixed<4>(planes, stride, N, ids, out);
    case 5:
      return lookup_fixed<5>(planes, stride, N, ids, out);
    case 8:
      return lookup_fixed<8>(planes, stride, N, ids, out);
    case 10:
      return lookup_fixed<10>(planes, stride, N, ids, out);
    default:
      for (size_t n = 0; n < N; ++n)
        for (size_t r = 0; r < K; ++r) out[n * K + r] = ids[planes[r * stride + n]];
  }
}

/// code[n] -= t[n] for one rank of values; returns nonzero when some t[n] > code[n] (the
/// value would be negative: values must descend from at most 1).
FKD_VECTOR_CLONES
uint32_t subtract_rank(uint32_t* __restrict code, const uint32_t* __restrict t, size_t N) {
  uint32_t bad = 0;
  for (size_t n = 0; n < N; ++n) {
    bad |= uint32_t(t[n] > code[n]);
    code[n] -= t[n];
  }
  return bad;
}

}  // namespace

bool packable(const RecordFormat& f) { return f.label_type != LabelType::kFull; }

bool encode_packed_record(const RecordFormat& f, const ImageLabels& l, std::vector<uint8_t>& out) {
  const size_t N = f.crops_per_image, ni = size_t(f.n_idx()), nv = size_t(f.n_val());
  if (!packable(f) || N == 0) return false;
  // Values must descend within each crop (the planes hold differences to the rank above).
  std::vector<uint32_t> codes(N * nv);
  for (size_t i = 0; i < N * nv; ++i) codes[i] = value_code(l.values[i], f.precision);
  for (size_t n = 0; n < N; ++n) {
    for (size_t r = 1; r < nv; ++r) {
      if (codes[n * nv + r] > codes[n * nv + r - 1]) return false;
    }
  }
  out.clear();
  put_record_header(out, f, l);
  std::vector<uint32_t> plane(N);
  if (ni > 0) {
    // Dictionary as in "Record", then its order by descending count (ties: lower id first),
    // packed at bits_of(D - 1) bits each.
    std::vector<int32_t> dict;
    put_dictionary(out, l, dict);
    const size_t D = dict.size();
    std::vector<uint32_t> pos(N * ni), count(D, 0);
    for (size_t i = 0; i < N * ni; ++i) {
      pos[i] = uint32_t(std::lower_bound(dict.begin(), dict.end(), l.indices[i]) - dict.begin());
      ++count[pos[i]];
    }
    std::vector<uint32_t> order(D);
    for (size_t i = 0; i < D; ++i) order[i] = uint32_t(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return count[a] > count[b]; });
    put_bits(out, order.data(), D, bits_of(uint32_t(D - 1)));
    std::vector<uint32_t> rank_of(D);
    for (size_t i = 0; i < D; ++i) rank_of[order[i]] = uint32_t(i);
    for (uint32_t& p : pos) p = rank_of[p];
    for (size_t r = 0; r < ni; ++r) {
      for (size_t n = 0; n < N; ++n) {
        const uint32_t p = pos[n * ni + r];
        uint32_t below = 0;
        for (size_t j = 0; j < std::min(r, kExcludedRanks); ++j)
          below += uint32_t(pos[n * ni + j] < p);
        plane[n] = p - below;
      }
      put_plane(out, plane.data(), N);
    }
  }
  const uint32_t one = one_code(f.precision);
  for (size_t r = 0; r < nv; ++r) {
    for (size_t n = 0; n < N; ++n) {
      plane[n] = (r == 0 ? one : codes[n * nv + r - 1]) - codes[n * nv + r];
    }
    put_plane(out, plane.data(), N);
  }
  return out.size() <= f.max_raw_size();
}

void decode_packed_record(const RecordFormat& f, const uint8_t* data, size_t size, ImageLabels& out,
                          const Where& w) {
  const size_t N = f.crops_per_image, ni = size_t(f.n_idx()), nv = size_t(f.n_val());
  FKD_CHECK(packable(f), FormatError, "{}: a packed record, but {} labels are never packed",
            w.str(), label_type_name(f.label_type));
  RecordCursor r{data, size, 0, w};
  read_record_header(r, f, out);
  Scratch& s = scratch();
  const size_t stride = plane_stride(N);
  const size_t planes = std::max(ni, nv);
  if (s.planes.size() < planes * stride + kPlaneSlack)
    s.planes.resize(planes * stride + kPlaneSlack);
  out.indices.resize(N * ni);
  if (ni > 0) {
    const uint32_t D = read_dictionary(r, f, s.dict, 0);
    if (s.order.size() < D) s.order.resize(D);
    if (s.seen.size() < D) s.seen.resize(D);
    const int order_bits = bits_of(D - 1);
    const size_t order_size = packed_bytes(D, order_bits);
    const uint8_t* order = r.take(order_size, "dictionary order");
    std::fill(s.seen.begin(), s.seen.begin() + D, uint8_t(0));
    for (uint32_t i = 0; i < D; ++i) {
      const uint32_t o = bits_at(order, order_size, i, order_bits);
      FKD_CHECK(o < D && !s.seen[o], FormatError,
                "{}: dictionary order entry {}: {} is past {} entries or repeated", w.str(), i, o,
                D);
      s.seen[o] = 1;
      s.order[i] = s.dict[o];
    }
    // A stored value is at most the position it encodes, so no plane needs more bits than
    // positions below D: after that check, undoing the exclusion cannot overflow.
    uint32_t* planes = s.planes.data();
    for (size_t k = 0; k < ni; ++k) {
      read_plane(r, N, "dictionary positions", planes + k * stride, s, bits_of(D - 1));
    }
    undo_exclusion(planes, stride, N, ni, s);
    for (size_t k = 0; k < ni; ++k) {
      const uint32_t* p = planes + k * stride;
      FKD_CHECK(!any_at_least(p, N, D), FormatError,
                "{}: dictionary position {} >= dictionary size {}", w.str(), max_of(p, N), D);
    }
    lookup(planes, stride, N, ni, s.order.data(), out.indices.data());
  }
  out.values.resize(N * nv);
  if (nv > 0) {
    if (s.insert.size() < N) s.insert.resize(N);
    uint32_t* __restrict code = s.insert.data();
    std::fill(code, code + N, one_code(f.precision));
    uint32_t bad = 0;
    for (size_t k = 0; k < nv; ++k) {
      uint32_t* __restrict t = s.planes.data() + k * stride;
      read_plane(r, N, "values", t, s, 32);
      bad |= subtract_rank(code, t, N);
      codes_to_floats(f.precision, code, reinterpret_cast<float*>(t), N);
    }
    FKD_CHECK(!bad, FormatError,
              "{}: a value difference is larger than the value above it (values must descend "
              "from at most 1)",
              w.str());
    interleave(s.planes.data(), stride, N, nv, reinterpret_cast<uint32_t*>(out.values.data()));
  }
  FKD_CHECK(r.pos == size, FormatError, "{}: record has {} trailing bytes after offset {}", w.str(),
            size - r.pos, r.pos);
}

}  // namespace fkd::store
