// Helpers shared by the test executables.
#pragma once
#include <gtest/gtest.h>

#include <exception>
#include <string>
#include <vector>

namespace fkd::test {

/// A fresh empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Limits the size of files this process writes (RLIMIT_FSIZE) while it lives, as a full
/// disk would: a write past `bytes` fails with EFBIG ("File too large"); SIGXFSZ is ignored
/// meanwhile so the process survives it. Restores both when destroyed.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(unsigned long long bytes);
  ~FileSizeLimit();
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  unsigned long long old_soft_;
  void (*old_handler_)(int);
};

/// The message of the exception of type E that f() throws; a test failure (and "") if it
/// throws none or one of another type.
template <typename E, typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return {};
  }
  ADD_FAILURE() << "no exception thrown";
  return {};
}

/// Names of the entries of a directory, sorted.
std::vector<std::string> list_dir(const std::string& dir);

/// Result of running a command: its exit status and what it printed on stdout.
struct CommandResult {
  int status = -1;
  std::string out;
};

/// Runs a shell command, capturing stdout (stderr passes through to the test log).
CommandResult run_command(const std::string& cmd);

/// Runs /usr/bin/python3 on a script under tests/py/ with the given arguments.
CommandResult run_python(const std::string& script, const std::vector<std::string>& args);

/// Path of a file inside the source tree.
std::string source_path(const std::string& rel);

/// Writes bytes to a file (throws on failure).
void write_file(const std::string& path, const std::string& bytes);

/// Writes an uncompressed IDX dataset split into `dir` ("train" or "t10k" prefix): image k
/// has pixel (y, x) = (k*7 + x*3 + y*11) & 255 and label k % classes.
void write_idx_split(const std::string& dir, const std::string& prefix, int n, int rows, int cols,
                     int classes);

/// Reads a whole file (throws on failure).
std::string read_file(const std::string& path);

}  // namespace fkd::test
