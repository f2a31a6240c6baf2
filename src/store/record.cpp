// One image's record: the byte layout before compression (docs/label-store.md, "Record")
// and its zstd frame. Byte planes are grouped so that zstd's entropy coder sees the
// low-entropy parts (dictionary positions, exponents) apart from the noisy ones (low
// mantissa bytes).
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include "fkd/error.h"
#include "store/format.h"

namespace fkd::store {

int RecordFormat::value_bytes() const {
  switch (precision) {
    case Precision::kFp32: return 4;
    case Precision::kFp16: return 2;
    case Precision::kU8: return 1;
  }
  return 4;
}

uint64_t RecordFormat::max_raw_size() const {
  const uint64_t N = crops_per_image, ni = uint64_t(n_idx()), nv = uint64_t(n_val());
  uint64_t size = kRecordHeaderSize;
  if (ni > 0) {
    const uint64_t d_max = std::min<uint64_t>(uint64_t(num_classes), N * ni);
    size += 5 + 5 * d_max + 4 * N * ni;
  }
  return size + N * nv * uint64_t(value_bytes());
}

RecordFormat record_format(const ShardHeader& h) {
  RecordFormat f;
  f.label_type = h.label_type;
  f.k = int(h.k);
  f.num_classes = int(h.num_classes);
  f.precision = h.precision;
  f.crops_per_image = h.crops_per_image;
  return f;
}

RecordFormat record_format(const Manifest& m) {
  RecordFormat f;
  f.label_type = m.label_type;
  f.k = m.k;
  f.num_classes = int(std::min<size_t>(m.classes.size(), kMaxClasses));
  f.precision = m.precision;
  f.crops_per_image = m.crops_per_image;
  return f;
}

std::string Where::str() const {
  return fmt::format("{}: image {} (block at offset {})", file, image, offset);
}

int compression_level(size_t raw_size) { return raw_size <= (256u << 10) ? 19 : 3; }

void check_labels(const RecordFormat& f, const ImageLabels& l, const std::string& where) {
  const size_t N = f.crops_per_image, ni = size_t(f.n_idx()), nv = size_t(f.n_val());
  FKD_CHECK(l.num_crops == f.crops_per_image, DataError,
            "{}: holds {} crops, the store has {} per image", where, l.num_crops, f.crops_per_image);
  FKD_CHECK(l.indices.size() == N * ni, DataError,
            "{}: {} class indices, expected {} ({} crops x {})", where, l.indices.size(), N * ni, N, ni);
  FKD_CHECK(l.values.size() == N * nv, DataError, "{}: {} values, expected {} ({} crops x {})",
            where, l.values.size(), N * nv, N, nv);
  FKD_CHECK(l.height >= 1 && l.width >= 1 && l.height <= 0x7fffffffu && l.width <= 0x7fffffffu,
            DataError, "{}: image size {}x{} is not positive", where, l.height, l.width);
  std::vector<int32_t> sorted;
  for (size_t n = 0; n < N; ++n) {
    const int32_t* idx = l.indices.data() + n * ni;
    for (size_t r = 0; r < ni; ++r) {
      FKD_CHECK(idx[r] >= 0 && idx[r] < f.num_classes, DataError,
                "{}: crop {}: class index {} out of range [0, {})", where, n, idx[r], f.num_classes);
    }
    if (ni > 1) {
      sorted.assign(idx, idx + ni);
      std::sort(sorted.begin(), sorted.end());
      const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
      FKD_CHECK(dup == sorted.end(), DataError, "{}: crop {}: class index {} appears twice", where,
                n, dup == sorted.end() ? 0 : *dup);
    }
  }
  for (size_t i = 0; i < l.values.size(); ++i) {
    const float v = l.values[i];
    FKD_CHECK(v >= 0.0f && v <= 1.0f, DataError, "{}: crop {}: value {} is not a probability in [0, 1]",
              where, i / std::max<size_t>(nv, 1), v);
  }
}

namespace {

void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  const size_t at = b.size();
  b.resize(at + 4);
  store_u32(b.data() + at, v);
}

void put_varint(std::vector<uint8_t>& b, uint32_t v) {
  while (v >= 0x80) {
    b.push_back(uint8_t(v | 0x80));
    v >>= 7;
  }
  b.push_back(uint8_t(v));
}

uint32_t value_code(float v, Precision p) {
  switch (p) {
    case Precision::kFp32: {
      uint32_t x;
      std::memcpy(&x, &v, 4);
      return x;
    }
    case Precision::kFp16: return float_to_half(v);
    case Precision::kU8: return float_to_u8(v);
  }
  return 0;
}

/// Scratch space reused by every record a thread encodes or decodes.
struct Scratch {
  std::vector<int32_t> dict;
  std::vector<uint32_t> codes;
  std::vector<float> rows;
  std::vector<uint8_t> raw;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

void encode_record(const RecordFormat& f, const ImageLabels& l, std::vector<uint8_t>& raw,
                   std::vector<size_t>& sections) {
  const size_t N = f.crops_per_image, ni = size_t(f.n_idx()), nv = size_t(f.n_val());
  raw.clear();
  sections.clear();
  put_u32(raw, l.height);
  put_u32(raw, l.width);
  put_u32(raw, l.crop_hash);
  put_u32(raw, l.num_crops);
  Scratch& s = scratch();
  if (ni > 0) {
    // Dictionary: the image's distinct class ids, ascending, delta coded.
    s.dict.assign(l.indices.begin(), l.indices.end());
    std::sort(s.dict.begin(), s.dict.end());
    s.dict.erase(std::unique(s.dict.begin(), s.dict.end()), s.dict.end());
    const size_t D = s.dict.size();
    put_varint(raw, uint32_t(D));
    for (size_t i = 0; i < D; ++i) {
      put_varint(raw, i == 0 ? uint32_t(s.dict[0]) : uint32_t(s.dict[i] - s.dict[i - 1] - 1));
    }
    sections.push_back(raw.size());
    // Positions in the dictionary, W bytes each, as byte planes of rank-major arrays.
    const int W = D <= 256 ? 1 : D <= 65536 ? 2 : 4;
    s.codes.resize(N * ni);
    for (size_t r = 0; r < ni; ++r) {
      for (size_t n = 0; n < N; ++n) {
        const int32_t c = l.indices[n * ni + r];
        s.codes[r * N + n] =
            uint32_t(std::lower_bound(s.dict.begin(), s.dict.end(), c) - s.dict.begin());
      }
    }
    for (int b = 0; b < W; ++b) {
      for (uint32_t code : s.codes) raw.push_back(uint8_t(code >> (8 * b)));
      sections.push_back(raw.size());
    }
  }
  if (nv > 0) {
    // Value codes, rank-major; ranks after the first as the difference to the rank above
    // (values descend, so the differences are small), modulo 2^(8 S); byte planes.
    const int S = f.value_bytes();
    const uint32_t mask = S == 4 ? 0xffffffffu : (1u << (8 * S)) - 1u;
    const bool delta = f.label_type != LabelType::kFull;
    s.codes.resize(N * nv);
    for (size_t r = 0; r < nv; ++r) {
      for (size_t n = 0; n < N; ++n) {
        const uint32_t code = value_code(l.values[n * nv + r], f.precision);
        const uint32_t above = (delta && r > 0) ? value_code(l.values[n * nv + r - 1], f.precision) : 0;
        s.codes[r * N + n] = (delta && r > 0) ? (above - code) & mask : code;
      }
    }
    for (int b = 0; b < S; ++b) {
      for (uint32_t code : s.codes) raw.push_back(uint8_t(code >> (8 * b)));
      sections.push_back(raw.size());
    }
  }
  if (sections.empty() || sections.back() != raw.size()) sections.push_back(raw.size());
}

void compress_record(const std::vector<uint8_t>& raw, const std::vector<size_t>& sections,
                     std::vector<uint8_t>& out) {
  struct Free {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
  };
  thread_local std::unique_ptr<ZSTD_CCtx, Free> cctx(ZSTD_createCCtx());
  FKD_CHECK(cctx, IoError, "zstd: cannot create a compression context");
  ZSTD_CCtx* c = cctx.get();
  ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
  ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, compression_level(raw.size()));
  // Matches shorter than 7 bytes are not worth their decoding time here: the planes are
  // entropy-coded noise more than repeated strings (costs ~1% size, saves ~25% decode).
  ZSTD_CCtx_setParameter(c, ZSTD_c_minMatch, 7);
  ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
  ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
  ZSTD_CCtx_setParameter(c, ZSTD_c_dictIDFlag, 0);
  ZSTD_CCtx_setPledgedSrcSize(c, raw.size());
  out.resize(ZSTD_compressBound(raw.size()) + 8 * sections.size() + 64);
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  size_t begin = 0;
  for (size_t i = 0; i < sections.size(); ++i) {
    const size_t end = sections[i];
    ZSTD_inBuffer ib{raw.data() + begin, end - begin, 0};
    const bool last = i + 1 == sections.size();
    size_t left;
    do {
      if (ob.pos == ob.size) {
        out.resize(out.size() * 2);
        ob.dst = out.data();
        ob.size = out.size();
      }
      left = ZSTD_compressStream2(c, &ob, &ib, last ? ZSTD_e_end : ZSTD_e_flush);
      FKD_CHECK(!ZSTD_isError(left), IoError, "zstd: {}", ZSTD_getErrorName(left));
    } while (left != 0 || ib.pos < ib.size);
    begin = end;
  }
  out.resize(ob.pos);
}

namespace {

/// A bounds-checked cursor over a decoded record; errors name the record and offset.
struct Cursor {
  const uint8_t* base;
  size_t size, pos;
  const Where& w;
  const uint8_t* take(size_t n, const char* what) {
    FKD_CHECK(n <= size - pos, FormatError,
              "{}: record truncated: {} needs {} bytes at record offset {}, {} left", w.str(), what,
              n, pos, size - pos);
    const uint8_t* p = base + pos;
    pos += n;
    return p;
  }
  uint32_t varint(const char* what) {
    uint32_t v = 0;
    for (int shift = 0; shift < 35; shift += 7) {
      const uint8_t b = *take(1, what);
      FKD_CHECK(shift < 28 || b < 0x10, FormatError, "{}: {} at record offset {}: varint exceeds 32 bits",
                w.str(), what, pos - 1);
      v |= uint32_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail<FormatError>("{}: {} at record offset {}: varint longer than 5 bytes", w.str(), what, pos);
  }
};

// The decoders walk each rank's plane contiguously and check validity once per record,
// not per entry.
template <int W>
uint32_t read_positions(const uint8_t* __restrict planes, size_t N, size_t ni, uint32_t D,
                        const int32_t* __restrict dict, int32_t* __restrict out) {
  const size_t count = N * ni;
  uint32_t worst = 0;
  if (W == 1) {
    // One-byte positions index a 256-entry dictionary: the lookup needs no check, and the
    // largest position is found by a separate (vectorized) pass.
    uint8_t top = 0;
    for (size_t i = 0; i < count; ++i) top = planes[i] > top ? planes[i] : top;
    worst = top;
  }
  for (size_t r = 0; r < ni; ++r) {
    const uint8_t* __restrict p = planes + r * N;
    int32_t* __restrict o = out + r;
#pragma GCC unroll 4
    for (size_t n = 0; n < N; ++n, o += ni) {
      uint32_t pos = p[n];
      if (W >= 2) pos |= uint32_t(p[count + n]) << 8;
      if (W == 4) pos |= uint32_t(p[2 * count + n]) << 16 | uint32_t(p[3 * count + n]) << 24;
      if (W > 1) worst = pos > worst ? pos : worst;
      *o = dict[W == 1 ? pos : (pos < D ? pos : 0)];
    }
  }
  return worst;
}

/// Values are decoded one rank plane at a time into `rows` ([nv][N]: contiguous loops the
/// compiler vectorizes; the delta is element-wise between rank planes), then interleaved
/// into `out` ([N][nv]).
template <int S, bool kDelta>
uint32_t read_value_rows(const uint8_t* __restrict planes, size_t N, size_t nv,
                         uint32_t* __restrict codes, float* __restrict rows) {
  const size_t count = N * nv;
  constexpr uint32_t kMask = S == 4 ? 0xffffffffu : (1u << (8 * (S % 4))) - 1u;
  uint32_t worst = 0;
  for (size_t r = 0; r < nv; ++r) {
    const uint8_t* __restrict lo = planes + r * N;
    float* __restrict row = rows + r * N;
    // Simple separate loops: each one vectorizes.
    if (S == 2 && kDelta && r > 0) {
      for (size_t n = 0; n < N; ++n)
        codes[n] = (codes[n] - (uint32_t(lo[n]) | uint32_t(lo[count + n]) << 8)) & kMask;
    } else if (S == 2) {
      for (size_t n = 0; n < N; ++n) codes[n] = uint32_t(lo[n]) | uint32_t(lo[count + n]) << 8;
    } else if (S == 1 && kDelta && r > 0) {
      for (size_t n = 0; n < N; ++n) codes[n] = (codes[n] - lo[n]) & kMask;
    } else if (S == 1) {
      for (size_t n = 0; n < N; ++n) codes[n] = lo[n];
    } else {
      for (size_t n = 0; n < N; ++n) {
        const uint32_t c = uint32_t(lo[n]) | uint32_t(lo[count + n]) << 8 |
                           uint32_t(lo[2 * count + n]) << 16 | uint32_t(lo[3 * count + n]) << 24;
        codes[n] = kDelta && r > 0 ? codes[n] - c : c;
      }
    }
    for (size_t n = 0; n < N; ++n) worst = codes[n] > worst ? codes[n] : worst;
    if (S == 1) {
      for (size_t n = 0; n < N; ++n) row[n] = float(int32_t(codes[n])) / 255.0f;
    } else if (S == 2) {
      // Normal halves: rebias the exponent; subnormal halves (below 2^-14): m * 2^-24.
      // No float subnormals are involved, so flush-to-zero modes cannot change the result.
      for (size_t n = 0; n < N; ++n) {
        const uint32_t c = codes[n], normal = (c << 13) + 0x38000000u;
        const float sub = float(int32_t(c)) * 0x1p-24f;
        uint32_t sub_bits, bits;
        std::memcpy(&sub_bits, &sub, 4);
        const uint32_t is_sub = 0u - uint32_t(c < 0x400u);  // all ones or zero: a blend
        bits = (sub_bits & is_sub) | (normal & ~is_sub);
        std::memcpy(&row[n], &bits, 4);
      }
    } else {
      std::memcpy(row, codes, N * 4);
    }
  }
  return worst;
}

template <int NV>
void interleave_rows(const float* __restrict rows, size_t N, size_t nv_any, float* __restrict out) {
  const size_t nv = NV ? size_t(NV) : nv_any;
  for (size_t n = 0; n < N; ++n, out += nv) {
    for (size_t r = 0; r < nv; ++r) out[r] = rows[r * N + n];
  }
}

template <int S>
uint32_t read_values(const uint8_t* planes, size_t N, size_t nv, bool delta, uint32_t* above,
                     float* rows, float* out) {
  if (nv == 1) return read_value_rows<S, false>(planes, N, 1, above, out);  // rows == out
  const uint32_t worst = delta ? read_value_rows<S, true>(planes, N, nv, above, rows)
                               : read_value_rows<S, false>(planes, N, nv, above, rows);
  switch (nv) {
    case 2: interleave_rows<2>(rows, N, nv, out); break;
    case 3: interleave_rows<3>(rows, N, nv, out); break;
    case 5: interleave_rows<5>(rows, N, nv, out); break;
    case 10: interleave_rows<10>(rows, N, nv, out); break;
    default: interleave_rows<0>(rows, N, nv, out); break;
  }
  return worst;
}

}  // namespace

void decode_raw_record(const RecordFormat& f, const uint8_t* raw, size_t raw_size,
                       ImageLabels& out, const Where& w) {
  const size_t N = f.crops_per_image, ni = size_t(f.n_idx()), nv = size_t(f.n_val());
  Cursor cur{raw, raw_size, 0, w};
  const uint8_t* h = cur.take(kRecordHeaderSize, "record header");
  out.height = load_u32(h);
  out.width = load_u32(h + 4);
  out.crop_hash = load_u32(h + 8);
  out.num_crops = load_u32(h + 12);
  FKD_CHECK(out.num_crops == f.crops_per_image, FormatError,
            "{}: record offset 12: expected {} crops, found {}", w.str(), f.crops_per_image, out.num_crops);
  FKD_CHECK(out.height >= 1 && out.width >= 1 && out.height <= 0x7fffffffu && out.width <= 0x7fffffffu,
            FormatError, "{}: record offset 0: image size {}x{} is not positive", w.str(), out.height,
            out.width);
  Scratch& s = scratch();
  out.indices.resize(N * ni);
  if (ni > 0) {
    const uint64_t d_max = std::min<uint64_t>(uint64_t(f.num_classes), uint64_t(N) * ni);
    const uint32_t D = cur.varint("dictionary size");
    FKD_CHECK(D >= 1 && D <= d_max, FormatError,
              "{}: record offset 16: dictionary size {} is not in [1, {}]", w.str(), D, d_max);
    s.dict.assign(std::max<size_t>(D, 256), 0);  // W == 1 reads positions unchecked
    uint64_t prev = 0;
    for (uint32_t i = 0; i < D; ++i) {
      const uint64_t id = i == 0 ? cur.varint("class id") : prev + 1 + cur.varint("class id delta");
      FKD_CHECK(id < uint64_t(f.num_classes), FormatError,
                "{}: dictionary entry {}: class id {} out of range [0, {})", w.str(), i, id, f.num_classes);
      s.dict[i] = int32_t(id);
      prev = id;
    }
    const int W = D <= 256 ? 1 : D <= 65536 ? 2 : 4;
    const uint8_t* planes = cur.take(size_t(W) * N * ni, "dictionary positions");
    const int32_t* dict = s.dict.data();
    int32_t* idx = out.indices.data();
    const uint32_t worst = W == 1   ? read_positions<1>(planes, N, ni, D, dict, idx)
                           : W == 2 ? read_positions<2>(planes, N, ni, D, dict, idx)
                                    : read_positions<4>(planes, N, ni, D, dict, idx);
    FKD_CHECK(worst < D, FormatError, "{}: dictionary position {} >= dictionary size {}", w.str(),
              worst, D);
  }
  out.values.resize(N * nv);
  if (nv > 0) {
    const int S = f.value_bytes();
    const uint8_t* planes = cur.take(size_t(S) * N * nv, "values");
    const bool delta = f.label_type != LabelType::kFull;
    s.codes.resize(N);
    s.rows.resize(N * nv);
    uint32_t* above = s.codes.data();
    float* rows = s.rows.data();
    float* v = out.values.data();
    const uint32_t worst = S == 1   ? read_values<1>(planes, N, nv, delta, above, rows, v)
                           : S == 2 ? read_values<2>(planes, N, nv, delta, above, rows, v)
                                    : read_values<4>(planes, N, nv, delta, above, rows, v);
    // Codes of [0, 1]: fp16 <= 0x3c00, fp32 <= 0x3f800000 (sign bit clear, NaN excluded).
    const uint32_t one = S == 1 ? 0xffu : S == 2 ? 0x3c00u : 0x3f800000u;
    FKD_CHECK(worst <= one, FormatError, "{}: value code 0x{:x} is not a probability in [0, 1]",
              w.str(), worst);
  }
  FKD_CHECK(cur.pos == raw_size, FormatError, "{}: record has {} trailing bytes after offset {}",
            w.str(), raw_size - cur.pos, cur.pos);
}

void decode_record(const RecordFormat& f, const uint8_t* payload, size_t payload_size,
                   uint32_t raw_size, ImageLabels& out, const Where& w) {
  struct Free {
    void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
  };
  thread_local std::unique_ptr<ZSTD_DCtx, Free> dctx(ZSTD_createDCtx());
  FKD_CHECK(dctx, IoError, "zstd: cannot create a decompression context");
  const unsigned long long content = ZSTD_getFrameContentSize(payload, payload_size);
  FKD_CHECK(content == raw_size, FormatError,
            "{}: zstd frame: expected content size {}, found {}", w.str(), raw_size,
            content == ZSTD_CONTENTSIZE_ERROR     ? std::string("an invalid frame header")
            : content == ZSTD_CONTENTSIZE_UNKNOWN ? std::string("none")
                                                  : std::to_string(content));
  const size_t frame = ZSTD_findFrameCompressedSize(payload, payload_size);
  FKD_CHECK(!ZSTD_isError(frame) && frame == payload_size, FormatError,
            "{}: zstd frame: expected {} bytes, found {}", w.str(), payload_size,
            ZSTD_isError(frame) ? std::string(ZSTD_getErrorName(frame)) : std::to_string(frame));
  std::vector<uint8_t>& raw = scratch().raw;
  if (raw.size() < raw_size) raw.resize(raw_size);
  const size_t n = ZSTD_decompressDCtx(dctx.get(), raw.data(), raw_size, payload, payload_size);
  FKD_CHECK(!ZSTD_isError(n) && n == raw_size, FormatError, "{}: zstd: expected {} bytes, found {}",
            w.str(), raw_size, ZSTD_isError(n) ? std::string(ZSTD_getErrorName(n)) : std::to_string(n));
  decode_raw_record(f, raw.data(), raw_size, out, w);
}

}  // namespace fkd::store
