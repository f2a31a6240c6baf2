#include "fkd/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "fkd/error.h"

namespace fkd {

namespace {

const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "something else";
}

std::string parent_dir(const std::string& path) {
  const std::filesystem::path p = std::filesystem::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

/// fsync of a directory: 0, or the errno. EINVAL (a filesystem that cannot sync directories)
/// counts as done: the rename is as durable as it gets there.
int sync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int e = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return e == EINVAL ? 0 : e;
}

}  // namespace

// --- reading ---------------------------------------------------------------------------

ReadableFile::ReadableFile(const std::string& path, const char* what) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0 && errno == ENOENT)
    fail<NotFoundError>("{}: cannot open: {}", path, std::strerror(errno));
  FKD_CHECK(fd_ >= 0, IoError, "{}: cannot open: {}", path, std::strerror(errno));
  struct stat st;
  const bool stat_ok = ::fstat(fd_, &st) == 0;
  const int e = errno;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    FKD_CHECK(stat_ok, IoError, "{}: cannot stat: {}", path, std::strerror(e));
    fail<IoError>("{}: is {}, not a {}", path, kind_of(st.st_mode), what);
  }
  size_ = uint64_t(st.st_size);
}

ReadableFile::~ReadableFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ReadableFile::read_chunks(
    const std::function<void(const uint8_t* data, size_t size)>& consume) {
  uint8_t buf[1 << 16];
  off_t offset = 0;
  for (;;) {
    const ssize_t n = ::pread(fd_, buf, sizeof buf, offset);
    if (n == 0) return;
    if (n < 0) {
      if (errno == EINTR) continue;
      fail<IoError>("{}: cannot read: {}", path_, std::strerror(errno));
    }
    consume(buf, size_t(n));
    offset += n;
  }
}

void read_file_chunks(const std::string& path,
                      const std::function<void(const uint8_t* data, size_t size)>& consume) {
  ReadableFile(path).read_chunks(consume);
}

std::vector<uint8_t> read_whole_file(const std::string& path) {
  ReadableFile f(path);
  // Straight into the result (images are read on the loader's hot path): the size fstat
  // gave, then more if the file grew meanwhile.
  std::vector<uint8_t> bytes(size_t(f.size()));
  size_t done = 0;
  for (;;) {
    if (done == bytes.size()) bytes.resize(std::max<size_t>(bytes.size() * 2, 1 << 16));
    const ssize_t n = ::pread(f.fd(), bytes.data() + done, bytes.size() - done, off_t(done));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      fail<IoError>("{}: cannot read: {}", path, std::strerror(errno));
    }
    done += size_t(n);
  }
  bytes.resize(done);
  return bytes;
}

// --- durable writing -------------------------------------------------------------------

DurableFile::DurableFile(const std::string& path) : path_(path) {
  // A name no other writer uses (O_EXCL), so two processes replacing the same file each
  // rename a complete file of their own; the pid keeps names of live processes apart and
  // the counter those of one process's threads.
  static std::atomic<uint64_t> counter{0};
  for (int attempt = 0;; ++attempt) {
    tmp_ = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ >= 0) return;
    if (errno != EEXIST || attempt == 100) {
      fail<IoError>("{}: cannot create a temporary file beside it: {}", path, std::strerror(errno));
    }
  }
}

DurableFile::~DurableFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void DurableFile::fail_with(const char* what, int err) {
  ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  fail<IoError>("{}: cannot {}: {}", path_, what, std::strerror(err));
}

void DurableFile::write(const void* data, size_t size) {
  FKD_CHECK(fd_ >= 0, IoError, "{}: write after the file was committed or failed", path_);
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_with("write", n < 0 ? errno : ENOSPC);  // 0: no progress, as a full disk
    p += n;
    size -= size_t(n);
  }
}

size_t DurableFile::write_deferred(const void* data, size_t size) noexcept {
  if (deferred_errno_ != 0 || fd_ < 0) return size;
  const char* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      deferred_errno_ = n < 0 ? errno : ENOSPC;
      break;
    }
    p += n;
    left -= size_t(n);
  }
  return size;
}

void DurableFile::commit() {
  FKD_CHECK(fd_ >= 0, IoError, "{}: commit after the file was committed or failed", path_);
  if (deferred_errno_ != 0) fail_with("write", deferred_errno_);
  // Delayed allocation and network filesystems may report a full disk only here.
  if (::fsync(fd_) != 0) fail_with("write (fsync)", errno);
  const int closed = ::close(fd_);
  const int close_errno = errno;
  fd_ = -1;
  if (closed != 0) {
    ::unlink(tmp_.c_str());
    fail<IoError>("{}: cannot write (close): {}", path_, std::strerror(close_errno));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp_.c_str());
    fail<IoError>("{}: cannot replace it: {}", path_, std::strerror(e));
  }
  const int e = sync_dir(parent_dir(path_));
  FKD_CHECK(e == 0, IoError, "{}: cannot fsync its directory: {}", path_, std::strerror(e));
}

void write_file_durably(const std::string& path, std::string_view bytes) {
  DurableFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

void fsync_directory(const std::string& dir) {
  const int e = sync_dir(dir);
  FKD_CHECK(e == 0, IoError, "{}: cannot fsync the directory: {}", dir, std::strerror(e));
}

}  // namespace fkd
