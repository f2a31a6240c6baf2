// Record codecs of the label store (docs/label-store.md, "Record" and "Packed record"):
// one image's labels to bytes and back. A record is either the byte-plane layout compressed
// as one zstd frame, or a packed record stored as is. Everything here works on byte buffers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fkd/store.h"

namespace fkd::store {

inline constexpr size_t kRecordHeaderSize = 16;  ///< height, width, crop_hash, num_crops

// Sanity limits (a reader allocates nothing larger than these, whatever a file says).
inline constexpr uint32_t kMaxCropsPerImage = 1u << 20;
inline constexpr uint64_t kMaxRecordBytes = 256ull << 20;  ///< decoded record size
inline constexpr uint32_t kMaxClasses = 0x7fffffffu;       ///< class ids are int32

/// Hot loops built for AVX2 as well, where the compiler can, and picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FKD_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FKD_VECTOR_CLONES
#endif

// --- value codes -----------------------------------------------------------------------
/// IEEE binary32 -> binary16, round to nearest even; subnormals, infinities, NaN kept.
uint16_t float_to_half(float f);
/// IEEE binary16 -> binary32 (exact). Inline: the reader's hot loop.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    const float v = float(m) * 0x1p-24f;  // subnormal or zero: exact, m < 2^10
    std::memcpy(&x, &v, 4);
    x |= sign;
  } else if (e == 31) {
    x = sign | 0x7f800000u | (m << 13);
  } else {
    x = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
/// round(p * 255) (half away from zero), clamped to [0, 255]; NaN -> 0.
uint8_t float_to_u8(float p);
inline float u8_to_float(uint8_t q) { return float(q) / 255.0f; }
/// A value's stored code: fp32 bits, fp16 bits (rounded) or u8 (rounded).
uint32_t value_code(float v, Precision p);
/// row[i] = the value of codes[i] (fp16: exact, also for subnormals; u8: q / 255). Codes
/// above the precision's range convert to some float (callers reject them separately).
void codes_to_floats(Precision p, const uint32_t* codes, float* row, size_t n);

// --- records -------------------------------------------------------------------------
/// What a record's encoding depends on.
struct RecordFormat {
  LabelType label_type = LabelType::kMarginalSmoothing;
  int k = 5;
  int num_classes = 0;
  Precision precision = Precision::kFp16;
  uint32_t crops_per_image = 0;
  bool explicit_crops = false;  ///< records carry their crops' boxes (CropOrigin::kExplicit)
  int n_idx() const { return stored_indices(label_type, k); }
  int n_val() const { return stored_values(label_type, k, num_classes); }
  /// Bytes per stored value code: 4 (fp32), 2 (fp16), 1 (u8).
  int value_bytes() const;
  /// Largest decoded record this format allows (a bound, checked against kMaxRecordBytes).
  uint64_t max_raw_size() const;
};
RecordFormat record_format(const Manifest& m);

/// Checks `labels` against the format (sizes, index range and distinctness, values in
/// [0, 1], image size). Throws DataError naming `where`.
void check_labels(const RecordFormat& f, const ImageLabels& labels, const std::string& where);
/// Encodes a record (values rounded to the precision) into `raw` (docs: "Record").
/// `labels` must have passed check_labels. `sections` receives the end offset of each
/// section / byte plane (where compress_record ends a zstd block).
void encode_record(const RecordFormat& f, const ImageLabels& labels, std::vector<uint8_t>& raw,
                   std::vector<size_t>& sections);
/// Compresses an encoded record into one zstd frame (replacing `out`), ending a zstd block
/// at each section end so every byte plane gets its own entropy tables. Deterministic.
void compress_record(const std::vector<uint8_t>& raw, const std::vector<size_t>& sections,
                     std::vector<uint8_t>& out);
/// zstd level the writer uses for a record of this size (not part of the format).
int compression_level(size_t raw_size);
/// Where a record lives, for error messages (formatted only when an error is raised).
struct Where {
  const std::string& file;
  uint64_t image = 0;
  uint64_t offset = 0;      ///< of the record's block
  std::string str() const;  ///< "FILE: image I (block at offset O)"
};
/// A bounds-checked cursor over a record; errors name the record and the offset.
struct RecordCursor {
  const uint8_t* base;
  size_t size, pos;
  const Where& w;
  const uint8_t* take(size_t n, const char* what);  ///< n bytes, or FormatError
  uint32_t varint(const char* what);                ///< LEB128, at most 5 bytes and 32 bits
};
/// LEB128 (7 bits per byte, low first).
void put_varint(std::vector<uint8_t>& b, uint32_t v);
/// Bits of one field of a crop box along an image side of `side` pixels: bits(side - 1)
/// (the box's offset and its extent minus 1 both lie in [0, side - 1]).
int box_field_bits(uint32_t side);
/// Bytes of the box section of a record of N crops of an H x W image (docs: "Explicit
/// crops"): N crops of 2 bits(W-1) + 2 bits(H-1) + 1 bits, packed LSB-first.
uint64_t box_section_bytes(uint64_t N, uint32_t height, uint32_t width);
/// "" when every box of `l` (explicit crops) lies inside its height x width image with a
/// size of at least 1, else which crop is not and why.
std::string boxes_problem(const ImageLabels& l);
/// Appends the 16-byte record header (height, width, crop_hash, num_crops), then, for
/// explicit crops, the box section; crop_hash is then the hash of l.boxes.
void put_record_header(std::vector<uint8_t>& b, const RecordFormat& f, const ImageLabels& l);
/// Appends the dictionary of l's class ids (count, then ascending ids delta coded) and
/// leaves those ids, ascending, in `dict`.
void put_dictionary(std::vector<uint8_t>& b, const ImageLabels& l, std::vector<int32_t>& dict);
/// Reads and checks the 16-byte record header (crop count, image size) into `out`; for
/// explicit crops also the box section (every box inside the image, crop hash of the boxes),
/// else clears out.boxes.
void read_record_header(RecordCursor& cur, const RecordFormat& f, ImageLabels& out);
/// Reads and checks the dictionary (size D in [1, min(C, N*NI)], ascending ids below C)
/// into dict[0, D), growing `dict` to at least max(D, min_entries). Returns D.
uint32_t read_dictionary(RecordCursor& cur, const RecordFormat& f, std::vector<int32_t>& dict,
                         size_t min_entries);
/// Decodes a record from its zstd payload.
void decode_record(const RecordFormat& f, const uint8_t* payload, size_t payload_size,
                   uint32_t raw_size, ImageLabels& out, const Where& where);
/// Decodes an uncompressed record (the part after zstd).
void decode_raw_record(const RecordFormat& f, const uint8_t* raw, size_t raw_size, ImageLabels& out,
                       const Where& where);

// --- packed records ------------------------------------------------------------------
/// The first format version with packed records.
inline constexpr int kPackedSince = 2;
/// Ranks whose positions a packed record's later ranks exclude (see "Packed record").
inline constexpr size_t kExcludedRanks = 8;
/// True when records of this format may be packed (every label type but `full`).
bool packable(const RecordFormat& f);
/// Encodes a record as a packed record (values rounded to the precision). Returns false,
/// leaving `out` unspecified, when it cannot be: a `full` record, values that do not
/// descend within a crop, or a packed size above max_raw_size(). `labels` must have passed
/// check_labels.
bool encode_packed_record(const RecordFormat& f, const ImageLabels& labels,
                          std::vector<uint8_t>& out);
/// Decodes a packed record, checking every field (FormatError naming `where`).
void decode_packed_record(const RecordFormat& f, const uint8_t* data, size_t size, ImageLabels& out,
                          const Where& where);

}  // namespace fkd::store
