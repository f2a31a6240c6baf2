#include "fkd/hash.h"

#include <xxhash.h>

#include <memory>

#include <fmt/format.h>

#include "fkd/file_io.h"

namespace fkd {

std::string hash_file_hex(const std::string& path) {
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(), &XXH3_freeState);
  XXH3_128bits_reset(st.get());
  read_file_chunks(
      path, [&](const uint8_t* data, size_t size) { XXH3_128bits_update(st.get(), data, size); });
  const XXH128_hash_t h = XXH3_128bits_digest(st.get());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

}  // namespace fkd
