// One image's record: the byte layout before compression (docs/label-store.md, "Record")
// and its zstd frame. Byte planes are grouped so that zstd's entropy coder sees the
// low-entropy parts (dictionary positions, exponents) apart from the noisy ones (low
// mantissa bytes).
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <memory>
#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include <fmt/format.h>

#include "fkd/error.h"
#include "store/bytes.h"
#include "store/manifest.h"
#include "store/record.h"

namespace fkd::store {

int RecordFormat::value_bytes() const {
  switch (precision) {
    case Precision::kFp32:
      return 4;
    case Precision::kFp16:
      return 2;
    case Precision::kU8:
      return 1;
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
  size += N * nv * uint64_t(value_bytes());
  // The largest box section: 31-bit sides (the image size limit).
  if (explicit_crops) size += box_section_bytes(N, 0x7fffffffu, 0x7fffffffu);
  return size;
}

RecordFormat record_format(const Manifest& m) {
  RecordFormat f;
  f.label_type = m.label_type;
  f.k = m.k;
  f.num_classes = int(std::min<size_t>(m.classes.size(), kMaxClasses));
  f.precision = m.precision;
  f.crops_per_image = m.crops_per_image;
  f.explicit_crops = m.crop_origin == CropOrigin::kExplicit;
  return f;
}

std::string Where::str() const {
  return fmt::format("{}: image {} (block at offset {})", file, image, offset);
}

namespace {

/// Value codes of S bytes to floats; see codes_to_floats.
template <int S>
void codes_to_floats_of(const uint32_t* __restrict codes, float* __restrict row, size_t n) {
  if (S == 1) {
    for (size_t m = 0; m < n; ++m) row[m] = float(int32_t(codes[m])) / 255.0f;
  } else if (S == 2) {
    // Normal halves: rebias the exponent; subnormal halves (below 2^-14): m * 2^-24.
    // No float subnormals are involved, so flush-to-zero modes cannot change the result.
    // Valid codes are below 2^16: signed comparisons and conversions are exact.
    for (size_t m = 0; m < n; ++m) {
      const int32_t c = int32_t(codes[m]);
      const uint32_t normal = (uint32_t(c) << 13) + 0x38000000u;
      const float sub = float(c) * 0x1p-24f;
      uint32_t sub_bits, bits;
      std::memcpy(&sub_bits, &sub, 4);
      const uint32_t is_sub = 0u - uint32_t(c < 0x400);  // all ones or zero: a blend
      bits = (sub_bits & is_sub) | (normal & ~is_sub);
      std::memcpy(&row[m], &bits, 4);
    }
  } else {
    std::memcpy(row, codes, n * 4);
  }
}

}  // namespace

uint32_t value_code(float v, Precision p) {
  switch (p) {
    case Precision::kFp32: {
      uint32_t x;
      std::memcpy(&x, &v, 4);
      return x;
    }
    case Precision::kFp16:
      return float_to_half(v);
    case Precision::kU8:
      return float_to_u8(v);
  }
  return 0;
}

FKD_VECTOR_CLONES
void codes_to_floats(Precision p, const uint32_t* codes, float* row, size_t n) {
  switch (p) {
    case Precision::kFp32:
      return codes_to_floats_of<4>(codes, row, n);
    case Precision::kFp16:
      return codes_to_floats_of<2>(codes, row, n);
    case Precision::kU8:
      return codes_to_floats_of<1>(codes, row, n);
  }
}

void put_varint(std::vector<uint8_t>& b, uint32_t v) {
  for (; v >= 0x80; v >>= 7) b.push_back(uint8_t(v | 0x80));
  b.push_back(uint8_t(v));
}

int box_field_bits(uint32_t side) { return side <= 1 ? 0 : 32 - __builtin_clz(side - 1); }

uint64_t box_section_bytes(uint64_t N, uint32_t height, uint32_t width) {
  const uint64_t bits =
      2 * uint64_t(box_field_bits(width)) + 2 * uint64_t(box_field_bits(height)) + 1;
  return (N * bits + 7) / 8;
}

std::string boxes_problem(const ImageLabels& l) {
  if (l.boxes.size() != l.num_crops)
    return fmt::format("{} crop boxes for {} crops", l.boxes.size(), l.num_crops);
  const int64_t H = l.height, W = l.width;
  for (size_t c = 0; c < l.boxes.size(); ++c) {
    const PixelBox& b = l.boxes[c].box;
    if (!(b.left >= 0 && b.top >= 0 && b.width >= 1 && b.height >= 1 &&
          int64_t(b.left) + b.width <= W && int64_t(b.top) + b.height <= H)) {
      return fmt::format(
          "crop {}: box (left {}, top {}, width {}, height {}) is not inside the {}x{} "
          "(height x width) image with a size of at least 1",
          c, b.left, b.top, b.width, b.height, H, W);
    }
  }
  return "";
}

namespace {
/// Appends `boxes`' section: per crop left, top, width - 1, height - 1, flip, LSB-first.
void put_boxes(std::vector<uint8_t>& b, const ImageLabels& l) {
  const int bx = box_field_bits(l.width), by = box_field_bits(l.height);
  const size_t at = b.size();
  b.resize(at + size_t(box_section_bytes(l.boxes.size(), l.height, l.width)), 0);
  uint8_t* out = b.data() + at;
  uint64_t acc = 0;  // bits not yet written, low first
  int n = 0;
  auto put = [&](uint32_t v, int w) {
    acc |= uint64_t(v) << n;
    n += w;
    while (n >= 8) {
      *out++ = uint8_t(acc);
      acc >>= 8;
      n -= 8;
    }
  };
  for (const CropPlan& p : l.boxes) {
    put(uint32_t(p.box.left), bx);
    put(uint32_t(p.box.top), by);
    put(uint32_t(p.box.width - 1), bx);
    put(uint32_t(p.box.height - 1), by);
    put(p.flip ? 1u : 0u, 1);
  }
  if (n > 0) *out = uint8_t(acc);
}

/// Decodes the box section of `out` (height, width, num_crops and crop_hash read) into
/// out.boxes, checking every box against the image and the crop hash against the boxes.
void read_boxes(RecordCursor& cur, ImageLabels& out) {
  const int bx = box_field_bits(out.width), by = box_field_bits(out.height);
  const int B = 2 * bx + 2 * by + 1;
  const uint32_t N = out.num_crops;
  const uint64_t bytes = box_section_bytes(N, out.height, out.width);
  const size_t at = cur.pos;
  const uint8_t* src = cur.take(size_t(bytes), "crop boxes");
  // Copied with 8 bytes of slack, so that any 57 bits from any bit offset are one unaligned
  // 64-bit load: a whole crop when B <= 57 (sides up to 2^14), else one field.
  thread_local std::vector<uint8_t> buf;
  thread_local std::vector<uint8_t> quint;  // the hashed (left, top, width, height, flip)s
  if (buf.size() < bytes + 8) buf.resize(size_t(bytes) + 8);
  std::memcpy(buf.data(), src, size_t(bytes));
  std::memset(buf.data() + bytes, 0, 8);
  if (quint.size() < size_t(N) * 20) quint.resize(size_t(N) * 20);
  const uint8_t* p = buf.data();
  const uint64_t mx = (1ull << bx) - 1, my = (1ull << by) - 1;
  out.boxes.resize(N);
  CropPlan* boxes = out.boxes.data();
  uint8_t* hashed = quint.data();
  const uint32_t H = out.height, W = out.width;
  uint32_t outside = 0;  // nonzero when some box leaves the image: named below
  auto put = [&](uint32_t c, uint32_t left, uint32_t top, uint32_t w1, uint32_t h1, uint32_t flip) {
    // left + width <= W, top + height <= H; no overflow: every field is below 2^31.
    outside |= uint32_t(left + w1 >= W) | uint32_t(top + h1 >= H);
    // Field by field: an aggregate assembled in registers and stored through the stack costs
    // a store-forwarding stall per crop.
    CropPlan& q = boxes[c];
    q.box.left = int(left);
    q.box.top = int(top);
    q.box.width = int(w1 + 1);
    q.box.height = int(h1 + 1);
    q.flip = flip != 0;
    q.id = c;
    uint8_t* o = hashed + size_t(c) * 20;
    const uint32_t v[5] = {left, top, w1 + 1, h1 + 1, flip};
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    std::memcpy(o, v, 20);  // byte-wise stores get merged through the stack: a stall per crop
#else
    for (int i = 0; i < 5; ++i) store_u32(o + 4 * i, v[i]);
#endif
  };
  if (B <= 57) {
    for (uint32_t c = 0; c < N; ++c) {
      const uint64_t bit = uint64_t(c) * uint64_t(B);
      uint64_t x = load_u64(p + (bit >> 3)) >> (bit & 7);
      const uint32_t left = uint32_t(x & mx);
      x >>= bx;
      const uint32_t top = uint32_t(x & my);
      x >>= by;
      const uint32_t w1 = uint32_t(x & mx);
      x >>= bx;
      const uint32_t h1 = uint32_t(x & my);
      x >>= by;
      put(c, left, top, w1, h1, uint32_t(x & 1));
    }
  } else {
    uint64_t bit = 0;
    auto get = [&](int w) {
      const uint64_t v = (load_u64(p + (bit >> 3)) >> (bit & 7)) & ((1ull << w) - 1);
      bit += uint64_t(w);
      return uint32_t(v);
    };
    for (uint32_t c = 0; c < N; ++c) {
      const uint32_t left = get(bx), top = get(by), w1 = get(bx), h1 = get(by);
      put(c, left, top, w1, h1, get(1));
    }
  }
  if (outside) {
    const std::string problem = boxes_problem(out);
    fail<FormatError>("{}: crop boxes at record offset {}: {}", cur.w.str(), at, problem);
  }
  const uint32_t hash = XXH32(quint.data(), size_t(N) * 20, 0);
  FKD_CHECK(hash == out.crop_hash, FormatError,
            "{}: record offset 8: crop hash 0x{:08x} does not match the record's boxes (0x{:08x})",
            cur.w.str(), out.crop_hash, hash);
}
}  // namespace

void put_record_header(std::vector<uint8_t>& b, const RecordFormat& f, const ImageLabels& l) {
  const uint32_t hash = f.explicit_crops ? crops_hash(l.boxes.data(), l.boxes.size()) : l.crop_hash;
  for (uint32_t x : {l.height, l.width, hash, l.num_crops}) {
    const size_t at = b.size();
    b.resize(at + 4);
    store_u32(b.data() + at, x);
  }
  if (f.explicit_crops) put_boxes(b, l);
}

void put_dictionary(std::vector<uint8_t>& b, const ImageLabels& l, std::vector<int32_t>& dict) {
  dict.assign(l.indices.begin(), l.indices.end());
  std::sort(dict.begin(), dict.end());
  dict.erase(std::unique(dict.begin(), dict.end()), dict.end());
  put_varint(b, uint32_t(dict.size()));
  for (size_t i = 0; i < dict.size(); ++i) {
    put_varint(b, i == 0 ? uint32_t(dict[0]) : uint32_t(dict[i] - dict[i - 1] - 1));
  }
}

const uint8_t* RecordCursor::take(size_t n, const char* what) {
  FKD_CHECK(n <= size - pos, FormatError,
            "{}: record truncated: {} needs {} bytes at record offset {}, {} left", w.str(), what,
            n, pos, size - pos);
  const uint8_t* p = base + pos;
  pos += n;
  return p;
}

uint32_t RecordCursor::varint(const char* what) {
  uint32_t v = 0;
  for (int shift = 0; shift < 35; shift += 7) {
    const uint8_t b = *take(1, what);
    FKD_CHECK(shift < 28 || b < 0x10, FormatError,
              "{}: {} at record offset {}: varint exceeds 32 bits", w.str(), what, pos - 1);
    v |= uint32_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  fail<FormatError>("{}: {} at record offset {}: varint longer than 5 bytes", w.str(), what, pos);
}

void read_record_header(RecordCursor& cur, const RecordFormat& f, ImageLabels& out) {
  const uint8_t* h = cur.take(kRecordHeaderSize, "record header");
  out.height = load_u32(h);
  out.width = load_u32(h + 4);
  out.crop_hash = load_u32(h + 8);
  out.num_crops = load_u32(h + 12);
  FKD_CHECK(out.num_crops == f.crops_per_image, FormatError,
            "{}: record offset 12: expected {} crops, found {}", cur.w.str(), f.crops_per_image,
            out.num_crops);
  FKD_CHECK(
      out.height >= 1 && out.width >= 1 && out.height <= 0x7fffffffu && out.width <= 0x7fffffffu,
      FormatError, "{}: record offset 0: image size {}x{} is not positive", cur.w.str(), out.height,
      out.width);
  if (!f.explicit_crops) {
    out.boxes.clear();
    return;
  }
  read_boxes(cur, out);
}

uint32_t read_dictionary(RecordCursor& cur, const RecordFormat& f, std::vector<int32_t>& dict,
                         size_t min_entries) {
  const uint64_t d_max = std::min<uint64_t>(uint64_t(f.num_classes),
                                            uint64_t(f.crops_per_image) * uint64_t(f.n_idx()));
  const uint32_t D = cur.varint("dictionary size");
  FKD_CHECK(D >= 1 && D <= d_max, FormatError,
            "{}: record offset 16: dictionary size {} is not in [1, {}]", cur.w.str(), D, d_max);
  if (dict.size() < std::max<size_t>(D, min_entries)) dict.resize(std::max<size_t>(D, min_entries));
  uint64_t prev = 0;
  for (uint32_t i = 0; i < D; ++i) {
    const uint64_t id = i == 0 ? cur.varint("class id") : prev + 1 + cur.varint("class id delta");
    FKD_CHECK(id < uint64_t(f.num_classes), FormatError,
              "{}: dictionary entry {}: class id {} out of range [0, {})", cur.w.str(), i, id,
              f.num_classes);
    dict[i] = int32_t(id);
    prev = id;
  }
  return D;
}

int compression_level(size_t raw_size) { return raw_size <= (256u << 10) ? 19 : 3; }

void check_labels(const RecordFormat& f, const ImageLabels& l, const std::string& where) {
  const size_t N = f.crops_per_image, ni = size_t(f.n_idx()), nv = size_t(f.n_val());
  FKD_CHECK(l.num_crops == f.crops_per_image, DataError,
            "{}: holds {} crops, the store has {} per image", where, l.num_crops,
            f.crops_per_image);
  FKD_CHECK(l.indices.size() == N * ni, DataError,
            "{}: {} class indices, expected {} ({} crops x {})", where, l.indices.size(), N * ni, N,
            ni);
  FKD_CHECK(l.values.size() == N * nv, DataError, "{}: {} values, expected {} ({} crops x {})",
            where, l.values.size(), N * nv, N, nv);
  FKD_CHECK(l.height >= 1 && l.width >= 1 && l.height <= 0x7fffffffu && l.width <= 0x7fffffffu,
            DataError, "{}: image size {}x{} is not positive", where, l.height, l.width);
  if (f.explicit_crops) {
    const std::string problem = boxes_problem(l);
    FKD_CHECK(problem.empty(), DataError, "{}: {} (a store of explicit crops)", where, problem);
  } else {
    FKD_CHECK(l.boxes.empty(), DataError,
              "{}: holds {} crop boxes, but the store derives its crops (they would be lost)",
              where, l.boxes.size());
  }
  std::vector<int32_t> sorted;
  for (size_t n = 0; n < N; ++n) {
    const int32_t* idx = l.indices.data() + n * ni;
    for (size_t r = 0; r < ni; ++r) {
      FKD_CHECK(idx[r] >= 0 && idx[r] < f.num_classes, DataError,
                "{}: crop {}: class index {} out of range [0, {})", where, n, idx[r],
                f.num_classes);
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
    FKD_CHECK(v >= 0.0f && v <= 1.0f, DataError,
              "{}: crop {}: value {} is not a probability in [0, 1]", where,
              i / std::max<size_t>(nv, 1), v);
  }
}

namespace {

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
  put_record_header(raw, f, l);
  if (f.explicit_crops) sections.push_back(raw.size());  // the boxes get their own zstd block
  Scratch& s = scratch();
  if (ni > 0) {
    put_dictionary(raw, l, s.dict);
    const size_t D = s.dict.size();
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
        const uint32_t above =
            (delta && r > 0) ? value_code(l.values[n * nv + r - 1], f.precision) : 0;
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

// Positions are read one rank's plane at a time, and checked once per record, not per
// entry. NI > 0: the class ids per crop as a constant (the common k), 0: `ni_any`.
template <int W, int NI>
uint32_t read_positions(const uint8_t* __restrict planes, size_t N, size_t ni_any, uint32_t D,
                        const int32_t* __restrict dict, int32_t* __restrict out) {
  const size_t ni = NI > 0 ? size_t(NI) : ni_any;
  const size_t count = N * ni;
  uint32_t worst = 0;
  if (W == 1) {
    // One-byte positions index a 256-entry dictionary: the lookup needs no check, and the
    // largest position is found by a separate (vectorized) pass.
    uint8_t top = 0;
    for (size_t i = 0; i < count; ++i) top = planes[i] > top ? planes[i] : top;
    worst = top;
    // Eight positions per load; the class ids go to their crops' rows.
    for (size_t r = 0; r < ni; ++r) {
      const uint8_t* __restrict p = planes + r * N;
      int32_t* __restrict o = out + r;
      size_t n = 0;
      for (; n + 8 <= N; n += 8, o += 8 * ni) {
        const uint64_t x = load_u64(p + n);
        for (size_t j = 0; j < 8; ++j) o[j * ni] = dict[(x >> (8 * j)) & 0xff];
      }
      for (; n < N; ++n, o += ni) *o = dict[p[n]];
    }
    return worst;
  }
  for (size_t r = 0; r < ni; ++r) {
    const uint8_t* __restrict p = planes + r * N;
    int32_t* __restrict o = out + r;
    for (size_t n = 0; n < N; ++n, o += ni) {
      uint32_t pos = uint32_t(p[n]) | uint32_t(p[count + n]) << 8;
      if (W == 4) pos |= uint32_t(p[2 * count + n]) << 16 | uint32_t(p[3 * count + n]) << 24;
      worst = pos > worst ? pos : worst;
      *o = dict[pos < D ? pos : 0];
    }
  }
  return worst;
}

template <int W>
uint32_t read_positions(const uint8_t* planes, size_t N, size_t ni, uint32_t D, const int32_t* dict,
                        int32_t* out) {
  switch (ni) {
    case 1:
      return read_positions<W, 1>(planes, N, ni, D, dict, out);
    case 3:
      return read_positions<W, 3>(planes, N, ni, D, dict, out);
    case 5:
      return read_positions<W, 5>(planes, N, ni, D, dict, out);
    case 10:
      return read_positions<W, 10>(planes, N, ni, D, dict, out);
    default:
      return read_positions<W, 0>(planes, N, ni, D, dict, out);
  }
}

/// Values of crops [n0, N) one rank plane at a time into `rows` ([nv][N - n0]: contiguous
/// loops the compiler vectorizes; the delta is element-wise between rank planes), then
/// interleaved into `out` ([N][nv]). Without SSE2 this decodes every crop; with it, the
/// crops after the last block of 8. Returns nonzero when a code is not a probability.
template <int S, bool kDelta>
uint32_t read_value_rows(const uint8_t* __restrict planes, size_t N, size_t nv, size_t n0,
                         uint32_t* __restrict codes, float* __restrict rows,
                         float* __restrict out) {
  const size_t count = N * nv, M = N - n0;
  constexpr uint32_t kMask = S == 4 ? 0xffffffffu : (1u << (8 * (S % 4))) - 1u;
  uint32_t bad = 0;
  for (size_t r = 0; r < nv; ++r) {
    const uint8_t* __restrict lo = planes + r * N + n0;
    float* __restrict row = rows + r * M;
    // Simple separate loops: each one vectorizes.
    if (S == 2 && kDelta && r > 0) {
      for (size_t m = 0; m < M; ++m)
        codes[m] = (codes[m] - (uint32_t(lo[m]) | uint32_t(lo[count + m]) << 8)) & kMask;
    } else if (S == 2) {
      for (size_t m = 0; m < M; ++m) codes[m] = uint32_t(lo[m]) | uint32_t(lo[count + m]) << 8;
    } else if (S == 1 && kDelta && r > 0) {
      for (size_t m = 0; m < M; ++m) codes[m] = (codes[m] - lo[m]) & kMask;
    } else if (S == 1) {
      for (size_t m = 0; m < M; ++m) codes[m] = lo[m];
    } else {
      for (size_t m = 0; m < M; ++m) {
        const uint32_t c = uint32_t(lo[m]) | uint32_t(lo[count + m]) << 8 |
                           uint32_t(lo[2 * count + m]) << 16 | uint32_t(lo[3 * count + m]) << 24;
        codes[m] = kDelta && r > 0 ? codes[m] - c : c;
      }
    }
    // Codes of [0, 1]: u8 any; fp16 <= 0x3c00, and as fp16 codes are below 2^16, adding
    // 0xffff - 0x3c00 carries into bit 16 exactly for the codes above it; fp32 <= 0x3f800000
    // (sign bit clear, NaN excluded).
    if (S == 2) {
      for (size_t m = 0; m < M; ++m) bad |= codes[m] + (0xffffu - 0x3c00u);
    } else if (S == 4) {
      for (size_t m = 0; m < M; ++m) bad |= uint32_t(codes[m] > 0x3f800000u) << 16;
    }
    codes_to_floats_of<S>(codes, row, M);
  }
  for (size_t m = 0; m < M; ++m) {
    for (size_t r = 0; r < nv; ++r) out[(n0 + m) * nv + r] = rows[r * M + m];
  }
  return bad >> 16;
}

#if defined(__SSE2__)
/// Codes of one rank for 8 crops: 16-bit lanes (u8, fp16) or two vectors of 32-bit lanes
/// (fp32, crops 0-3 and 4-7).
struct Codes8 {
  __m128i a, b;
};

/// Decodes one rank of 8 crops (`q`: the rank's first plane at the block's first crop)
/// into floats f0 (crops 0-3) and f1 (crops 4-7); `above` holds the rank above (delta).
template <int S, bool kDelta>
inline void value_rank8(const uint8_t* q, size_t count, bool first, Codes8& above, __m128i& bad,
                        __m128& f0, __m128& f1) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i b0 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q));
  if (S == 1 || S == 2) {
    __m128i c = _mm_unpacklo_epi8(
        b0, S == 2 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + count)) : zero);
    if (kDelta && !first) {
      c = _mm_sub_epi16(above.a, c);  // modulo 2^16
      if (S == 1) c = _mm_and_si128(c, _mm_set1_epi16(0xff));
    }
    above.a = c;
    if (S == 1) {
      // float(q) / 255 as the scalar u8_to_float computes it (division is correctly rounded).
      const __m128 k255 = _mm_set1_ps(255.0f);
      f0 = _mm_div_ps(_mm_cvtepi32_ps(_mm_unpacklo_epi16(c, zero)), k255);
      f1 = _mm_div_ps(_mm_cvtepi32_ps(_mm_unpackhi_epi16(c, zero)), k255);
      return;
    }
    bad = _mm_or_si128(bad, _mm_subs_epu16(c, _mm_set1_epi16(0x3c00)));
    // Normal halves: float bits (c << 13) + 0x38000000, built as 16-bit halves. Subnormal
    // halves (c < 0x400; signed compare: codes of 0x8000 and up are rejected anyway) get the
    // exponent of 2^-14 instead, giving 2^-14 + m * 2^-24, and 2^-14 is then subtracted:
    // exact, and no float subnormal is involved (flush-to-zero modes cannot change it).
    const __m128i sub = _mm_cmplt_epi16(c, _mm_set1_epi16(0x400));
    __m128i hi = _mm_add_epi16(_mm_srli_epi16(c, 3), _mm_set1_epi16(0x3800));
    hi = _mm_add_epi16(hi, _mm_and_si128(sub, _mm_set1_epi16(0x80)));
    const __m128i lo = _mm_slli_epi16(c, 13);
    const __m128 two_m14 = _mm_castsi128_ps(_mm_set1_epi32(0x38800000));
    f0 = _mm_sub_ps(_mm_castsi128_ps(_mm_unpacklo_epi16(lo, hi)),
                    _mm_and_ps(_mm_castsi128_ps(_mm_unpacklo_epi16(sub, sub)), two_m14));
    f1 = _mm_sub_ps(_mm_castsi128_ps(_mm_unpackhi_epi16(lo, hi)),
                    _mm_and_ps(_mm_castsi128_ps(_mm_unpackhi_epi16(sub, sub)), two_m14));
  } else {
    const __m128i b1 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + count));
    const __m128i b2 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 2 * count));
    const __m128i b3 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 3 * count));
    const __m128i low = _mm_unpacklo_epi8(b0, b1), high = _mm_unpacklo_epi8(b2, b3);
    __m128i c0 = _mm_unpacklo_epi16(low, high), c1 = _mm_unpackhi_epi16(low, high);
    if (kDelta && !first) {
      c0 = _mm_sub_epi32(above.a, c0);
      c1 = _mm_sub_epi32(above.b, c1);
    }
    above.a = c0;
    above.b = c1;
    // Unsigned c > 0x3f800000 as a signed comparison with the sign bits flipped.
    const __m128i flip = _mm_set1_epi32(int32_t(0x80000000u));
    const __m128i one = _mm_set1_epi32(int32_t(0x3f800000u ^ 0x80000000u));
    bad = _mm_or_si128(bad, _mm_cmpgt_epi32(_mm_xor_si128(c0, flip), one));
    bad = _mm_or_si128(bad, _mm_cmpgt_epi32(_mm_xor_si128(c1, flip), one));
    f0 = _mm_castsi128_ps(c0);
    f1 = _mm_castsi128_ps(c1);
  }
}

/// Decodes the values of crops [0, N - N % 8) in blocks of 8 crops, all ranks of a block
/// in registers: every 4 ranks are transposed into the crops' rows of `out` ([N][nv]).
/// Returns nonzero when a code is not a probability.
template <int S, bool kDelta>
uint32_t read_values_sse2(const uint8_t* __restrict planes, size_t N, size_t nv,
                          float* __restrict out) {
  const size_t count = N * nv;
  __m128i bad = _mm_setzero_si128();
  for (size_t n = 0; n + 8 <= N; n += 8) {
    const uint8_t* p = planes + n;
    float* o = out + n * nv;
    Codes8 above{_mm_setzero_si128(), _mm_setzero_si128()};
    size_t r = 0;
    for (; r + 4 <= nv; r += 4) {
      __m128 a0, a1, b0, b1, c0, c1, d0, d1;
      value_rank8<S, kDelta>(p + r * N, count, r == 0, above, bad, a0, a1);
      value_rank8<S, kDelta>(p + (r + 1) * N, count, false, above, bad, b0, b1);
      value_rank8<S, kDelta>(p + (r + 2) * N, count, false, above, bad, c0, c1);
      value_rank8<S, kDelta>(p + (r + 3) * N, count, false, above, bad, d0, d1);
      _MM_TRANSPOSE4_PS(a0, b0, c0, d0);
      _MM_TRANSPOSE4_PS(a1, b1, c1, d1);
      float* q = o + r;
      _mm_storeu_ps(q, a0);
      _mm_storeu_ps(q + nv, b0);
      _mm_storeu_ps(q + 2 * nv, c0);
      _mm_storeu_ps(q + 3 * nv, d0);
      q += 4 * nv;
      _mm_storeu_ps(q, a1);
      _mm_storeu_ps(q + nv, b1);
      _mm_storeu_ps(q + 2 * nv, c1);
      _mm_storeu_ps(q + 3 * nv, d1);
    }
    for (; r < nv; ++r) {
      __m128 f0, f1;
      value_rank8<S, kDelta>(p + r * N, count, r == 0, above, bad, f0, f1);
      if (nv == 1) {
        _mm_storeu_ps(o, f0);
        _mm_storeu_ps(o + 4, f1);
        continue;
      }
      alignas(16) float t[8];
      _mm_store_ps(t, f0);
      _mm_store_ps(t + 4, f1);
      for (size_t j = 0; j < 8; ++j) o[j * nv + r] = t[j];
    }
  }
  return uint32_t(_mm_movemask_epi8(_mm_cmpeq_epi8(bad, _mm_setzero_si128())) != 0xffff);
}
#endif

/// Decodes the value planes ([nv][N] codes, rank-major) into `out` ([N][nv] floats).
/// Returns nonzero when a code is not a probability (worst_value_code finds it).
template <int S, bool kDelta>
uint32_t read_values(const uint8_t* planes, size_t N, size_t nv, Scratch& s, float* out) {
  size_t n0 = 0;
  uint32_t bad = 0;
#if defined(__SSE2__)
  bad = read_values_sse2<S, kDelta>(planes, N, nv, out);
  n0 = N - N % 8;
  if (n0 == N) return bad;
#endif
  const size_t M = N - n0;
  if (s.codes.size() < M) s.codes.resize(M);
  if (s.rows.size() < M * nv) s.rows.resize(M * nv);
  return bad | read_value_rows<S, kDelta>(planes, N, nv, n0, s.codes.data(), s.rows.data(), out);
}

/// The largest value code of the planes, for error messages.
uint32_t worst_value_code(const uint8_t* planes, size_t N, size_t nv, int S, bool delta) {
  const size_t count = N * nv;
  const uint32_t mask = S == 4 ? 0xffffffffu : (1u << (8 * S)) - 1u;
  uint32_t worst = 0;
  for (size_t n = 0; n < N; ++n) {
    uint32_t above = 0;
    for (size_t r = 0; r < nv; ++r) {
      uint32_t c = 0;
      for (int b = 0; b < S; ++b) c |= uint32_t(planes[size_t(b) * count + r * N + n]) << (8 * b);
      c = delta && r > 0 ? (above - c) & mask : c;
      worst = std::max(worst, c);
      above = c;
    }
  }
  return worst;
}

}  // namespace

void decode_raw_record(const RecordFormat& f, const uint8_t* raw, size_t raw_size, ImageLabels& out,
                       const Where& w) {
  const size_t N = f.crops_per_image, ni = size_t(f.n_idx()), nv = size_t(f.n_val());
  RecordCursor cur{raw, raw_size, 0, w};
  read_record_header(cur, f, out);
  Scratch& s = scratch();
  out.indices.resize(N * ni);
  if (ni > 0) {
    // W == 1 looks positions up before checking them: 256 entries (past D: any values).
    const uint32_t D = read_dictionary(cur, f, s.dict, 256);
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
    float* v = out.values.data();
    const uint32_t bad = S == 1   ? (delta ? read_values<1, true>(planes, N, nv, s, v)
                                           : read_values<1, false>(planes, N, nv, s, v))
                         : S == 2 ? (delta ? read_values<2, true>(planes, N, nv, s, v)
                                           : read_values<2, false>(planes, N, nv, s, v))
                                  : (delta ? read_values<4, true>(planes, N, nv, s, v)
                                           : read_values<4, false>(planes, N, nv, s, v));
    FKD_CHECK(!bad, FormatError, "{}: value code 0x{:x} is not a probability in [0, 1]", w.str(),
              worst_value_code(planes, N, nv, S, delta));
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
  FKD_CHECK(content == raw_size, FormatError, "{}: zstd frame: expected content size {}, found {}",
            w.str(), raw_size,
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
            w.str(), raw_size,
            ZSTD_isError(n) ? std::string(ZSTD_getErrorName(n)) : std::to_string(n));
  decode_raw_record(f, raw.data(), raw_size, out, w);
}

}  // namespace fkd::store
