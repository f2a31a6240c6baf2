// Whole-file I/O for everything fkd reads and writes: the one reading loop, and durable
// replacement of a file.
//
// A durable write goes to a new temporary file beside the target, is fsynced, renamed over
// the target, and the directory is fsynced. A crash, a kill or a full disk therefore leaves
// the previous file or the new one, never a mix; a failure is one IoError line naming the
// target file and the system's reason ("runs/a/checkpoint.pt: cannot write: No space left on
// device") and removes the temporary file. Each writer gets its own temporary file, so
// processes that write the same file at once (shards labeling one store) cannot tear it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace fkd {

/// A regular file open for reading. Opening never blocks: a FIFO, a directory or a device
/// in the file's place is refused, not waited on.
class ReadableFile {
 public:
  /// IoError naming `path` when it is missing or unreadable, or when it is not a regular
  /// file: "PATH: is a directory, not a WHAT" (WHAT: e.g. "shard file").
  explicit ReadableFile(const std::string& path, const char* what = "regular file");
  ~ReadableFile();
  ReadableFile(const ReadableFile&) = delete;
  ReadableFile& operator=(const ReadableFile&) = delete;
  int fd() const { return fd_; }
  uint64_t size() const { return size_; }  ///< bytes when opened
  const std::string& path() const { return path_; }
  /// Reads from the start to the end of the file, calling consume(data, size) on each
  /// chunk in order (at most 64 KiB each). IoError naming the file if a read fails.
  void read_chunks(const std::function<void(const uint8_t* data, size_t size)>& consume);

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

/// ReadableFile(path).read_chunks(consume): for files too big to hold (hashing a teacher).
void read_file_chunks(const std::string& path,
                      const std::function<void(const uint8_t* data, size_t size)>& consume);

/// The whole content of a regular file. IoError naming it (see ReadableFile).
std::vector<uint8_t> read_whole_file(const std::string& path);

/// Replaces the file `path` durably with bytes written in pieces (a streaming writer).
/// Until commit() returns, `path` keeps its previous content (or stays absent); an
/// uncommitted DurableFile removes its temporary file when destroyed.
class DurableFile {
 public:
  /// Creates the temporary file "PATH.tmp.PID.N" beside `path`. IoError naming `path` if the
  /// directory refuses it.
  explicit DurableFile(const std::string& path);
  ~DurableFile();
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;
  /// Appends bytes. IoError "PATH: cannot write: REASON" (the temporary file is removed).
  void write(const void* data, size_t size);
  /// Appends bytes without throwing, for writer callbacks that must not throw (torch's
  /// archive writer, a C library's). Returns `size` even on failure: the first error is
  /// kept, this and later bytes are dropped, and commit() throws it.
  size_t write_deferred(const void* data, size_t size) noexcept;
  /// fsync, rename over `path`, fsync of the directory. IoError naming `path` on failure;
  /// unless the rename has happened, `path` is left as it was.
  void commit();
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail_with(const char* what, int err);
  std::string path_, tmp_;
  int fd_ = -1;
  int deferred_errno_ = 0;  ///< first error of write_deferred, 0 if none
};

/// Replaces `path` durably with `bytes` (a DurableFile written at once).
void write_file_durably(const std::string& path, std::string_view bytes);

/// fsync of a directory, which makes a rename into it durable. IoError naming it on failure.
void fsync_directory(const std::string& dir);

/// What makes a file that should be a zip archive (checkpoints and TorchScript files are)
/// unreadable as one before any parsing: "is empty (0 bytes)", or "is truncated: ..." for a
/// file that starts as a zip archive but lacks the end record every complete one has (a copy
/// or a save cut short). "" otherwise, including for a file that is no zip archive at all.
/// zip_damage reads only the file's first bytes and its last 64 KiB.
std::string zip_damage(const std::string& path);
std::string zip_damage(const uint8_t* data, size_t size);

/// Creates a directory and its parents (mkdir -p) that a flag names (`flag`: "--out").
/// IoError naming the directory and the flag when a file stands in its place or in a
/// parent's ("runs/x: --out names a file, not a directory"), or the system refuses.
void make_directories(const std::string& dir, const char* flag);

/// An exclusive claim of one process on a directory (fkd train's run directory): flock(2)
/// on DIR/NAME, a file that holds the claimant's pid and host while the claim lasts and is
/// removed when it ends (a killed process leaves the file, but not the lock). The kernel
/// releases the lock when the process dies, however it dies.
class DirectoryLock {
 public:
  /// IoError naming the directory and, when known, the holder ("pid 12 on host"), when
  /// another process holds it; `what` says what the directory is ("the run directory").
  DirectoryLock(const std::string& dir, const std::string& name, const std::string& what);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

/// Removes the temporary files DurableFile leaves when its process is killed
/// ("NAME.tmp.PID.N" for each of `names`) from `dir`; returns how many. Only for a directory
/// whose every writer holds its DirectoryLock, held by the caller: no other process can be
/// writing one of them then.
size_t remove_stale_temporaries(const std::string& dir, const std::vector<std::string>& names);

}  // namespace fkd
