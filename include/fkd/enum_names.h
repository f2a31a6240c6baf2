// The names of an enum's values in one table: to a name, and back with a clear error.
#pragma once
#include <array>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "fkd/error.h"

namespace fkd {

template <typename E, size_t N>
class EnumNames {
 public:
  constexpr explicit EnumNames(std::array<std::pair<E, const char*>, N> table) : table_(table) {}

  /// The value's name; "unknown" for a value outside the table.
  const char* name(E value) const {
    for (const auto& [v, n] : table_)
      if (v == value) return n;
    return "unknown";
  }

  /// The value named `text`; ConfigError "unknown WHAT 'text': expected a, b or c" else.
  E parse(const std::string& text, const char* what) const {
    for (const auto& [v, n] : table_)
      if (text == n) return v;
    std::string choices;
    for (size_t i = 0; i < N; ++i) {
      choices += i == 0 ? "" : i + 1 == N ? " or " : ", ";
      choices += table_[i].second;
    }
    fail<ConfigError>("unknown {} '{}': expected {}", what, text, choices);
  }

 private:
  std::array<std::pair<E, const char*>, N> table_;
};

}  // namespace fkd
