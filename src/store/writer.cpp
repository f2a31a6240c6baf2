// Crash-safe shard writing: blocks are appended to "<shard>.partial" and fsynced
// periodically; reopening keeps the verified prefix; finish() appends index and footer,
// fsyncs and renames atomically.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/store.h"
#include "store/manifest.h"
#include "store/shard_file.h"

namespace fkd {
namespace store {

namespace fs = std::filesystem;

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void write_all(int fd, const uint8_t* data, size_t size, uint64_t offset, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, size, off_t(offset));
    if (n < 0 && errno == EINTR) continue;
    FKD_CHECK(n > 0, IoError, "{}: cannot write {} bytes at offset {}: {}", path, size, offset,
              n < 0 ? std::strerror(errno) : "no progress");
    data += n;
    size -= size_t(n);
    offset += uint64_t(n);
  }
}

void read_all(int fd, uint8_t* data, size_t size, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, data + done, size - done, off_t(done));
    if (n < 0 && errno == EINTR) continue;
    FKD_CHECK(n > 0, IoError, "{}: cannot read {} bytes: {}", path, size,
              n < 0 ? std::strerror(errno) : "unexpected end of file");
    done += size_t(n);
  }
}

std::string parent_dir(const std::string& path) {
  const fs::path p = fs::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

}  // namespace

ShardFile::ShardFile(const std::string& path, const ShardHeader& h)
    : path_(path), partial_(path + ".partial"), header_(h) {
  const std::vector<uint8_t> want = encode_header(h);
  if (fs::exists(path_)) {
    // A finished shard is never touched again; it must belong to this store.
    const ReadableFile file(path_, "shard file");
    std::vector<uint8_t> have(kHeaderSize);
    const bool big_enough = file.size() >= kHeaderSize;
    if (big_enough) read_all(file.fd(), have.data(), kHeaderSize, path_);
    FKD_CHECK(big_enough && have == want, FormatError,
              "{}: offset 0: the finished shard's header differs from the one this store's "
              "manifest gives (written for another manifest, or corrupt)",
              path_);
    finished_ = true;
    return;
  }
  if (fs::exists(partial_)) ReadableFile(partial_, "shard file");  // refuses a FIFO, a directory
  fd_ = ::open(partial_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  FKD_CHECK(fd_ >= 0, IoError, "{}: cannot open: {}", partial_, std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    fail<IoError>("{}: {}", partial_,
                  e == EWOULDBLOCK ? "another writer holds it (is a labeler already running on "
                                     "this shard?)"
                                   : std::strerror(e));
  }
  try {
    resume(want);
  } catch (...) {
    ::close(fd_);  // also releases the lock
    fd_ = -1;
    throw;
  }
  last_sync_ = now_seconds();
}

void ShardFile::resume(const std::vector<uint8_t>& want) {
  struct stat st;
  FKD_CHECK(::fstat(fd_, &st) == 0, IoError, "{}: cannot stat: {}", partial_, std::strerror(errno));
  const uint64_t size = uint64_t(st.st_size);
  if (size <= kHeaderSize) {
    // New, or torn while its header was written (the header is synced before any block):
    // start over.
    std::vector<uint8_t> have(size);
    if (size > 0) read_all(fd_, have.data(), size_t(size), partial_);
    if (size == kHeaderSize && have == want) {
      end_ = kHeaderSize;
    } else {
      FKD_CHECK(::ftruncate(fd_, 0) == 0, IoError, "{}: cannot truncate: {}", partial_,
                std::strerror(errno));
      write_all(fd_, want.data(), want.size(), 0, partial_);
      FKD_CHECK(::fsync(fd_) == 0, IoError, "{}: fsync failed: {}", partial_, std::strerror(errno));
      fsync_directory(parent_dir(partial_));
      end_ = kHeaderSize;
    }
  } else {
    std::vector<uint8_t> have(kHeaderSize);
    read_all(fd_, have.data(), kHeaderSize, partial_);
    if (have != want) {
      decode_header(have.data(), have.size(), partial_);  // names corruption precisely
      fail<FormatError>(
          "{}: offset 0: the unfinished shard was started with another manifest (its header "
          "differs); delete it to start the shard over",
          partial_);
    }
    const MappedFile map(partial_);
    const BlockScan scan = scan_blocks(map.data(), map.size(), header_, partial_);
    entries_ = scan.entries;
    end_ = scan.end;
    if (end_ < size) {
      // Drop the torn tail: everything after the last complete, verified block.
      FKD_CHECK(::ftruncate(fd_, off_t(end_)) == 0, IoError, "{}: cannot truncate to {} bytes: {}",
                partial_, end_, std::strerror(errno));
      FKD_CHECK(::fsync(fd_) == 0, IoError, "{}: fsync failed: {}", partial_, std::strerror(errno));
    }
  }
}

ShardFile::~ShardFile() {
  if (fd_ >= 0) {
    ::fdatasync(fd_);  // best effort: keep what was written for the next resume
    ::close(fd_);
  }
}

uint64_t ShardFile::next_image() const {
  return finished_ ? header_.image_end : header_.image_begin + entries_.size();
}

void ShardFile::sync() {
  FKD_CHECK(::fdatasync(fd_) == 0, IoError, "{}: fdatasync failed: {}", partial_,
            std::strerror(errno));
  unsynced_ = 0;
  last_sync_ = now_seconds();
}

void ShardFile::append_block(const uint8_t* block, size_t size) {
  FKD_CHECK(!finished_, ConfigError, "{}: the shard is finished; it is never modified", path_);
  const uint64_t id = next_image();
  FKD_CHECK(id < header_.image_end, ConfigError, "{}: all {} images of [{}, {}) are written",
            partial_, header_.image_end - header_.image_begin, header_.image_begin,
            header_.image_end);
  FKD_CHECK(size >= kBlockHeaderSize && load_u64(block + 16) == id &&
                size == kBlockHeaderSize + load_u32(block + 4),
            ConfigError, "{}: internal: block of image {} does not fit image {}", partial_,
            load_u64(block + 16), id);
  write_all(fd_, block, size, end_, partial_);
  entries_.push_back({end_, load_u32(block + 4), load_u32(block + 24), load_u64(block + 8)});
  end_ += size;
  if (++unsynced_ >= kSyncEveryBlocks || now_seconds() - last_sync_ >= kSyncSeconds) sync();
  static std::atomic<uint64_t> appended{0};
  if (kill_after_blocks() > 0 && ++appended >= kill_after_blocks()) ::raise(SIGKILL);
}

void ShardFile::finish() {
  if (finished_) return;
  FKD_CHECK(next_image() == header_.image_end, ConfigError,
            "{}: cannot finish: holds images [{}, {}), the shard needs [{}, {})", partial_,
            header_.image_begin, next_image(), header_.image_begin, header_.image_end);
  const std::vector<uint8_t> tail = encode_index_and_footer(entries_, end_);
  write_all(fd_, tail.data(), tail.size(), end_, partial_);
  FKD_CHECK(::fsync(fd_) == 0, IoError, "{}: fsync failed: {}", partial_, std::strerror(errno));
  FKD_CHECK(::rename(partial_.c_str(), path_.c_str()) == 0, IoError, "{}: cannot rename to {}: {}",
            partial_, path_, std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  fsync_directory(parent_dir(path_));
  finished_ = true;
}

void BlockEncoder::encode(uint64_t image_id, const ImageLabels& labels) {
  // Packed when it can be (it decodes about 2.3 times as fast as zstd at about the same
  // size); otherwise, and always in a version 1 store, a zstd frame.
  if (pack && encode_packed_record(format, labels, payload)) {
    make_block(image_id, payload, uint32_t(payload.size()), Codec::kPacked, block);
  } else {
    encode_record(format, labels, raw, sections);
    compress_record(raw, sections, payload);
    make_block(image_id, payload, uint32_t(raw.size()), Codec::kZstd, block);
  }
}

uint64_t kill_after_blocks() {
  static const uint64_t n = [] {
    const char* v = std::getenv("FKD_TEST_KILL_AFTER_BLOCKS");
    return v ? std::strtoull(v, nullptr, 10) : 0;
  }();
  return n;
}

}  // namespace store

struct ShardWriter::Impl {
  store::BlockEncoder encoder;
  std::string name;
  std::unique_ptr<store::ShardFile> file;
};

ShardWriter::ShardWriter(const std::string& store_dir, const Manifest& m, uint32_t shard_index)
    : impl_(std::make_unique<Impl>()) {
  const std::string problem = store::manifest_problem(m);
  FKD_CHECK(problem.empty(), ConfigError, "{}: invalid manifest: {}", store_dir, problem);
  FKD_CHECK(shard_index < m.num_shards, ConfigError, "{}: shard {} does not exist (num_shards {})",
            store_dir, shard_index, m.num_shards);
  impl_->encoder.format = store::record_format(m);
  impl_->encoder.pack = m.version >= store::kPackedSince && store::packable(impl_->encoder.format);
  impl_->name =
      (std::filesystem::path(store_dir) / shard_file_name(shard_index, m.num_shards)).string();
  impl_->file = std::make_unique<store::ShardFile>(impl_->name, store::header_for(m, shard_index));
}

ShardWriter::~ShardWriter() = default;

uint64_t ShardWriter::next_image() const { return impl_->file->next_image(); }

bool ShardWriter::finished() const { return impl_->file->finished(); }

void ShardWriter::append(uint64_t image_id, const ImageLabels& labels) {
  Impl& w = *impl_;
  FKD_CHECK(!w.file->finished(), ConfigError, "{}: the shard is finished; it is never modified",
            w.name);
  FKD_CHECK(image_id == w.file->next_image(), ConfigError,
            "{}: records must be appended in image order: expected image {}, got {}", w.name,
            w.file->next_image(), image_id);
  store::check_labels(w.encoder.format, labels, fmt::format("{}: image {}", w.name, image_id));
  w.encoder.encode(image_id, labels);
  w.file->append_block(w.encoder.block.data(), w.encoder.block.size());
}

void ShardWriter::finish() { impl_->file->finish(); }

}  // namespace fkd
