#include "testutil.h"

#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fkd::test {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "fkd-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

FileSizeLimit::FileSizeLimit(unsigned long long bytes) {
  struct rlimit r;
  if (getrlimit(RLIMIT_FSIZE, &r) != 0) throw std::runtime_error("getrlimit failed");
  old_soft_ = r.rlim_cur;
  r.rlim_cur = bytes;
  if (setrlimit(RLIMIT_FSIZE, &r) != 0) throw std::runtime_error("setrlimit failed");
  old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
}

FileSizeLimit::~FileSizeLimit() {
  struct rlimit r;
  getrlimit(RLIMIT_FSIZE, &r);
  r.rlim_cur = old_soft_;
  setrlimit(RLIMIT_FSIZE, &r);
  std::signal(SIGXFSZ, old_handler_);
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

static std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "'\\''";
    else
      q += c;
  }
  return q + "'";
}

CommandResult run_python(const std::string& script, const std::vector<std::string>& args) {
  std::string cmd = std::string(FKD_PYTHON) + " " + shell_quote(source_path("tests/py/" + script));
  for (const auto& a : args) cmd += " " + shell_quote(a);
  return run_command(cmd);
}

std::string source_path(const std::string& rel) { return std::string(FKD_SOURCE_DIR) + "/" + rel; }

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

void write_idx_split(const std::string& dir, const std::string& prefix, int n, int rows, int cols,
                     int classes) {
  auto be32 = [](uint32_t v) {
    return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  };
  std::string img = be32(0x803) + be32(uint32_t(n)) + be32(uint32_t(rows)) + be32(uint32_t(cols));
  std::string lab = be32(0x801) + be32(uint32_t(n));
  for (int k = 0; k < n; ++k) {
    for (int y = 0; y < rows; ++y)
      for (int x = 0; x < cols; ++x) img += char((k * 7 + x * 3 + y * 11) & 255);
    lab += char(k % classes);
  }
  write_file(dir + "/" + prefix + "-images-idx3-ubyte", img);
  write_file(dir + "/" + prefix + "-labels-idx1-ubyte", lab);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace fkd::test
