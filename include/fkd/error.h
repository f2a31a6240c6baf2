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

template <typename E, typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw E(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace fkd

/// FKD_CHECK(cond, ErrorType, "format {}", args...): throw ErrorType with the message unless cond.
#define FKD_CHECK(cond, E, ...)          \
  do {                                   \
    if (!(cond)) ::fkd::fail<E>(__VA_ARGS__); \
  } while (0)
