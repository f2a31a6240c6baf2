// Replacing damaged records: a shard rewritten with new records for some images and every
// other block copied verbatim, published atomically.
#include <cstdio>
#include <filesystem>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/store.h"
#include "store/manifest.h"
#include "store/open_store.h"
#include "store/shard_file.h"

namespace fs = std::filesystem;

namespace fkd {

void replace_records(const std::string& store_dir, uint32_t shard_index,
                     const std::map<uint64_t, ImageLabels>& records) {
  const Manifest m = read_manifest(store_dir);
  const store::OpenShard old = store::open_shard(store_dir, m, shard_index, store::store_key(m));
  const std::string path = old.view.name();
  const store::ShardHeader& h = old.view.header();
  for (const auto& [id, labels] : records) {
    FKD_CHECK(id >= h.image_begin && id < h.image_end, ConfigError,
              "{}: image {} is not in this shard's range [{}, {})", path, id, h.image_begin,
              h.image_end);
  }
  // The new shard is built beside the old one (a crashed repair leaves only these
  // temporaries behind, which the next one starts over), then renamed over it.
  const std::string fresh = path + ".repaired";
  fs::remove(fresh);
  fs::remove(fresh + ".partial");
  {
    store::ShardFile out(fresh, h);
    store::BlockEncoder encoder;
    encoder.format = store::record_format(m);
    encoder.pack = m.version >= store::kPackedSince && store::packable(encoder.format);
    for (uint64_t id = h.image_begin; id < h.image_end; ++id) {
      const auto it = records.find(id);
      if (it != records.end()) {
        store::check_labels(encoder.format, it->second, fmt::format("{}: image {}", path, id));
        encoder.encode(id, it->second);
        out.append_block(encoder.block.data(), encoder.block.size());
      } else {
        // Every block kept must be sound: checked_block verifies its checksum.
        const uint8_t* block = old.view.checked_block(id);
        out.append_block(block, store::kBlockHeaderSize + old.view.entry(id).payload_size);
      }
    }
    out.finish();
  }
  FKD_CHECK(std::rename(fresh.c_str(), path.c_str()) == 0, IoError, "{}: cannot rename to {}: {}",
            fresh, path, std::strerror(errno));
  fsync_directory(store_dir);
}

}  // namespace fkd
