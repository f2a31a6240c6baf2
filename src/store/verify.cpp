// Verification of a whole store: every shard and every record, listing all damage instead of
// stopping at the first problem as the reader does.
#include <algorithm>
#include <filesystem>

#include "fkd/error.h"
#include "fkd/store.h"
#include "store/manifest.h"
#include "store/open_store.h"

namespace fkd {

std::vector<uint64_t> StoreVerification::damaged_images() const {
  std::vector<uint64_t> ids;
  for (const Record& r : records) ids.push_back(r.image);
  for (const Shard& s : shards) {
    for (uint64_t i = s.image_begin; i < s.image_end; ++i) ids.push_back(i);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

StoreVerification verify_store(const std::string& store_dir,
                               const std::function<void(uint64_t done, uint64_t total)>& progress) {
  StoreVerification v;
  const Manifest m = read_manifest(store_dir);
  const uint64_t key = store::store_key(m);
  v.images = m.num_images;
  uint64_t done = 0;
  ImageLabels labels;
  for (uint32_t i = 0; i < m.num_shards; ++i) {
    const auto [begin, end] = shard_range(m.num_images, i, m.num_shards);
    store::OpenShard shard;
    try {
      shard = store::open_shard(store_dir, m, i, key);
    } catch (const Error& e) {
      const std::string path =
          (std::filesystem::path(store_dir) / shard_file_name(i, m.num_shards)).string();
      v.shards.push_back({path, i, begin, end, one_line(e.what())});
      done += end - begin;
      if (progress) progress(done, m.num_images);
      continue;
    }
    const store::ShardView& view = shard.view;
    for (uint64_t id = begin; id < end; ++id) {
      try {
        view.read(id, labels);
        store::check_crop_hash(m, view, id, labels);
      } catch (const FormatError& e) {
        v.records.push_back({view.name(), id, view.entry(id).offset, one_line(e.what())});
      }
      ++v.records_checked;
      if (progress && (++done % 4096 == 0 || id + 1 == end)) progress(done, m.num_images);
    }
  }
  return v;
}

}  // namespace fkd
