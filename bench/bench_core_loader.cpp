// The loader end to end: decode + crops + resize + flip + normalize + batching, for 1, 2 and
// 4 crops per decoded image side by side, beside decode alone (the floor) on the same files.
// Two crop sources:
//   loader  random crops (RandomCropSource: RandomResizedCrop + flip), as supervised training
//   store   crops replayed from a label store with their soft labels (StoreCropSource), the
//           path `fkd train --labels` runs. The store is written first, into a temporary
//           directory, with fkd's own ShardWriter: random marginal-smoothing top-5 labels of
//           1,000 classes (ImageNet's count; the classes only size the soft labels),
//           fp16, --stored-crops RandomResizedCrop crops per image.
//
// usage: bench_core_loader IMAGEFOLDER_ROOT [--rounds R] [--size 224] [--decode-only]
//          [--crops 1,2,4] [--sources loader,store] [--workers 1] [--prefetch 4]
//          [--batch-images 32] [--stored-crops 16]
// A batch holds --batch-images images (times m crops). Each mode runs one untimed warm-up
// epoch, then R timed epochs; the fastest counts. Prints lines
//   MODE CROPS IMAGES_PER_S CROPS_PER_S MINOR_FAULTS_PER_IMAGE [BATCH_BUFFERS]
// (MODE: decode | loader | store; faults: getrusage ru_minflt over the timed epochs, per
// image; batch buffers: what the loader allocated over all its epochs) and a line
// "malloc ..." with the allocator configuration the run used: the library's own
// (configure_malloc, as in the fkd binary).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "fkd/allocator.h"
#include "fkd/dataset.h"
#include "fkd/image.h"
#include "fkd/loader.h"
#include "fkd/replay.h"
#include "fkd/rng.h"
#include "fkd/store.h"

using namespace fkd;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string root;
  int rounds = 5, size = 224, workers = 1, prefetch = LoaderOptions{}.prefetch;
  int batch_images = 32, stored_crops = 16;
  bool decode_only = false;
  std::vector<int> crops = {1, 2, 4};
  std::vector<std::string> sources = {"loader", "store"};
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) out.push_back(part);
  return out;
}

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

/// Fastest of `rounds` timed epochs after one warm-up epoch; faults per image over the
/// timed epochs.
void time_loader(Loader& loader, const char* mode, int m, const Options& o, size_t n) {
  Batch b;
  loader.start_epoch(1000);
  while (loader.next(b)) {
  }
  double best = 1e30;
  const long f0 = minor_faults();
  for (int r = 0; r < o.rounds; ++r) {
    const auto t0 = Clock::now();
    loader.start_epoch(r);
    size_t rows = 0;
    while (loader.next(b)) rows += size_t(b.n);
    if (rows != n * size_t(m)) {
      std::fprintf(stderr, "bench_core_loader: %zu rows, expected %zu\n", rows, n * size_t(m));
      std::exit(1);
    }
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double faults = double(minor_faults() - f0) / double(o.rounds * n);
  std::printf("%s %d %.1f %.1f %.1f %zu\n", mode, m, n / best, n * m / best, faults,
              loader.buffers_allocated());
  std::fflush(stdout);
}

/// A label store of `ds`'s images with random labels, as `fkd label` would write it.
std::shared_ptr<StoreReader> make_store(const Dataset& ds, const std::string& dir,
                                        int stored_crops) {
  constexpr int kClasses = 1000, kTopK = 5;
  Manifest m;
  m.num_images = ds.size();
  m.dataset = ds.root();
  for (int c = 0; c < kClasses; ++c) m.classes.push_back("class" + std::to_string(c));
  m.teacher = "random";
  m.teacher_hash = "00000000000000000000000000000000";
  m.label_type = LabelType::kMarginalSmoothing;
  m.k = kTopK;
  m.precision = Precision::kFp16;
  m.crops_per_image = uint32_t(stored_crops);
  m.crop.size = 224;
  m.mean = {0.485f, 0.456f, 0.406f};
  m.std = {0.229f, 0.224f, 0.225f};
  fs::create_directories(dir);
  write_manifest(dir, m);
  ShardWriter w(dir, m, 0);
  std::vector<float> probs(kClasses);
  for (uint64_t i = 0; i < m.num_images; ++i) {
    const Image img = ds.load(i);
    ImageLabels l;
    l.height = uint32_t(img.height);
    l.width = uint32_t(img.width);
    l.num_crops = m.crops_per_image;
    l.crop_hash = label_crop_hash(m, i, l.height, l.width);
    l.indices.resize(size_t(stored_crops) * kTopK);
    l.values.resize(size_t(stored_crops) * kTopK);
    Rng rng(1, RngStream::kAugment, {i});
    for (int c = 0; c < stored_crops; ++c) {
      double sum = 0;
      for (float& p : probs) sum += p = float(std::exp(4.0 * rng.uniform()));
      for (float& p : probs) p = float(p / sum);
      quantize_crop(probs.data(), kClasses, m.label_type, m.k, l.indices.data() + c * kTopK,
                    l.values.data() + c * kTopK);
    }
    w.append(i, l);
  }
  w.finish();
  return std::make_shared<StoreReader>(dir);
}

Options parse(int argc, char** argv) {
  Options o;
  o.root = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--decode-only") {
      o.decode_only = true;
      continue;
    }
    if (i + 1 >= argc) break;
    const char* v = argv[++i];
    if (k == "--rounds")
      o.rounds = std::atoi(v);
    else if (k == "--size")
      o.size = std::atoi(v);
    else if (k == "--workers")
      o.workers = std::atoi(v);
    else if (k == "--batch-images")
      o.batch_images = std::atoi(v);
    else if (k == "--stored-crops")
      o.stored_crops = std::atoi(v);
    else if (k == "--sources")
      o.sources = split(v);
    else if (k == "--crops") {
      o.crops.clear();
      for (const auto& c : split(v)) o.crops.push_back(std::atoi(c.c_str()));
    } else {
      std::fprintf(stderr, "bench_core_loader: unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s IMAGEFOLDER_ROOT [--rounds R] [--size S] [--decode-only] "
                 "[--crops 1,2,4] [--sources loader,store] [--workers W] [--prefetch P] "
                 "[--batch-images B] "
                 "[--stored-crops N]\n",
                 argv[0]);
    return 2;
  }
  const Options o = parse(argc, argv);
  const MallocConfig& malloc_config = configure_malloc();  // as the fkd binary does
  try {
    auto ds = open_dataset(o.root, Split::kTrain);
    const size_t n = ds->size();

    double best = 1e30;
    const long f0 = minor_faults();
    for (int r = 0; r < o.rounds; ++r) {
      const auto t0 = Clock::now();
      for (size_t i = 0; i < n; ++i) {
        const Image im = ds->load(i);
        if (im.pixels.empty()) return 1;
      }
      best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::printf("decode 0 %.1f %.1f %.1f\n", n / best, n / best,
                double(minor_faults() - f0) / double(o.rounds * n));
    std::fflush(stdout);

    if (!o.decode_only) {
      TrainTransform t;
      t.crop.kind = CropKind::kRandomResized;
      t.crop.size = o.size;
      std::shared_ptr<StoreReader> store;
      std::string store_dir;
      const int max_m = *std::max_element(o.crops.begin(), o.crops.end());
      for (const std::string& source : o.sources) {
        if (source == "store" && !store) {
          store_dir = (fs::temp_directory_path() / ("fkd-bench-store-" + std::to_string(getpid())))
                          .string();
          store = make_store(*ds, store_dir, std::max(o.stored_crops, max_m));
        }
        for (int m : o.crops) {
          LoaderOptions lo;
          lo.batch_size = size_t(o.batch_images) * size_t(m);
          lo.workers = o.workers;
          lo.prefetch = o.prefetch;
          std::shared_ptr<const CropSource> crops;
          if (source == "loader") {
            crops = std::make_shared<RandomCropSource>(t, 0, m);
          } else if (source == "store") {
            crops = std::make_shared<StoreCropSource>(store, m, 0);
          } else {
            std::fprintf(stderr, "bench_core_loader: unknown source %s\n", source.c_str());
            return 2;
          }
          Loader loader(ds, t, crops, lo);
          time_loader(loader, source.c_str(), m, o, n);
        }
      }
      store.reset();
      if (!store_dir.empty()) fs::remove_all(store_dir);
    }
    std::printf("malloc %s\n", malloc_config.description.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_core_loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
