// libFuzzer target: bytes decoded as an image of any format fkd reads (JPEG, PNG, WebP,
// TIFF, BMP, PNM), to each channel count, and as a row band. Every outcome must be an image
// of the size it claims or an fkd::Error; anything else (crash, sanitizer report, leak, an
// exception of another type) is a bug.
//
// Build and run as fuzz_shard_reader (fuzz/CMakeLists.txt), with the seeds in
// fuzz/corpus-image: build-fuzz/fuzz/fuzz_image_decode /tmp/fkd-fuzz-image fuzz/corpus-image
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "fkd/error.h"
#include "fkd/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (int want : {0, 1, 3}) {
    try {
      const fkd::Image img = fkd::decode_image(data, size, want, "fuzz");
      if (img.pixels.size() != size_t(img.height) * img.width * img.channels) std::abort();
    } catch (const fkd::Error&) {
    }
  }
  try {
    const fkd::ImageBand band = fkd::decode_image_rows(data, size, 3, "fuzz", [](int h, int) {
      return fkd::RowRange{h / 3, h / 3 + 2};
    });
    if (band.image.height > 2 || band.first_row + band.image.height > band.full_height)
      std::abort();
  } catch (const fkd::Error&) {
  }
  return 0;
}
