#include "fkd/allocator.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/format.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fkd {

namespace {

MallocConfig apply() {
  MallocConfig c;
#if defined(__GLIBC__)
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && std::strstr(tunables, "glibc.malloc.")) {
    c.description = fmt::format("glibc, GLIBC_TUNABLES={} (left as given)", tunables);
    return c;
  }
  // 32 MiB is the largest mmap threshold glibc accepts; a 1 GiB trim threshold keeps freed
  // heap memory for the next batch instead of returning it to the system.
  constexpr size_t kMmap = size_t(32) << 20, kTrim = size_t(1) << 30;
  const bool mmap_set = mallopt(M_MMAP_THRESHOLD, int(kMmap)) == 1;
  const bool trim_set = mallopt(M_TRIM_THRESHOLD, int(kTrim)) == 1;
  c.tuned = mmap_set && trim_set;
  c.mmap_threshold = mmap_set ? kMmap : 0;
  c.trim_threshold = trim_set ? kTrim : 0;
  c.description = fmt::format("glibc, set by fkd: mmap threshold {}, trim threshold {}",
                              mmap_set ? std::to_string(kMmap) : "not accepted",
                              trim_set ? std::to_string(kTrim) : "not accepted");
#else
  c.description = "not glibc: the C library's defaults";
#endif
  return c;
}

}  // namespace

const MallocConfig& configure_malloc() {
  static const MallocConfig config = apply();
  return config;
}

}  // namespace fkd
