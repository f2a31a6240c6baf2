#include "fkd/file_io.h"

#include <fcntl.h>
#include <sys/file.h>
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

// --- zip archives ----------------------------------------------------------------------

namespace {

/// The zip format's local file header and end of central directory signatures.
constexpr char kZipStart[] = {'P', 'K', 3, 4};
constexpr char kZipEnd[] = {'P', 'K', 5, 6};
constexpr size_t kZipEndRecord = 22;                ///< the end record without its comment
constexpr size_t kZipTail = kZipEndRecord + 65535;  ///< the end record with the longest comment

/// The damage of a file of `size` bytes that begins with `head` and ends with `tail`.
std::string zip_damage_of(uint64_t size, const char* head, size_t head_size, const char* tail,
                          size_t tail_size) {
  if (size == 0) return "is empty (0 bytes): a copy or save that never finished?";
  if (head_size < 4 || std::memcmp(head, kZipStart, 4) != 0) return "";
  for (size_t i = tail_size >= kZipEndRecord ? tail_size - kZipEndRecord + 1 : 0; i-- > 0;) {
    if (std::memcmp(tail + i, kZipEnd, 4) == 0) return "";
  }
  return "is truncated: a zip archive of " + std::to_string(size) +
         " bytes without the end record a complete one has (a copy or save cut short?)";
}

}  // namespace

std::string zip_damage(const uint8_t* data, size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  const size_t tail = std::min(size, kZipTail);
  return zip_damage_of(size, p, size, p + size - tail, tail);
}

std::string zip_damage(const std::string& path) {
  ReadableFile f(path);
  char head[4] = {0};
  const ssize_t h = ::pread(f.fd(), head, sizeof head, 0);
  std::vector<char> tail(size_t(std::min<uint64_t>(f.size(), kZipTail)));
  const ssize_t t = ::pread(f.fd(), tail.data(), tail.size(), off_t(f.size() - tail.size()));
  FKD_CHECK(h >= 0 && t >= 0, IoError, "{}: cannot read: {}", path, std::strerror(errno));
  return zip_damage_of(f.size(), head, size_t(h), tail.data(), size_t(t));
}

// --- directories -----------------------------------------------------------------------

void make_directories(const std::string& dir, const char* flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return;
  // The nearest thing that exists on the way: a file there is named, not a raw errno.
  for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
    struct stat st;
    if (::stat(p.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) break;
      const char* kind = S_ISREG(st.st_mode) ? "a file" : kind_of(st.st_mode);
      FKD_CHECK(p != fs::path(dir), IoError, "{}: {} names {}, not a directory", dir, flag, kind);
      fail<IoError>("{}: {} cannot be created: {} is {}, not a directory", dir, flag, p.string(),
                    kind);
    }
    if (p == p.parent_path()) break;
  }
  fs::create_directories(dir, ec);
  FKD_CHECK(!ec, IoError, "{}: {} cannot be created: {}", dir, flag, ec.message());
}

DirectoryLock::DirectoryLock(const std::string& dir, const std::string& name,
                             const std::string& what)
    : path_((std::filesystem::path(dir) / name).string()) {
  for (int attempt = 0;; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    FKD_CHECK(fd_ >= 0, IoError, "{}: cannot open its lock file {}: {}", dir, path_,
              std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      char holder[256] = {0};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      std::string who = n > 0 ? std::string(holder, size_t(n)) : "";
      while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
      ::close(fd_);
      fd_ = -1;
      FKD_CHECK(e != EWOULDBLOCK, IoError,
                "{}: {} is in use by another fkd process{}; wait for it to end or use another "
                "directory",
                dir, what, who.empty() ? "" : " (" + who + ")");
      fail<IoError>("{}: cannot lock {}: {}", dir, path_, std::strerror(e));
    }
    // The holder before us removes the file as it ends: a lock on a file no longer in the
    // directory is no claim on it.
    struct stat held, named;
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &named) == 0 &&
        held.st_ino == named.st_ino && held.st_dev == named.st_dev) {
      break;
    }
    ::close(fd_);
    fd_ = -1;
    FKD_CHECK(attempt < 100, IoError, "{}: cannot lock {}: it keeps being replaced", dir, path_);
  }
  // Who holds it, for the message of the next one to try (best effort: a full disk only
  // loses the name).
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) != 0) host[0] = 0;
  const std::string me = "pid " + std::to_string(::getpid()) + (host[0] ? " on " : "") + host;
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) < 0) {
    (void)::ftruncate(fd_, 0);
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still held: no other process can hold this file
  ::close(fd_);
}

size_t remove_stale_temporaries(const std::string& dir, const std::vector<std::string>& names) {
  size_t removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    for (const std::string& name : names) {
      // NAME.tmp.PID.N, as DurableFile names them.
      const std::string prefix = name + ".tmp.";
      if (file.rfind(prefix, 0) != 0) continue;
      const std::string rest = file.substr(prefix.size());
      const size_t dot = rest.find('.');
      const auto digits = [](const std::string& t) {
        return !t.empty() &&
               std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; });
      };
      if (dot == std::string::npos || !digits(rest.substr(0, dot)) ||
          !digits(rest.substr(dot + 1))) {
        continue;
      }
      if (::unlink(entry.path().c_str()) == 0) ++removed;
    }
  }
  return removed;
}

}  // namespace fkd
