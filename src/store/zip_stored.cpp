#include "store/zip_stored.h"

#include <zlib.h>

#include <algorithm>

#include "fkd/error.h"
#include "store/bytes.h"

namespace fkd::store {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr size_t kLocalSize = 30, kCentralSize = 46, kEndSize = 22;
constexpr size_t kAlign = 64;        // torch.save aligns each record's data to 64 bytes
constexpr uint16_t kPadId = 0x4246;  // "FB": the extra field torch.save pads with

uint32_t crc32_of(const uint8_t* p, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (n > 0) {  // zlib takes uInt lengths
    const uInt chunk = uInt(std::min<size_t>(n, 1u << 30));
    crc = crc32(crc, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return uint32_t(crc);
}

void put16(std::string& s, uint16_t v) {
  s.push_back(char(v & 0xff));
  s.push_back(char(v >> 8));
}
void put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

}  // namespace

std::vector<ZipEntry> read_zip_stored(const uint8_t* data, size_t size, const std::string& file) {
  FKD_CHECK(size >= kEndSize, FormatError,
            "{}: {} bytes, too short for a ZIP archive (torch.save >= 1.6 writes one)", file, size);
  // The end record sits in the last 22 + 65535 (comment) bytes; search backwards.
  size_t end = size - kEndSize;
  const size_t lowest = size > kEndSize + 0xffff ? size - kEndSize - 0xffff : 0;
  while (load_u32(data + end) != kEndSig) {
    FKD_CHECK(end > lowest, FormatError,
              "{}: no ZIP end-of-central-directory record (truncated, or not a torch.save file)",
              file);
    --end;
  }
  const uint8_t* e = data + end;
  const uint16_t disk = load_u16(e + 4), cd_disk = load_u16(e + 6);
  const uint16_t count_here = load_u16(e + 8), count = load_u16(e + 10);
  const uint32_t cd_size = load_u32(e + 12), cd_offset = load_u32(e + 16);
  FKD_CHECK(count != 0xffff && cd_size != 0xffffffffu && cd_offset != 0xffffffffu, FormatError,
            "{}: a ZIP64 archive; only archives under 4 GiB of torch.save are read", file);
  FKD_CHECK(disk == 0 && cd_disk == 0 && count_here == count, FormatError,
            "{}: a multi-disk ZIP archive at offset {}", file, end);
  FKD_CHECK(uint64_t(cd_offset) + cd_size <= end, FormatError,
            "{}: central directory at offset {} of {} bytes runs past its end record at {}", file,
            cd_offset, cd_size, end);
  std::vector<ZipEntry> out;
  size_t p = cd_offset;
  const size_t cd_end = size_t(cd_offset) + cd_size;
  for (uint16_t n = 0; n < count; ++n) {
    FKD_CHECK(p + kCentralSize <= cd_end && load_u32(data + p) == kCentralSig, FormatError,
              "{}: central directory entry {} at offset {}: expected signature PK\\1\\2, found {}",
              file, n, p, p + 4 <= size ? show_bytes(data + p, 4) : "the end of the file");
    const uint8_t* c = data + p;
    const uint16_t flags = load_u16(c + 8), method = load_u16(c + 10);
    const uint32_t crc = load_u32(c + 16), csize = load_u32(c + 20), usize = load_u32(c + 24);
    const uint16_t name_len = load_u16(c + 28), extra_len = load_u16(c + 30);
    const uint16_t comment_len = load_u16(c + 32);
    const uint32_t local = load_u32(c + 42);
    FKD_CHECK(p + kCentralSize + name_len + extra_len + comment_len <= cd_end, FormatError,
              "{}: central directory entry {} at offset {} runs past the directory", file, n, p);
    ZipEntry z;
    z.name.assign(reinterpret_cast<const char*>(c + kCentralSize), name_len);
    FKD_CHECK((flags & 1) == 0, FormatError, "{}: entry {} is encrypted", file, z.name);
    FKD_CHECK(method == 0 && csize == usize, FormatError,
              "{}: entry {} is compressed (method {}); torch.save writes STORED entries only", file,
              z.name, method);
    FKD_CHECK(uint64_t(local) + kLocalSize <= size && load_u32(data + local) == kLocalSig,
              FormatError, "{}: entry {}: no local header at offset {}", file, z.name, local);
    const uint8_t* l = data + local;
    const uint64_t begin = uint64_t(local) + kLocalSize + load_u16(l + 26) + load_u16(l + 28);
    FKD_CHECK(begin + usize <= cd_offset, FormatError,
              "{}: entry {} at offset {} of {} bytes runs past the central directory at {}"
              " (truncated?)",
              file, z.name, begin, usize, cd_offset);
    z.data = data + begin;
    z.size = usize;
    const uint32_t found = crc32_of(z.data, z.size);
    FKD_CHECK(found == crc, FormatError,
              "{}: entry {} at offset {}: CRC-32 {:08x} expected, {:08x} found (damaged)", file,
              z.name, begin, crc, found);
    out.push_back(std::move(z));
    p += kCentralSize + name_len + extra_len + comment_len;
  }
  return out;
}

std::string write_zip_stored(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out, central;
  for (const auto& [name, bytes] : entries) {
    FKD_CHECK(name.size() < 0xffff && bytes.size() < 0xffffffffu && out.size() < 0xffffffffu,
              FormatError, "ZIP entry {}: too large for a ZIP archive without ZIP64", name);
    const uint32_t crc = crc32_of(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    const uint32_t local = uint32_t(out.size());
    // Pad with an extra field so the data starts at a multiple of kAlign (a field needs 4 bytes
    // of header, so the padding is 4 to 4 + kAlign - 1 bytes).
    const size_t unpadded = out.size() + kLocalSize + name.size() + 4;
    const uint16_t pad = uint16_t((kAlign - unpadded % kAlign) % kAlign);
    put32(out, kLocalSig);
    put16(out, 20);    // version needed: 2.0
    put16(out, 0);     // flags
    put16(out, 0);     // STORED
    put16(out, 0);     // time
    put16(out, 0x21);  // date: 1980-01-01
    put32(out, crc);
    put32(out, uint32_t(bytes.size()));
    put32(out, uint32_t(bytes.size()));
    put16(out, uint16_t(name.size()));
    put16(out, uint16_t(4 + pad));
    out += name;
    put16(out, kPadId);
    put16(out, pad);
    out.append(pad, 'Z');
    out += bytes;

    put32(central, kCentralSig);
    put16(central, 20);  // made by
    put16(central, 20);  // needed
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0x21);
    put32(central, crc);
    put32(central, uint32_t(bytes.size()));
    put32(central, uint32_t(bytes.size()));
    put16(central, uint16_t(name.size()));
    put16(central, 0);  // extra
    put16(central, 0);  // comment
    put16(central, 0);  // disk
    put16(central, 0);  // internal attributes
    put32(central, 0);  // external attributes
    put32(central, local);
    central += name;
  }
  FKD_CHECK(entries.size() < 0xffff && out.size() + central.size() < 0xffffffffu, FormatError,
            "ZIP archive of {} entries: too large without ZIP64", entries.size());
  const uint32_t cd_offset = uint32_t(out.size());
  out += central;
  put32(out, kEndSig);
  put16(out, 0);
  put16(out, 0);
  put16(out, uint16_t(entries.size()));
  put16(out, uint16_t(entries.size()));
  put32(out, uint32_t(central.size()));
  put32(out, cd_offset);
  put16(out, 0);  // comment
  return out;
}

}  // namespace fkd::store
