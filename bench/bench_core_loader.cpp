// The loader end to end on one worker thread: decode + RandomResizedCrop + resize + flip +
// normalize + batching, for 1, 2 and 4 crops per decoded image, beside decode alone (the
// floor) on the same files.
//
// usage: bench_core_loader IMAGEFOLDER_ROOT [--rounds R] [--size 224] [--decode-only]
// prints lines "MODE CROPS IMAGES_PER_S CROPS_PER_S" (MODE: decode | loader); the best of
// R rounds (wall time of one pass over the train split) counts.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fkd/dataset.h"
#include "fkd/image.h"
#include "fkd/loader.h"

using namespace fkd;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s IMAGEFOLDER_ROOT [--rounds R] [--size S] [--decode-only]\n",
                 argv[0]);
    return 2;
  }
  int rounds = 5, size = 224;
  bool decode_only = false;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--decode-only")) decode_only = true;
    if (i + 1 < argc && !std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[++i]);
    if (i + 1 < argc && !std::strcmp(argv[i], "--size")) size = std::atoi(argv[++i]);
  }
  auto ds = open_dataset(argv[1], Split::kTrain);
  const size_t n = ds->size();

  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = Clock::now();
    for (size_t i = 0; i < n; ++i) {
      const Image im = ds->load(i);
      if (im.pixels.empty()) return 1;
    }
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::printf("decode 0 %.1f %.1f\n", n / best, n / best);
  if (decode_only) return 0;

  for (int m : {1, 2, 4}) {
    TrainTransform t;
    t.crop.kind = CropKind::kRandomResized;
    t.crop.size = size;
    LoaderOptions o;
    o.batch_size = size_t(32 * m);
    o.workers = 1;
    o.prefetch = 4;
    Loader loader(ds, t, std::make_shared<RandomCropSource>(t, 0, m), o);
    best = 1e30;
    for (int r = 0; r < rounds; ++r) {
      const auto t0 = Clock::now();
      loader.start_epoch(r);
      Batch b;
      size_t rows = 0;
      while (loader.next(b)) rows += size_t(b.n);
      if (rows != n * size_t(m)) return 1;
      best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::printf("loader %d %.1f %.1f\n", m, n / best, n * m / best);
  }
  return 0;
}
