// libFuzzer target: a shard file's bytes, parsed as a finished shard (header, footer,
// index, then every record decoded) and as an unfinished .partial (header, block scan).
// Each input runs twice: with checksums verified (the real reader) and without, so that
// mutations reach the record decoders instead of stopping at a checksum. Every outcome
// must be a clean decode or an fkd::Error; anything else (crash, sanitizer report, leak,
// an exception of another type) is a bug.
//
// Build (clang): CXX=clang++ cmake -S . -B build-fuzz -DFKD_FUZZ=ON -DFKD_BUILD_TESTS=OFF
//                  -DFKD_BUILD_BENCH=OFF && cmake --build build-fuzz --target fuzz_shard_reader
// Run:           mkdir -p /tmp/fkd-fuzz && build-fuzz/fuzz/fuzz_shard_reader /tmp/fkd-fuzz
// fuzz/corpus (the seeds in fuzz/corpus are v1 shards written by tests/test_core_store.cpp).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fkd/error.h"
#include "fkd/store.h"
#include "store/shard.h"

namespace {

void run(const uint8_t* data, size_t size, bool verify) {
  const std::string name = verify ? "fuzz(verified)" : "fuzz(unverified)";
  fkd::ImageLabels labels;
  try {
    const auto view = fkd::store::ShardView::parse(data, size, name, {verify});
    const auto& h = view.header();
    for (uint64_t id = h.image_begin; id < h.image_end; ++id) {
      try {
        view.read(id, labels);
      } catch (const fkd::Error&) {
      }
    }
  } catch (const fkd::Error&) {
  }
  try {
    const auto h = fkd::store::decode_header(data, size, name, verify);
    const auto scan = fkd::store::scan_blocks(data, size, h, name, verify);
    (void)scan;
  } catch (const fkd::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run(data, size, /*verify=*/true);
  run(data, size, /*verify=*/false);
  return 0;
}
