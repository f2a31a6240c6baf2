// Internals of the label store's shard files (docs/label-store.md is the specification).
//
// Shard file layout (all integers little-endian, no padding or alignment):
//   [0, 128)                 ShardHeader (checksummed)
//   [128, index_offset)      one Block per image of [image_begin, image_end), in id order:
//                              32-byte block header + payload (one zstd frame of the record)
//   [index_offset, size-32)  IndexEntry[image_end - image_begin], 24 bytes each
//   [size-32, size)          Footer (index checksum, end magic)
// A ".partial" file is a header followed by blocks only; finish() appends index and footer.
//
// Everything here parses byte buffers, so format tests and the fuzzer need no files; the
// StoreReader runs the same code on a read-only mmap.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fkd/store.h"

namespace fkd::store {

inline constexpr char kShardMagic[8] = {'F', 'K', 'D', 'L', 'A', 'B', 'E', 'L'};
inline constexpr char kBlockMagic[4] = {'F', 'K', 'D', 'B'};
inline constexpr char kEndMagic[8] = {'F', 'K', 'D', 'L', '_', 'E', 'N', 'D'};
inline constexpr uint32_t kFormatVersion = 2;  ///< bumped only for structural changes
inline constexpr size_t kHeaderSize = 128;
inline constexpr size_t kBlockHeaderSize = 32;
inline constexpr size_t kIndexEntrySize = 24;
inline constexpr size_t kFooterSize = 32;
inline constexpr size_t kRecordHeaderSize = 16;  ///< height, width, crop_hash, num_crops

// Sanity limits (a reader allocates nothing larger than these, whatever a file says).
inline constexpr uint32_t kMaxCropsPerImage = 1u << 20;
inline constexpr const char* kRandomResizedCrop = "random_resized_crop";  ///< crop samplers
inline constexpr const char* kRandomCrop = "random_crop";
inline constexpr uint32_t kMaxShards = 99999;          ///< shard names have 5 digits
inline constexpr uint64_t kMaxRecordBytes = 256ull << 20;  ///< decoded record size
inline constexpr uint32_t kMaxClasses = 0x7fffffffu;   ///< class ids are int32

// --- little-endian access (memcpy: fields are unaligned) -----------------------------
inline uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t load_u64(const uint8_t* p) { return uint64_t(load_u32(p)) | uint64_t(load_u32(p + 4)) << 32; }
inline uint16_t load_u16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
inline void store_u16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
inline void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
inline void store_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

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

/// XXH3-64 (seed 0) of a byte range: the checksum of headers and indexes.
uint64_t checksum64(const uint8_t* data, size_t size);
/// A block's checksum: XXH3-64 of bytes [16, 32 + payload_size) of the block, seeded with
/// the little-endian u64 at bytes [0, 8) (magic and payload size), so it covers every
/// byte of the block except itself.
uint64_t block_checksum(const uint8_t* block, size_t payload_size);

/// Human-readable rendering of up to n raw bytes for error messages: 'FKDLABEL' or hex.
std::string show_bytes(const uint8_t* p, size_t n);

// --- shard header ------------------------------------------------------------------
struct ShardHeader {
  uint32_t version = kFormatVersion;
  uint32_t shard_index = 0;
  uint32_t shard_count = 1;
  uint64_t image_begin = 0;
  uint64_t image_end = 0;
  uint64_t num_images = 0;  ///< of the whole store
  uint32_t crops_per_image = 0;
  uint32_t num_classes = 0;
  LabelType label_type = LabelType::kMarginalSmoothing;
  Precision precision = Precision::kFp16;
  uint32_t k = 0;
  uint64_t store_key = 0;  ///< store_key(manifest)
};

/// The header a shard of this manifest must have.
ShardHeader header_for(const Manifest& m, uint32_t shard_index);
/// The 128 header bytes, checksum included.
std::vector<uint8_t> encode_header(const ShardHeader& h);
/// Parses and checks a header (magic, version, size, checksum, field ranges). `size` is
/// the whole buffer size. Throws FormatError naming `name`, the offset, expected and found.
ShardHeader decode_header(const uint8_t* data, size_t size, const std::string& name,
                          bool verify_checksum = true);

/// XXH3-64 of the manifest's identity: every field manifest_differences compares, in a
/// canonical binary form (docs/label-store.md, "Store key").
uint64_t store_key(const Manifest& m);

/// "" when k is valid for the label type and class count, else what is wrong.
std::string k_problem(LabelType t, int64_t k, uint64_t num_classes);

/// Checks a manifest's values (ranges, k for the label type, record size limit).
/// Returns the first problem as "field: what is wrong", or "" when valid.
std::string manifest_problem(const Manifest& m);

// --- records -------------------------------------------------------------------------
/// What a record's encoding depends on.
struct RecordFormat {
  LabelType label_type = LabelType::kMarginalSmoothing;
  int k = 5;
  int num_classes = 0;
  Precision precision = Precision::kFp16;
  uint32_t crops_per_image = 0;
  int n_idx() const { return stored_indices(label_type, k); }
  int n_val() const { return stored_values(label_type, k, num_classes); }
  /// Bytes per stored value code: 4 (fp32), 2 (fp16), 1 (u8).
  int value_bytes() const;
  /// Largest decoded record this format allows (a bound, checked against kMaxRecordBytes).
  uint64_t max_raw_size() const;
};
RecordFormat record_format(const ShardHeader& h);
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
  uint64_t offset = 0;  ///< of the record's block
  std::string str() const;  ///< "FILE: image I (block at offset O)"
};
/// A bounds-checked cursor over a record; errors name the record and the offset.
struct RecordCursor {
  const uint8_t* base;
  size_t size, pos;
  const Where& w;
  const uint8_t* take(size_t n, const char* what);  ///< n bytes, or FormatError
  uint32_t varint(const char* what);               ///< LEB128, at most 5 bytes and 32 bits
};
/// LEB128 (7 bits per byte, low first).
void put_varint(std::vector<uint8_t>& b, uint32_t v);
/// Appends the 16-byte record header (height, width, crop_hash, num_crops).
void put_record_header(std::vector<uint8_t>& b, const ImageLabels& l);
/// Appends the dictionary of l's class ids (count, then ascending ids delta coded) and
/// leaves those ids, ascending, in `dict`.
void put_dictionary(std::vector<uint8_t>& b, const ImageLabels& l, std::vector<int32_t>& dict);
/// Reads and checks the 16-byte record header (crop count, image size) into `out`.
void read_record_header(RecordCursor& cur, const RecordFormat& f, ImageLabels& out);
/// Reads and checks the dictionary (size D in [1, min(C, N*NI)], ascending ids below C)
/// into dict[0, D), growing `dict` to at least max(D, min_entries). Returns D.
uint32_t read_dictionary(RecordCursor& cur, const RecordFormat& f, std::vector<int32_t>& dict,
                         size_t min_entries);
/// Decodes a record from its zstd payload.
void decode_record(const RecordFormat& f, const uint8_t* payload, size_t payload_size,
                   uint32_t raw_size, ImageLabels& out, const Where& where);
/// Decodes an uncompressed record (the part after zstd).
void decode_raw_record(const RecordFormat& f, const uint8_t* raw, size_t raw_size,
                       ImageLabels& out, const Where& where);

/// Hot loops built for AVX2 as well, where the compiler can, and picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FKD_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FKD_VECTOR_CLONES
#endif

/// How a block's payload encodes its record (BlockHeader.codec; version 1 knows only zstd).
enum class Codec : uint32_t {
  kZstd = 0,    ///< a zstd frame of the record layout above ("Record")
  kPacked = 1,  ///< the packed record ("Packed record"), stored as is
};
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
bool encode_packed_record(const RecordFormat& f, const ImageLabels& labels, std::vector<uint8_t>& out);
/// Decodes a packed record, checking every field (FormatError naming `where`).
void decode_packed_record(const RecordFormat& f, const uint8_t* data, size_t size,
                          ImageLabels& out, const Where& where);

/// A value's stored code: fp32 bits, fp16 bits (rounded) or u8 (rounded).
uint32_t value_code(float v, Precision p);
/// row[i] = the value of codes[i] (fp16: exact, also for subnormals; u8: q / 255). Codes
/// above the precision's range convert to some float (callers reject them separately).
void codes_to_floats(Precision p, const uint32_t* codes, float* row, size_t n);

// --- blocks and index ------------------------------------------------------------------
struct IndexEntry {
  uint64_t offset = 0;  ///< of the block header, from the start of the file
  uint32_t payload_size = 0;
  uint32_t raw_size = 0;
  uint64_t checksum = 0;  ///< the block's checksum
};

/// One block's bytes: header + payload, built by make_block.
void make_block(uint64_t image_id, const std::vector<uint8_t>& payload, uint32_t raw_size,
                Codec codec, std::vector<uint8_t>& block);
/// "" when a block header's codec field is valid for the shard (version 1: zstd only;
/// packed: not for `full`, payload size == record size), else what is wrong.
std::string codec_problem(const ShardHeader& h, uint32_t codec, uint32_t payload_size,
                          uint32_t raw_size);

/// Result of scanning the blocks after a header (a .partial file, or a shard's data area).
struct BlockScan {
  std::vector<IndexEntry> entries;  ///< the verified blocks, in order
  uint64_t end = kHeaderSize;       ///< offset just past the last verified block
  std::string stop_reason;          ///< why the scan stopped before `limit` ("" if it did not)
};
/// Walks blocks from offset 128 while each is complete, has the next image id (from
/// h.image_begin), sane sizes and a good checksum; stops at the first that is not.
BlockScan scan_blocks(const uint8_t* data, size_t size, const ShardHeader& h,
                      const std::string& name, bool verify_checksums = true);

std::vector<uint8_t> encode_index_and_footer(const std::vector<IndexEntry>& entries,
                                             uint64_t index_offset);

struct ParseOptions {
  bool verify_checksums = true;  ///< false only for the fuzzer (to reach the decoders)
};

/// A complete shard in memory (not owned): header, index and footer checked on parse;
/// block checksums verified on every read.
class ShardView {
 public:
  static ShardView parse(const uint8_t* data, size_t size, const std::string& name,
                         ParseOptions opts = {});
  const ShardHeader& header() const { return header_; }
  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }
  /// Entry of image `image_id` (must be in the shard's range).
  const IndexEntry& entry(uint64_t image_id) const;
  /// Checks image `image_id`'s block (magic, id, sizes, checksum); returns its bytes.
  const uint8_t* checked_block(uint64_t image_id) const;
  /// Decodes image `image_id`'s record (checked_block + decode_record).
  void read(uint64_t image_id, ImageLabels& out) const;

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  std::string name_;
  ShardHeader header_;
  RecordFormat format_;
  std::vector<IndexEntry> index_;
  ParseOptions opts_;
};

// --- files -------------------------------------------------------------------------
/// A read-only memory map of a whole file (empty files map to nothing).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  ///< IoError if it cannot be opened
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

/// Crash-safe writer of one shard file from ready-made blocks (used by ShardWriter and
/// merge_store): appends to "<path>.partial", resumes from it, publishes on finish.
class ShardFile {
 public:
  /// Opens (creating, or resuming from a .partial whose header equals `h`) the shard
  /// `path`. If `path` itself exists the shard is finished and nothing is opened.
  ShardFile(const std::string& path, const ShardHeader& h);
  ~ShardFile();
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;
  bool finished() const { return finished_; }
  uint64_t next_image() const;
  /// Appends a complete block (block header + payload) of image next_image().
  void append_block(const uint8_t* block, size_t size);
  void finish();

 private:
  void resume(const std::vector<uint8_t>& header_bytes);
  void sync();
  std::string path_, partial_;
  ShardHeader header_;
  int fd_ = -1;
  bool finished_ = false;
  uint64_t end_ = 0;  ///< file size
  std::vector<IndexEntry> entries_;
  uint32_t unsynced_ = 0;
  double last_sync_ = 0;
};

/// Blocks between fsyncs of a .partial (also synced every kSyncSeconds and on finish).
inline constexpr uint32_t kSyncEveryBlocks = 256;
inline constexpr double kSyncSeconds = 10.0;

/// fsync of a directory (after a rename into it). IoError on failure.
void sync_directory(const std::string& dir);

}  // namespace fkd::store
