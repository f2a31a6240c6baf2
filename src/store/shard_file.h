// Shard files on disk: a read-only memory map for readers, and the crash-safe writer that
// appends blocks to "<shard>.partial", resumes from it and publishes the finished shard.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "store/shard.h"

namespace fkd::store {

/// A read-only memory map of a whole shard file (an empty file maps to nothing).
class MappedFile {
 public:
  /// IoError naming `path` if it cannot be opened or is not a regular file.
  explicit MappedFile(const std::string& path);
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

/// Encodes image `image_id`'s record as a block (block header + payload): packed where the
/// format allows it and `pack` is set (version 2 and later), else a zstd frame. `labels` must
/// have passed check_labels. Deterministic: the same labels give the same bytes.
struct BlockEncoder {
  RecordFormat format;
  bool pack = false;
  std::vector<uint8_t> raw, payload, block;  ///< scratch; `block` holds the result
  std::vector<size_t> sections;
  void encode(uint64_t image_id, const ImageLabels& labels);
};

/// For fault tests: FKD_TEST_KILL_AFTER_BLOCKS=N in the environment makes the process kill
/// itself with SIGKILL once N blocks have been appended (by any ShardFile), to stop a writer
/// at a chosen point of its work; 0 or unset never does.
uint64_t kill_after_blocks();

/// Blocks between fsyncs of a .partial (also synced every kSyncSeconds and on finish).
inline constexpr uint32_t kSyncEveryBlocks = 256;
inline constexpr double kSyncSeconds = 10.0;

}  // namespace fkd::store
