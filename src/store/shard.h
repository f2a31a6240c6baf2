// Shard files of the label store, as bytes (docs/label-store.md is the specification).
//
// Shard file layout (all integers little-endian, no padding or alignment):
//   [0, 128)                 ShardHeader (checksummed)
//   [128, index_offset)      one Block per image of [image_begin, image_end), in id order:
//                              32-byte block header + payload (the image's record)
//   [index_offset, size-32)  IndexEntry[image_end - image_begin], 24 bytes each
//   [size-32, size)          Footer (index checksum, end magic)
// A ".partial" file is a header followed by blocks only; finish() appends index and footer.
//
// Everything here parses byte buffers, so format tests and the fuzzer need no files; the
// StoreReader runs the same code on a read-only mmap (shard_file.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fkd/store.h"
#include "store/bytes.h"
#include "store/record.h"

namespace fkd::store {

inline constexpr char kShardMagic[8] = {'F', 'K', 'D', 'L', 'A', 'B', 'E', 'L'};
inline constexpr char kBlockMagic[4] = {'F', 'K', 'D', 'B'};
inline constexpr char kEndMagic[8] = {'F', 'K', 'D', 'L', '_', 'E', 'N', 'D'};
inline constexpr size_t kHeaderSize = 128;
inline constexpr size_t kBlockHeaderSize = 32;
inline constexpr size_t kIndexEntrySize = 24;
inline constexpr size_t kFooterSize = 32;

// --- shard header ------------------------------------------------------------------
struct ShardHeader {
  uint32_t version = kStoreFormatVersion;  ///< format version the shard is written in
  uint32_t shard_index = 0;                ///< this shard's index in [0, shard_count)
  uint32_t shard_count = 1;                ///< shards of the store (manifest num_shards)
  uint64_t image_begin = 0;                ///< first image id of the shard
  uint64_t image_end = 0;                  ///< one past the last image id
  uint64_t num_images = 0;                 ///< of the whole store
  uint32_t crops_per_image = 0;            ///< crops in every record
  uint32_t num_classes = 0;                ///< classes of the teacher's output
  LabelType label_type = LabelType::kMarginalSmoothing;  ///< how labels are quantized
  Precision precision = Precision::kFp16;                ///< how values are stored
  uint32_t k = 0;                                        ///< top-k of the label type
  CropOrigin crop_origin = CropOrigin::kDerived;  ///< byte 58 (version 3 on): records hold boxes
  uint64_t store_key = 0;                         ///< store_key(manifest)
};

/// The header a shard of this manifest must have.
ShardHeader header_for(const Manifest& m, uint32_t shard_index);
/// The 128 header bytes, checksum included.
std::vector<uint8_t> encode_header(const ShardHeader& h);
/// Parses and checks a header (magic, version, size, checksum, field ranges). `size` is
/// the whole buffer size. Throws FormatError naming `name`, the offset, expected and found.
ShardHeader decode_header(const uint8_t* data, size_t size, const std::string& name,
                          bool verify_checksum = true);
/// What records of this shard hold (label type, k, classes, precision, crops).
RecordFormat record_format(const ShardHeader& h);

// --- blocks and index ------------------------------------------------------------------
struct IndexEntry {
  uint64_t offset = 0;  ///< of the block header, from the start of the file
  uint32_t payload_size = 0;
  uint32_t raw_size = 0;
  uint64_t checksum = 0;  ///< the block's checksum
};

/// How a block's payload encodes its record (BlockHeader.codec; version 1 knows only zstd).
enum class Codec : uint32_t {
  kZstd = 0,    ///< a zstd frame of the record layout (record.h, "Record")
  kPacked = 1,  ///< the packed record ("Packed record"), stored as is
};
/// A block's checksum: checksum64 of bytes [16, 32 + payload_size) of the block, seeded with
/// the little-endian u64 at bytes [0, 8) (magic and payload size), so it covers every
/// byte of the block except itself.
uint64_t block_checksum(const uint8_t* block, size_t payload_size);
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

}  // namespace fkd::store
