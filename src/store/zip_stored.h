// The subset of ZIP that torch.save (PyTorch >= 1.6) writes: STORED (uncompressed) entries,
// one central directory, no ZIP64, no encryption, no multi-disk archives. Enough to read and
// write `torch.save` archives without torch; anything else is refused with one line.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fkd::store {

/// One entry of an archive held in memory: its name and where its bytes are (a view into
/// the archive; CRC-32 checked when listed).
struct ZipEntry {
  std::string name;
  const uint8_t* data = nullptr;
  size_t size = 0;
};

/// Lists the entries of the ZIP archive in [data, data + size), checking every header,
/// size and CRC-32 against the buffer. FormatError naming `file`, the offset and what was
/// wrong on any inconsistency, on compressed or encrypted entries and on ZIP64.
std::vector<ZipEntry> read_zip_stored(const uint8_t* data, size_t size, const std::string& file);

/// An archive of STORED entries, in the order given, each entry's data aligned to 64 bytes
/// from the start of the file (padding in the local header's extra field, as torch.save does).
std::string write_zip_stored(const std::vector<std::pair<std::string, std::string>>& entries);

}  // namespace fkd::store
