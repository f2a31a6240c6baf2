// Reading a complete store (manifest + every shard, memory-mapped) and merging its shards.
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/store.h"
#include "store/manifest.h"
#include "store/open_store.h"

namespace fkd {

namespace fs = std::filesystem;

namespace store {

MappedFile::MappedFile(const std::string& path) {
  const ReadableFile file(path, "shard file");  // a FIFO or directory is refused here
  size_ = size_t(file.size());
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, file.fd(), 0);
    FKD_CHECK(p != MAP_FAILED, IoError, "{}: cannot mmap {} bytes: {}", path, size_,
              std::strerror(errno));
    data_ = static_cast<const uint8_t*>(p);
  }
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

/// "k = 5" vs "k = 3": one header field against the manifest.
template <typename A, typename B>
void expect_field(const std::string& shard, size_t offset, const char* field, const A& header,
                  const B& manifest) {
  FKD_CHECK(header == manifest, FormatError,
            "{}: offset {}: header says {} = {}, manifest.json says {} (the shard belongs to "
            "another store)",
            shard, offset, field, header, manifest);
}

OpenShard open_shard(const std::string& dir, const Manifest& m, uint32_t i, uint64_t key) {
  const std::string path = (fs::path(dir) / shard_file_name(i, m.num_shards)).string();
  if (!fs::exists(path)) {
    FKD_CHECK(!fs::exists(path + ".partial"), FormatError,
              "{}: shard {} of {} is unfinished (only {}.partial exists): resume labeling to "
              "finish it",
              path, i, m.num_shards, fs::path(path).filename().string());
    fail<FormatError>("{}: missing shard {} of {} (manifest.json says num_shards = {})", path, i,
                      m.num_shards, m.num_shards);
  }
  OpenShard s;
  s.map = std::make_unique<MappedFile>(path);
  s.view = ShardView::parse(s.map->data(), s.map->size(), path);
  const ShardHeader& h = s.view.header();
  const auto [begin, end] = shard_range(m.num_images, i, m.num_shards);
  expect_field(path, 16, "shard_index", h.shard_index, i);
  expect_field(path, 20, "shard_count", h.shard_count, m.num_shards);
  expect_field(path, 40, "num_images", h.num_images, m.num_images);
  expect_field(path, 48, "crops_per_image", h.crops_per_image, m.crops_per_image);
  expect_field(path, 52, "num_classes", uint64_t(h.num_classes), uint64_t(m.classes.size()));
  expect_field(path, 56, "label_type", std::string(label_type_name(h.label_type)),
               std::string(label_type_name(m.label_type)));
  expect_field(path, 57, "precision", std::string(precision_name(h.precision)),
               std::string(precision_name(m.precision)));
  expect_field(path, 60, "k", int64_t(h.k), int64_t(m.k));
  expect_field(path, 58, "crops", std::string(crop_origin_name(h.crop_origin)),
               std::string(crop_origin_name(m.crop_origin)));
  expect_field(path, 24, "image_begin", h.image_begin, begin);
  expect_field(path, 32, "image_end", h.image_end, end);
  FKD_CHECK(h.store_key == key, FormatError,
            "{}: offset 64: header says store key 0x{:016x}, manifest.json gives 0x{:016x} "
            "(made with another teacher, dataset, classes or crop sampler)",
            path, h.store_key, key);
  return s;
}

const ShardView& OpenStore::shard_of(uint64_t image_id) const {
  FKD_CHECK(image_id < manifest.num_images, ConfigError,
            "label store: image {} out of range [0, {})", image_id, manifest.num_images);
  // The last shard starting at or before image_id: empty shards precede the one holding it.
  const size_t s =
      size_t(std::upper_bound(begins.begin(), begins.end(), image_id) - begins.begin()) - 1;
  return shards[s].view;
}

OpenStore open_store(const std::string& dir) {
  OpenStore s;
  s.manifest = read_manifest(dir);
  const Manifest& m = s.manifest;
  const uint64_t key = store_key(m);
  uint64_t next_begin = 0;
  for (uint32_t i = 0; i < m.num_shards; ++i) {
    s.shards.push_back(open_shard(dir, m, i, key));
    const ShardView& v = s.shards.back().view;
    const ShardHeader& h = v.header();
    FKD_CHECK(h.image_begin == next_begin, FormatError,
              "{}: shard starts at image {}, expected {} (the shards must tile [0, {}))", v.name(),
              h.image_begin, next_begin, m.num_images);
    next_begin = h.image_end;
    s.begins.push_back(h.image_begin);
    s.bytes += v.size();
  }
  FKD_CHECK(next_begin == m.num_images, FormatError,
            "{}: the shards cover images [0, {}), manifest.json says {}", dir, next_begin,
            m.num_images);
  return s;
}

void check_crop_hash(const Manifest& m, const ShardView& v, uint64_t image_id,
                     const ImageLabels& l) {
  // Explicit crops: decoding the record checked the hash of its boxes already.
  if (m.crop_origin == CropOrigin::kExplicit) return;
  const uint32_t want = label_crop_hash(m, image_id, l.height, l.width);
  FKD_CHECK(l.crop_hash == want, FormatError,
            "{}: offset {}: image {}: crop hash 0x{:08x} does not match the crops derived from "
            "the manifest's sampler for a {}x{} image (0x{:08x})",
            v.name(), v.entry(image_id).offset, image_id, l.crop_hash, l.height, l.width, want);
}

}  // namespace store

struct StoreReader::Impl {
  store::OpenStore store;
  bool check_crops = false;
};

StoreProgress store_progress(const std::string& store_dir) {
  const Manifest m = read_manifest(store_dir);
  StoreProgress p;
  for (uint32_t i = 0; i < m.num_shards; ++i) {
    const std::string path = (fs::path(store_dir) / shard_file_name(i, m.num_shards)).string();
    const auto [begin, end] = shard_range(m.num_images, i, m.num_shards);
    StoreProgress::Shard sh;
    sh.total = end - begin;
    if (fs::exists(path)) {
      sh.finished = sh.started = true;
      sh.done = sh.total;
    } else if (fs::exists(path + ".partial")) {
      sh.started = true;
      const store::ShardHeader expected = store::header_for(m, i);
      // A torn or foreign header holds nothing this store can use (the writer starts over
      // or refuses it); otherwise count the blocks a resumed writer would keep.
      try {
        const store::MappedFile map(path + ".partial");
        const store::ShardHeader h =
            store::decode_header(map.data(), map.size(), path + ".partial");
        if (store::encode_header(h) == store::encode_header(expected)) {
          sh.done = store::scan_blocks(map.data(), map.size(), h, path + ".partial").entries.size();
        }
      } catch (const Error&) {  // unreadable, not a file, torn or foreign: nothing usable
      }
    }
    p.done += sh.done;
    p.total += sh.total;
    p.shards.push_back(sh);
  }
  return p;
}

StoreReader::StoreReader(const std::string& store_dir, bool check_crops)
    : impl_(std::make_unique<Impl>()) {
  impl_->store = store::open_store(store_dir);
  impl_->check_crops = check_crops;
}

StoreReader::~StoreReader() = default;

const Manifest& StoreReader::manifest() const { return impl_->store.manifest; }

uint64_t StoreReader::num_images() const { return impl_->store.manifest.num_images; }

uint64_t StoreReader::shard_bytes() const { return impl_->store.bytes; }

void StoreReader::read(uint64_t image_id, ImageLabels& out) const {
  const store::ShardView& v = impl_->store.shard_of(image_id);
  v.read(image_id, out);
  if (impl_->check_crops) store::check_crop_hash(impl_->store.manifest, v, image_id, out);
}

bool StoreReader::verify_crops(uint64_t image_id) const {
  thread_local ImageLabels l;
  impl_->store.shard_of(image_id).read(image_id, l);
  if (impl_->store.manifest.crop_origin == CropOrigin::kExplicit) return true;  // read checked it
  return l.crop_hash == label_crop_hash(impl_->store.manifest, image_id, l.height, l.width);
}

bool merge_store(const std::string& store_dir, const std::string& out_dir) {
  const store::OpenStore src = store::open_store(store_dir);
  Manifest m = src.manifest;
  m.num_shards = 1;
  make_directories(out_dir, "--out");
  Manifest written = m;
  written.version = kStoreFormatVersion;  // an older store comes out in the current version
  if (store::finished_store_of(out_dir, written)) return false;
  FKD_CHECK(!fs::exists(fs::path(out_dir) / "manifest.json"), ConfigError,
            "{}: already holds another label store; merge into a new directory", out_dir);
  // A crashed merge resumes from the .partial like any shard.
  if (m.version < kStoreFormatVersion) {
    // An older format version comes out in the current one: the same labels, re-encoded.
    m.version = kStoreFormatVersion;
    ShardWriter out(out_dir, m, 0);
    ImageLabels l;
    for (uint64_t id = out.next_image(); id < m.num_images; ++id) {
      src.shard_of(id).read(id, l);
      out.append(id, l);
    }
    out.finish();
  } else {
    // Blocks are copied verbatim (a block's checksum covers its image id, not its offset).
    const std::string path = (fs::path(out_dir) / shard_file_name(0, 1)).string();
    store::ShardFile out(path, store::header_for(m, 0));
    for (uint64_t id = out.next_image(); id < m.num_images; ++id) {
      const store::ShardView& v = src.shard_of(id);
      const uint8_t* block = v.checked_block(id);
      out.append_block(block, store::kBlockHeaderSize + v.entry(id).payload_size);
    }
    out.finish();
  }
  write_manifest(out_dir, m);  // last: a store without its manifest is not a store
  return true;
}

}  // namespace fkd
