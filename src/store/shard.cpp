// Shard file structure: header, blocks, index, footer; the suspicious parser (ShardView)
// and the block scanner used to resume a .partial file.
#include <zstd.h>

#include <cstring>

#include <fmt/format.h>

#include "fkd/error.h"
#include "store/manifest.h"
#include "store/shard.h"

namespace fkd::store {

uint64_t block_checksum(const uint8_t* block, size_t payload_size) {
  return checksum64(block + 16, kBlockHeaderSize - 16 + payload_size, load_u64(block));
}

ShardHeader header_for(const Manifest& m, uint32_t shard_index) {
  ShardHeader h;
  h.version = uint32_t(m.version);
  h.shard_index = shard_index;
  h.shard_count = m.num_shards;
  std::tie(h.image_begin, h.image_end) = shard_range(m.num_images, shard_index, m.num_shards);
  h.num_images = m.num_images;
  h.crops_per_image = m.crops_per_image;
  h.num_classes = uint32_t(m.classes.size());
  h.label_type = m.label_type;
  h.precision = m.precision;
  h.k = uint32_t(m.k);
  h.crop_origin = m.crop_origin;
  h.store_key = store_key(m);
  return h;
}

RecordFormat record_format(const ShardHeader& h) {
  RecordFormat f;
  f.label_type = h.label_type;
  f.k = int(h.k);
  f.num_classes = int(h.num_classes);
  f.precision = h.precision;
  f.crops_per_image = h.crops_per_image;
  f.explicit_crops = h.crop_origin == CropOrigin::kExplicit;
  return f;
}

// Header field offsets (docs/label-store.md, "Shard header").
namespace off {
constexpr size_t kVersion = 8, kHeaderSize = 12, kShardIndex = 16, kShardCount = 20,
                 kImageBegin = 24, kImageEnd = 32, kNumImages = 40, kCropCount = 48, kClasses = 52,
                 kLabelType = 56, kPrecision = 57, kCrops = 58, kReserved0 = 59, kK = 60,
                 kStoreKey = 64, kReserved = 72, kChecksum = 120;
}  // namespace off

std::vector<uint8_t> encode_header(const ShardHeader& h) {
  std::vector<uint8_t> b(kHeaderSize, 0);
  std::memcpy(b.data(), kShardMagic, 8);
  store_u32(&b[off::kVersion], h.version);
  store_u32(&b[off::kHeaderSize], uint32_t(kHeaderSize));
  store_u32(&b[off::kShardIndex], h.shard_index);
  store_u32(&b[off::kShardCount], h.shard_count);
  store_u64(&b[off::kImageBegin], h.image_begin);
  store_u64(&b[off::kImageEnd], h.image_end);
  store_u64(&b[off::kNumImages], h.num_images);
  store_u32(&b[off::kCropCount], h.crops_per_image);
  b[off::kCrops] = uint8_t(h.crop_origin);
  store_u32(&b[off::kClasses], h.num_classes);
  b[off::kLabelType] = uint8_t(h.label_type);
  b[off::kPrecision] = uint8_t(h.precision);
  store_u32(&b[off::kK], h.k);
  store_u64(&b[off::kStoreKey], h.store_key);
  store_u64(&b[off::kChecksum], checksum64(b.data(), off::kChecksum));
  return b;
}

ShardHeader decode_header(const uint8_t* d, size_t size, const std::string& name,
                          bool verify_checksum) {
  FKD_CHECK(size >= 12, FormatError,
            "{}: offset 0: expected a {}-byte shard header, found a {}-byte file", name,
            kHeaderSize, size);
  FKD_CHECK(std::memcmp(d, kShardMagic, 8) == 0, FormatError,
            "{}: offset 0: expected magic 'FKDLABEL', found {} (not an fkd label shard)", name,
            show_bytes(d, 8));
  ShardHeader h;
  h.version = load_u32(d + off::kVersion);
  FKD_CHECK(h.version <= uint32_t(kStoreFormatVersion), FormatError,
            "{}: offset 8: format version {} is newer than this fkd supports ({}): upgrade fkd",
            name, h.version, kStoreFormatVersion);
  FKD_CHECK(h.version >= 1, FormatError,
            "{}: offset 8: format version {}: no fkd version wrote it (versions are 1 to {})", name,
            h.version, kStoreFormatVersion);
  FKD_CHECK(size >= kHeaderSize, FormatError,
            "{}: offset 0: expected a {}-byte shard header, found a {}-byte file", name,
            kHeaderSize, size);
  const uint32_t header_size = load_u32(d + off::kHeaderSize);
  FKD_CHECK(header_size == kHeaderSize, FormatError,
            "{}: offset 12: expected header size {}, found {}", name, kHeaderSize, header_size);
  const uint64_t stored = load_u64(d + off::kChecksum);
  if (verify_checksum) {
    const uint64_t actual = checksum64(d, off::kChecksum);
    FKD_CHECK(stored == actual, FormatError,
              "{}: offset 120: header checksum mismatch: expected 0x{:016x} (of bytes 0..119), "
              "found 0x{:016x} (the header is corrupt)",
              name, actual, stored);
  }
  h.shard_index = load_u32(d + off::kShardIndex);
  h.shard_count = load_u32(d + off::kShardCount);
  h.image_begin = load_u64(d + off::kImageBegin);
  h.image_end = load_u64(d + off::kImageEnd);
  h.num_images = load_u64(d + off::kNumImages);
  h.crops_per_image = load_u32(d + off::kCropCount);
  h.num_classes = load_u32(d + off::kClasses);
  const uint8_t lt = d[off::kLabelType], pr = d[off::kPrecision];
  FKD_CHECK(lt <= uint8_t(LabelType::kFull), FormatError,
            "{}: offset 56: unknown label type {} (expected 0..4: hard, smoothing, "
            "marginal_smoothing, marginal_renorm, full)",
            name, lt);
  FKD_CHECK(pr <= uint8_t(Precision::kU8), FormatError,
            "{}: offset 57: unknown precision {} (expected 0..2: fp32, fp16, u8)", name, pr);
  h.label_type = LabelType(lt);
  h.precision = Precision(pr);
  h.k = load_u32(d + off::kK);
  h.store_key = load_u64(d + off::kStoreKey);
  // Byte 58 was reserved (0) before explicit crops.
  const uint8_t crops = d[off::kCrops];
  FKD_CHECK(
      crops == 0 ||
          (crops == uint8_t(CropOrigin::kExplicit) && h.version >= uint32_t(kExplicitCropsSince)),
      FormatError, "{}: offset 58: expected crop origin 0 (derived){}, found {}", name,
      h.version >= uint32_t(kExplicitCropsSince) ? " or 1 (explicit)" : " in a version < 3 shard",
      crops);
  h.crop_origin = CropOrigin(crops);
  FKD_CHECK(d[off::kReserved0] == 0, FormatError,
            "{}: offset 59: expected reserved byte 0, found {}", name, d[off::kReserved0]);
  for (size_t i = off::kReserved; i < off::kChecksum; ++i) {
    FKD_CHECK(d[i] == 0, FormatError, "{}: offset {}: expected reserved byte 0, found {}", name, i,
              d[i]);
  }
  FKD_CHECK(h.shard_count >= 1 && h.shard_count <= kMaxShards && h.shard_index < h.shard_count,
            FormatError, "{}: offset 16: shard {} of {} is not a valid shard (count 1..{})", name,
            h.shard_index, h.shard_count, kMaxShards);
  FKD_CHECK(h.image_begin <= h.image_end && h.image_end <= h.num_images, FormatError,
            "{}: offset 24: image range [{}, {}) is not inside [0, {})", name, h.image_begin,
            h.image_end, h.num_images);
  FKD_CHECK(h.crops_per_image >= 1 && h.crops_per_image <= kMaxCropsPerImage, FormatError,
            "{}: offset 48: crops per image {} is not in [1, {}]", name, h.crops_per_image,
            kMaxCropsPerImage);
  FKD_CHECK(h.num_classes >= 1 && h.num_classes <= kMaxClasses, FormatError,
            "{}: offset 52: class count {} is not in [1, {}]", name, h.num_classes, kMaxClasses);
  const std::string kp = k_problem(h.label_type, int64_t(h.k), h.num_classes);
  FKD_CHECK(kp.empty(), FormatError, "{}: offset 60: k {}", name, kp);
  const uint64_t max_raw = record_format(h).max_raw_size();
  FKD_CHECK(max_raw <= kMaxRecordBytes, FormatError,
            "{}: offset 48: records of {} crops could need {} bytes, more than the limit {}", name,
            h.crops_per_image, max_raw, kMaxRecordBytes);
  return h;
}

std::string codec_problem(const ShardHeader& h, uint32_t codec, uint32_t payload_size,
                          uint32_t raw_size) {
  if (codec == uint32_t(Codec::kZstd)) return "";
  if (h.version < uint32_t(kPackedSince))
    return fmt::format("codec {} in a version {} shard (only 0, zstd)", codec, h.version);
  if (codec != uint32_t(Codec::kPacked)) return fmt::format("unknown codec {}", codec);
  if (!packable(record_format(h))) return "a packed record in a store of full labels";
  if (payload_size != raw_size)
    return fmt::format("a packed record of {} bytes with a payload of {}", raw_size, payload_size);
  return "";
}

void make_block(uint64_t image_id, const std::vector<uint8_t>& payload, uint32_t raw_size,
                Codec codec, std::vector<uint8_t>& block) {
  block.resize(kBlockHeaderSize + payload.size());
  uint8_t* b = block.data();
  std::memcpy(b, kBlockMagic, 4);
  store_u32(b + 4, uint32_t(payload.size()));
  store_u64(b + 16, image_id);
  store_u32(b + 24, raw_size);
  store_u32(b + 28, uint32_t(codec));
  std::memcpy(b + kBlockHeaderSize, payload.data(), payload.size());
  store_u64(b + 8, block_checksum(b, payload.size()));
}

BlockScan scan_blocks(const uint8_t* data, size_t size, const ShardHeader& h,
                      const std::string& name, bool verify_checksums) {
  BlockScan s;
  const uint64_t max_raw = record_format(h).max_raw_size();
  uint64_t pos = kHeaderSize;
  for (uint64_t id = h.image_begin; id < h.image_end; ++id) {
    if (size - pos < kBlockHeaderSize) {
      if (size != pos)
        s.stop_reason = fmt::format("{}: offset {}: torn block header of image {}", name, pos, id);
      break;
    }
    const uint8_t* b = data + pos;
    const uint32_t payload = load_u32(b + 4), raw = load_u32(b + 24);
    const uint64_t image = load_u64(b + 16);
    if (std::memcmp(b, kBlockMagic, 4) != 0) {
      s.stop_reason = fmt::format("{}: offset {}: expected block magic 'FKDB', found {}", name, pos,
                                  show_bytes(b, 4));
      break;
    }
    if (image != id || raw < kRecordHeaderSize || raw > max_raw ||
        payload > ZSTD_COMPRESSBOUND(raw) ||
        !codec_problem(h, load_u32(b + 28), payload, raw).empty()) {
      s.stop_reason = fmt::format(
          "{}: offset {}: block header of image {} is inconsistent (image {}, payload {} bytes, "
          "record {} bytes)",
          name, pos, id, image, payload, raw);
      break;
    }
    if (size - pos - kBlockHeaderSize < payload) {
      s.stop_reason =
          fmt::format("{}: offset {}: torn block of image {}: {} of {} payload bytes present", name,
                      pos, id, size - pos - kBlockHeaderSize, payload);
      break;
    }
    const uint64_t stored = load_u64(b + 8);
    if (verify_checksums && block_checksum(b, payload) != stored) {
      s.stop_reason =
          fmt::format("{}: offset {}: block of image {} fails its checksum", name, pos, id);
      break;
    }
    s.entries.push_back({pos, payload, raw, stored});
    pos += kBlockHeaderSize + payload;
  }
  if (s.stop_reason.empty() && pos != size) {
    s.stop_reason =
        fmt::format("{}: offset {}: {} bytes after the last block", name, pos, size - pos);
  }
  s.end = pos;
  return s;
}

// Footer field offsets, relative to the footer's start (file size - 32).
namespace foot {
constexpr size_t kIndexOffset = 0, kNumEntries = 8, kIndexChecksum = 16, kMagic = 24;
}

std::vector<uint8_t> encode_index_and_footer(const std::vector<IndexEntry>& entries,
                                             uint64_t index_offset) {
  std::vector<uint8_t> b(entries.size() * kIndexEntrySize + kFooterSize);
  for (size_t i = 0; i < entries.size(); ++i) {
    uint8_t* e = b.data() + i * kIndexEntrySize;
    store_u64(e, entries[i].offset);
    store_u32(e + 8, entries[i].payload_size);
    store_u32(e + 12, entries[i].raw_size);
    store_u64(e + 16, entries[i].checksum);
  }
  const size_t index_bytes = entries.size() * kIndexEntrySize;
  uint8_t* f = b.data() + index_bytes;
  store_u64(f + foot::kIndexOffset, index_offset);
  store_u64(f + foot::kNumEntries, entries.size());
  store_u64(f + foot::kIndexChecksum, checksum64(b.data(), index_bytes));
  std::memcpy(f + foot::kMagic, kEndMagic, 8);
  return b;
}

ShardView ShardView::parse(const uint8_t* data, size_t size, const std::string& name,
                           ParseOptions opts) {
  ShardView v;
  v.data_ = data;
  v.size_ = size;
  v.name_ = name;
  v.opts_ = opts;
  v.header_ = decode_header(data, size, name, opts.verify_checksums);
  const ShardHeader& h = v.header_;
  v.format_ = record_format(h);
  FKD_CHECK(size >= kHeaderSize + kFooterSize, FormatError,
            "{}: offset {}: footer missing: the file ends after {} bytes (the shard is truncated, "
            "or an unfinished .partial)",
            name, size, size);
  const uint8_t* f = data + size - kFooterSize;
  FKD_CHECK(std::memcmp(f + foot::kMagic, kEndMagic, 8) == 0, FormatError,
            "{}: offset {}: footer missing: expected end magic 'FKDL_END', found {} (the shard is "
            "truncated, or an unfinished .partial)",
            name, size - 8, show_bytes(f + foot::kMagic, 8));
  const uint64_t index_offset = load_u64(f + foot::kIndexOffset);
  const uint64_t count = load_u64(f + foot::kNumEntries);
  const uint64_t fits = (size - kHeaderSize - kFooterSize) / kIndexEntrySize;
  FKD_CHECK(count <= fits, FormatError,
            "{}: offset {}: index of {} entries ({} bytes each) does not fit in the {}-byte file "
            "(at most {})",
            name, size - kFooterSize + foot::kNumEntries, count, kIndexEntrySize, size, fits);
  const uint64_t expected_count = h.image_end - h.image_begin;
  FKD_CHECK(count == expected_count, FormatError,
            "{}: offset {}: expected {} index entries (images [{}, {})), found {}", name,
            size - kFooterSize + foot::kNumEntries, expected_count, h.image_begin, h.image_end,
            count);
  const uint64_t expected_offset = size - kFooterSize - count * kIndexEntrySize;
  FKD_CHECK(index_offset == expected_offset, FormatError,
            "{}: offset {}: expected index offset {}, found {}", name, size - kFooterSize,
            expected_offset, index_offset);
  const uint8_t* index = data + index_offset;
  if (opts.verify_checksums) {
    const uint64_t stored = load_u64(f + foot::kIndexChecksum);
    const uint64_t actual = checksum64(index, count * kIndexEntrySize);
    FKD_CHECK(stored == actual, FormatError,
              "{}: offset {}: index checksum mismatch: expected 0x{:016x}, found 0x{:016x} (the "
              "index is corrupt)",
              name, size - kFooterSize + foot::kIndexChecksum, actual, stored);
  }
  // The blocks must tile [header end, index) exactly, in image order.
  const uint64_t max_raw = v.format_.max_raw_size();
  v.index_.resize(count);
  uint64_t expect = kHeaderSize;
  for (uint64_t i = 0; i < count; ++i) {
    const uint8_t* e = index + i * kIndexEntrySize;
    IndexEntry& x = v.index_[i];
    x.offset = load_u64(e);
    x.payload_size = load_u32(e + 8);
    x.raw_size = load_u32(e + 12);
    x.checksum = load_u64(e + 16);
    const uint64_t at = index_offset + i * kIndexEntrySize;
    FKD_CHECK(x.offset == expect, FormatError,
              "{}: offset {}: index entry of image {}: expected block offset {}, found {}", name,
              at, h.image_begin + i, expect, x.offset);
    FKD_CHECK(x.raw_size >= kRecordHeaderSize && x.raw_size <= max_raw, FormatError,
              "{}: offset {}: index entry of image {}: record size {} is not in [{}, {}]", name,
              at + 12, h.image_begin + i, x.raw_size, kRecordHeaderSize, max_raw);
    FKD_CHECK(x.payload_size <= ZSTD_COMPRESSBOUND(x.raw_size), FormatError,
              "{}: offset {}: index entry of image {}: payload of {} bytes for a {}-byte record "
              "exceeds zstd's bound {}",
              name, at + 8, h.image_begin + i, x.payload_size, x.raw_size,
              ZSTD_COMPRESSBOUND(x.raw_size));
    FKD_CHECK(index_offset - expect >= kBlockHeaderSize + uint64_t(x.payload_size), FormatError,
              "{}: offset {}: index entry of image {}: block of {} bytes at offset {} runs past "
              "the index at offset {}",
              name, at, h.image_begin + i, kBlockHeaderSize + uint64_t(x.payload_size), expect,
              index_offset);
    expect += kBlockHeaderSize + x.payload_size;
  }
  FKD_CHECK(expect == index_offset, FormatError,
            "{}: offset {}: expected the index right after the last block (offset {}), found {} "
            "unaccounted bytes",
            name, index_offset, expect, index_offset - expect);
  return v;
}

const IndexEntry& ShardView::entry(uint64_t image_id) const {
  FKD_CHECK(image_id >= header_.image_begin && image_id < header_.image_end, ConfigError,
            "{}: image {} is not in this shard's range [{}, {})", name_, image_id,
            header_.image_begin, header_.image_end);
  return index_[image_id - header_.image_begin];
}

const uint8_t* ShardView::checked_block(uint64_t image_id) const {
  const IndexEntry& e = entry(image_id);
  const uint8_t* b = data_ + e.offset;
  FKD_CHECK(std::memcmp(b, kBlockMagic, 4) == 0, FormatError,
            "{}: offset {}: block of image {}: expected magic 'FKDB', found {}", name_, e.offset,
            image_id, show_bytes(b, 4));
  const uint32_t payload = load_u32(b + 4), raw = load_u32(b + 24);
  const uint64_t image = load_u64(b + 16), stored = load_u64(b + 8);
  FKD_CHECK(payload == e.payload_size && raw == e.raw_size && image == image_id, FormatError,
            "{}: offset {}: block of image {}: header disagrees with the index: expected image "
            "{}, payload {}, record {}; found image {}, payload {}, record {}",
            name_, e.offset, image_id, image_id, e.payload_size, e.raw_size, image, payload, raw);
  const std::string bad_codec = codec_problem(header_, load_u32(b + 28), payload, raw);
  FKD_CHECK(bad_codec.empty(), FormatError, "{}: offset {}: block of image {}: {}", name_,
            e.offset + 28, image_id, bad_codec);
  FKD_CHECK(stored == e.checksum, FormatError,
            "{}: offset {}: block of image {}: checksum 0x{:016x} disagrees with the index's "
            "0x{:016x}",
            name_, e.offset + 8, image_id, stored, e.checksum);
  if (opts_.verify_checksums) {
    const uint64_t actual = block_checksum(b, payload);
    FKD_CHECK(actual == stored, FormatError,
              "{}: offset {}: block of image {}: checksum mismatch: expected 0x{:016x}, found "
              "0x{:016x} (the record is corrupt)",
              name_, e.offset, image_id, stored, actual);
  }
  return b;
}

void ShardView::read(uint64_t image_id, ImageLabels& out) const {
  const uint8_t* b = checked_block(image_id);
  const IndexEntry& e = entry(image_id);
  const Where where{name_, image_id, e.offset};
  if (load_u32(b + 28) == uint32_t(Codec::kPacked)) {
    decode_packed_record(format_, b + kBlockHeaderSize, e.payload_size, out, where);
  } else {
    decode_record(format_, b + kBlockHeaderSize, e.payload_size, e.raw_size, out, where);
  }
}

}  // namespace fkd::store
