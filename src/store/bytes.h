// Byte-level helpers of the label store's files: little-endian fields at any offset,
// checksums, and raw bytes rendered for error messages.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace fkd::store {

// --- little-endian access ------------------------------------------------------------
// Fields sit at any offset (nothing is padded or aligned), so each one is assembled from
// its bytes with shifts: no alignment requirement, and the same result on any host.
inline uint16_t load_u16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
inline uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t load_u64(const uint8_t* p) {
  return uint64_t(load_u32(p)) | uint64_t(load_u32(p + 4)) << 32;
}
inline void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
inline void store_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

// --- checksums and messages -----------------------------------------------------------
/// XXH3-64 of a byte range. Seed 0 (the default, equal to unseeded XXH3-64): the checksum of
/// headers and indexes; blocks seed it with their first 8 bytes (block_checksum).
uint64_t checksum64(const uint8_t* data, size_t size, uint64_t seed = 0);

/// Human-readable rendering of up to n raw bytes for error messages: 'FKDLABEL' or hex.
std::string show_bytes(const uint8_t* p, size_t n);

}  // namespace fkd::store
