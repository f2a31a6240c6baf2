// fkd's one error path: typed exceptions, raised through FKD_CHECK / fkd::fail.
// The CLI catches fkd::Error, prints its message as one line and exits non-zero.
// Never assert on data: asserts vanish in Release builds.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace fkd {

/// Base of every error fkd raises on purpose. what() is one line, naming the
/// file (or option) involved, what was expected and what was found.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A user option or combination of options is invalid.
class ConfigError : public Error {
 public:
  using Error::Error;
};

/// An output directory already holds work (a run, a label store) made with other options, so
/// it can be neither resumed nor reused.
class WorkMismatch : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

/// Input data is bad: an image that does not decode, an empty class folder, a label out of range.
class DataError : public Error {
 public:
  using Error::Error;
};

/// A file fkd reads (checkpoint, store, IDX) is malformed, truncated or of an unknown version.
class FormatError : public Error {
 public:
  using Error::Error;
};

/// The operating system refused a read or write.
class IoError : public Error {
 public:
  using Error::Error;
};

/// A file or directory that was named does not exist (a kind of IoError).
class NotFoundError : public IoError {
 public:
  using IoError::IoError;
};

/// The one line of an exception's message to show: the first, except for errors raised inside
/// a TorchScript model, whose first line only says so and whose last names the failure
/// ("RuntimeError: Given groups=1, weight of size [64, 3, 7, 7], expected input ...").
inline std::string one_line(const std::string& what) {
  const std::string first = what.substr(0, what.find('\n'));
  const size_t end = what.find_last_not_of(" \n");
  if (first.find("TorchScript interpreter") == std::string::npos || end == std::string::npos) {
    return first;
  }
  const size_t newline = what.rfind('\n', end);
  const size_t begin = newline == std::string::npos ? 0 : newline + 1;
  return what.substr(begin, end + 1 - begin);
}

template <typename E, typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw E(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace fkd

/// FKD_CHECK(cond, ErrorType, "format {}", args...): throw ErrorType with the message unless cond.
#define FKD_CHECK(cond, E, ...)               \
  do {                                        \
    if (!(cond)) ::fkd::fail<E>(__VA_ARGS__); \
  } while (0)
