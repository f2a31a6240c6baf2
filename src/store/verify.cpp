// Verification of a whole store: every shard and every record, listing all damage instead of
// stopping at the first problem as the reader does.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "fkd/error.h"
#include "fkd/store.h"
#include "store/manifest.h"
#include "store/open_store.h"
#include "store/shard.h"
#include "store/shard_file.h"

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

namespace {

/// When no shard of the store opens: "" unless its shard files are intact, agree with one
/// another and all disagree with the manifest `m` in the same way, which then describes how
/// (the manifest was edited, or belongs to other shards).
std::string manifest_disagreement(const std::string& dir, const Manifest& m) {
  namespace fs = std::filesystem;
  // The shard files: those manifest.json names, else those of the one other shard count the
  // folder holds a complete set of (an edited num_shards).
  std::map<uint32_t, std::set<uint32_t>> sets;  // shard count -> indices present
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    unsigned index = 0, count = 0;
    char tail = 0;
    const std::string name = e.path().filename().string();
    if (std::sscanf(name.c_str(), "shard-%5u-of-%5u.fkd%c", &index, &count, &tail) == 3 &&
        tail == 'l' && name == shard_file_name(index, count) && index < count) {
      sets[count].insert(index);
    }
  }
  uint32_t count = 0;
  for (const auto& [c, present] : sets) {
    if (present.size() != c) continue;
    if (c == m.num_shards || count == 0) {
      count = c;
    } else if (count != m.num_shards) {
      return "";  // two complete sets of another count: nothing to go by
    }
  }
  if (count == 0) return "";
  std::vector<store::ShardHeader> headers;
  for (uint32_t i = 0; i < count; ++i) {
    try {
      const std::string path = (fs::path(dir) / shard_file_name(i, count)).string();
      const store::MappedFile map(path);
      headers.push_back(store::ShardView::parse(map.data(), map.size(), path).header());
    } catch (const Error&) {
      return "";  // a damaged shard: damage, not a disagreement
    }
  }
  const store::ShardHeader& h = headers.front();
  for (uint32_t i = 0; i < count; ++i) {
    const store::ShardHeader& o = headers[i];
    const auto [begin, end] = shard_range(h.num_images, i, count);
    if (o.shard_index != i || o.shard_count != count || o.num_images != h.num_images ||
        o.crops_per_image != h.crops_per_image || o.num_classes != h.num_classes ||
        o.label_type != h.label_type || o.precision != h.precision || o.k != h.k ||
        o.crop_origin != h.crop_origin || o.store_key != h.store_key || o.image_begin != begin ||
        o.image_end != end) {
      return "";  // shards of different stores
    }
  }
  std::vector<std::string> diffs;
  auto differs = [&](const char* field, const auto& manifest, const auto& shards) {
    if (manifest != shards) {
      diffs.push_back(
          fmt::format("{}: manifest.json says {}, the shards {}", field, manifest, shards));
    }
  };
  differs("num_shards", m.num_shards, count);
  differs("num_images", m.num_images, h.num_images);
  differs("crops_per_image", m.crops_per_image, h.crops_per_image);
  differs("classes", m.classes.size(), uint64_t(h.num_classes));
  differs("label_type", std::string(label_type_name(m.label_type)),
          std::string(label_type_name(h.label_type)));
  differs("precision", std::string(precision_name(m.precision)),
          std::string(precision_name(h.precision)));
  differs("k", int64_t(m.k), int64_t(h.k));
  differs("crops", std::string(crop_origin_name(m.crop_origin)),
          std::string(crop_origin_name(h.crop_origin)));
  // The fields only the store key covers: do the shards' keys match once the fields above
  // are taken from the shards?
  Manifest restored = m;
  restored.num_shards = count;
  restored.num_images = h.num_images;
  restored.crops_per_image = h.crops_per_image;
  restored.label_type = h.label_type;
  restored.precision = h.precision;
  restored.k = int(h.k);
  restored.crop_origin = h.crop_origin;
  if (restored.classes.size() == h.num_classes && store::store_key(restored) != h.store_key) {
    diffs.push_back(
        "the store key (the shards were made with another teacher_hash, dataset_fingerprint, "
        "classes, temperature, seed, crop sampler, input size or mean/std)");
  }
  if (diffs.empty()) return "";
  return fmt::format(
      "{}: disagrees with all {} shard file(s), which are intact and agree with one another "
      "({}): manifest.json was edited or belongs to other shards; restore it",
      (fs::path(dir) / "manifest.json").string(), count, fmt::join(diffs, "; "));
}

}  // namespace

StoreVerification verify_store(const std::string& store_dir,
                               const std::function<void(uint64_t done, uint64_t total)>& progress) {
  StoreVerification v;
  const Manifest m = read_manifest(store_dir);
  const uint64_t key = store::store_key(m);
  v.images = m.num_images;
  uint64_t done = 0;
  bool opened = false;  // a shard opened
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
    opened = true;
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
  if (!opened) v.manifest_problem = manifest_disagreement(store_dir, m);
  return v;
}

}  // namespace fkd
