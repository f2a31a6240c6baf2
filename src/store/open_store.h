// A store opened for reading: its manifest and every shard, mapped and checked against it.
// Shared by the reader, merging and verification.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fkd/store.h"
#include "store/shard_file.h"

namespace fkd::store {

/// One shard file, mapped and parsed.
struct OpenShard {
  std::unique_ptr<MappedFile> map;  ///< the file's bytes
  ShardView view;                   ///< header, index and footer checked; records not yet
};

/// Opens shard `index` of the store in `dir`: FormatError naming the file when it is missing
/// or unfinished, its header, index or footer is bad, or its header disagrees with the
/// manifest `m` (whose store key is `key`); IoError when it cannot be read.
OpenShard open_shard(const std::string& dir, const Manifest& m, uint32_t index, uint64_t key);

/// A store's manifest and its shards, opened and cross-checked.
struct OpenStore {
  Manifest manifest;
  std::vector<OpenShard> shards;
  std::vector<uint64_t> begins;  ///< first image of each shard
  uint64_t bytes = 0;            ///< of all shard files
  /// The shard holding image `image_id` (ConfigError when out of range).
  const ShardView& shard_of(uint64_t image_id) const;
};

/// Opens every shard (open_shard) and checks that they tile the store's images.
OpenStore open_store(const std::string& dir);

/// FormatError naming the shard, the image and its block's offset unless the record `l` of
/// image `image_id` carries the crop hash the manifest's sampler derives for its image size
/// (explicit crops: nothing to do, decoding the record checked the hash of its boxes).
void check_crop_hash(const Manifest& m, const ShardView& v, uint64_t image_id,
                     const ImageLabels& l);

}  // namespace fkd::store
