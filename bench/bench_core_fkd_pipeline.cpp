// FKD's data pipeline alone, no model: decode each image once, cut m of its stored crops
// (exact coordinates and flips), resize + normalize, recover each crop's dense soft label
// from the store, and batch — what decides FKD's speed on a GPU, where the student's compute
// is cheap. Beside it, the plain pipeline (one random crop per decoded image, hard labels).
//
// usage: bench_core_fkd_pipeline DATA STORE [--num-crops m] [--batch 128] [--workers W]
//          [--limit N] [--passes P] [--size S]
// DATA is a dataset spec (fashion-mnist, an IDX folder or an ImageFolder root) and STORE a
// label store of its train split (fkd label with the same --limit). Prints one JSON line per
// pipeline: {"pipeline": "fkd"|"plain", "samples_per_s": ..., "samples": ..., "seconds": ...}
// over P passes (loader epochs) after one warm-up pass.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "fkd/dataset.h"
#include "fkd/loader.h"
#include "fkd/replay.h"
#include "fkd/store.h"

using namespace fkd;
using Clock = std::chrono::steady_clock;

namespace {

double run(Loader& loader, int passes, size_t* samples) {
  Batch b;
  loader.start_epoch(1000);  // warm-up pass: page cache, allocator
  while (loader.next(b)) {
  }
  const auto t0 = Clock::now();
  *samples = 0;
  for (int p = 0; p < passes; ++p) {
    loader.start_epoch(p);
    while (loader.next(b)) *samples += size_t(b.n);
  }
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: %s DATA STORE [--num-crops m] [--batch 128] [--workers W] [--limit N] "
                 "[--passes P] [--size S]\n",
                 argv[0]);
    return 2;
  }
  int m = 4, workers = 2, passes = 2, size = 0;
  size_t batch = 128, limit = 0;
  for (int i = 3; i + 1 < argc; i += 2) {
    const char* k = argv[i];
    const char* v = argv[i + 1];
    if (!std::strcmp(k, "--num-crops"))
      m = std::atoi(v);
    else if (!std::strcmp(k, "--batch"))
      batch = size_t(std::atol(v));
    else if (!std::strcmp(k, "--workers"))
      workers = std::atoi(v);
    else if (!std::strcmp(k, "--limit"))
      limit = size_t(std::atol(v));
    else if (!std::strcmp(k, "--passes"))
      passes = std::atoi(v);
    else if (!std::strcmp(k, "--size"))
      size = std::atoi(v);
  }
  try {
    DatasetOptions dopt;
    dopt.limit = limit;
    auto ds = open_dataset(argv[1], Split::kTrain, dopt);
    auto store = std::make_shared<StoreReader>(argv[2]);
    check_store_matches(store->manifest(), argv[2], *ds, argv[1], limit);
    TrainTransform t;
    t.crop.size = size ? size : ds->load(0).height;
    for (int c = 0; c < 3; ++c) {
      t.norm.mean[c] = 0.5f;
      t.norm.std[c] = 0.25f;
    }
    LoaderOptions o;
    o.batch_size = batch;
    o.workers = workers;
    {
      Loader loader(ds, t, std::make_shared<StoreCropSource>(store, m, 0), o);
      size_t n = 0;
      const double s = run(loader, passes, &n);
      std::printf(
          "{\"pipeline\": \"fkd\", \"num_crops\": %d, \"workers\": %d, "
          "\"samples_per_s\": %.1f, \"samples\": %zu, \"seconds\": %.3f}\n",
          m, workers, double(n) / s, n, s);
    }
    {
      TrainTransform plain = t;
      plain.crop.kind = CropKind::kRandomResized;
      Loader loader(ds, plain, std::make_shared<RandomCropSource>(plain, 0, 1), o);
      size_t n = 0;
      const double s = run(loader, passes, &n);
      std::printf(
          "{\"pipeline\": \"plain\", \"num_crops\": 1, \"workers\": %d, "
          "\"samples_per_s\": %.1f, \"samples\": %zu, \"seconds\": %.3f}\n",
          workers, double(n) / s, n, s);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_core_fkd_pipeline: %s\n", e.what());
    return 1;
  }
  return 0;
}
