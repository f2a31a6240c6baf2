// The process-wide malloc configuration fkd runs with.
//
// glibc serves every block above its mmap threshold (128 KiB by default, raised on the fly
// up to 32 MiB) with fresh pages from mmap and unmaps them on free, and hands the heap's free
// top back to the system beyond its trim threshold. A loop that allocates and frees large
// buffers (tensors, decoded images) then faults every page in again on each pass: about a
// third of an inference-heavy run went to the kernel. Raised thresholds keep those blocks in
// the heap, reused. Blocks above 32 MiB (glibc's ceiling for the threshold) are always
// mmap'd: the loader recycles its batch buffers itself for that reason (loader.h).
#pragma once
#include <cstddef>
#include <string>

namespace fkd {

/// The malloc configuration in effect.
struct MallocConfig {
  bool tuned = false;         ///< fkd set the two thresholds below
  size_t mmap_threshold = 0;  ///< bytes; blocks above it are mmap'd (0: not set by fkd)
  size_t trim_threshold = 0;  ///< bytes of free heap top kept (0: not set by fkd)
  std::string description;    ///< one line for logs and benchmarks
};

/// Applies fkd's malloc settings to the process, once (later calls return the first result):
/// mmap threshold 32 MiB and trim threshold 1 GiB. Leaves malloc as it is when the process
/// was started with glibc.malloc tunables in GLIBC_TUNABLES (the user's choice wins) or the
/// C library is not glibc. The fkd binary calls it at start-up and every Loader on
/// construction, so any program that loads data with the library runs with the fkd binary's
/// settings.
const MallocConfig& configure_malloc();

}  // namespace fkd
