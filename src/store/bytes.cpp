#include "store/bytes.h"

#include <xxhash.h>

#include <fmt/format.h>

namespace fkd::store {

uint64_t checksum64(const uint8_t* data, size_t size, uint64_t seed) {
  return XXH3_64bits_withSeed(data, size, seed);
}

std::string show_bytes(const uint8_t* p, size_t n) {
  bool printable = true;
  for (size_t i = 0; i < n; ++i) {
    printable = printable && p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'';
  }
  if (printable) return "'" + std::string(reinterpret_cast<const char*>(p), n) + "'";
  std::string s = "0x";
  for (size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", p[i]);
  return s;
}

}  // namespace fkd::store
