// Single-thread throughput of fkd's training-image pipeline on a folder of JPEGs:
//   decode         decode_image only (libjpeg-turbo full decode to RGB)
//   pipeline K     decode, then K times: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3),
//                  resize to SIZExSIZE bilinear, random flip, normalize to float CHW
//   rows K         the same, but the crops are drawn first and only the rows they cover are
//                  decoded (decode_image_rows)
//   crop_only      the K=1 per-crop work alone, on images decoded beforehand
//
// Measured to stay meaningful on a busy machine: files are read into memory first; each file
// goes through every mode in turn (so a disturbance hits all modes alike), timed in this
// thread's CPU time; the crops of (file, mode) are the same in every round, and the fastest
// of --rounds rounds counts. Rate = files / sum over files of that best time.
//
// usage: bench_core_pipeline DIR [--size 224] [--crops 1,2,4] [--rounds 5] [--portable]
// Output, one line per mode:  MODE K IMAGES_PER_S CROPS_PER_S  (K = 0 for decode).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fkd/error.h"
#include "fkd/image.h"
#include "image/resample.h"

namespace {

/// This thread's CPU time in seconds.
double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}

struct Options {
  std::string dir;
  int size = 224;
  std::vector<int> crops = {1, 2, 4};
  int rounds = 5;
  bool portable = false;  ///< the portable kernels instead of the best available
};

/// torchvision's RandomResizedCrop.get_params with std::mt19937 as the generator.
fkd::PixelBox random_resized_crop(std::mt19937& rng, int height, int width) {
  const double area = double(height) * width;
  std::uniform_real_distribution<double> scale(0.08, 1.0);
  std::uniform_real_distribution<double> log_ratio(std::log(3.0 / 4.0), std::log(4.0 / 3.0));
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * scale(rng);
    const double aspect = std::exp(log_ratio(rng));
    const int w = int(std::lround(std::sqrt(target * aspect)));
    const int h = int(std::lround(std::sqrt(target / aspect)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const int top = std::uniform_int_distribution<int>(0, height - h)(rng);
      const int left = std::uniform_int_distribution<int>(0, width - w)(rng);
      return {left, top, w, h};
    }
  }
  // Fallback: the whole image, clamped to the ratio range, centred.
  const double in_ratio = double(width) / height;
  int w = width, h = height;
  if (in_ratio < 3.0 / 4.0)
    h = int(std::lround(w / (3.0 / 4.0)));
  else if (in_ratio > 4.0 / 3.0)
    w = int(std::lround(h * (4.0 / 3.0)));
  return {(width - w) / 2, (height - h) / 2, w, h};
}

/// The per-crop work of the training pipeline: crop box, resize, flip, normalize.
class CropWorker {
 public:
  explicit CropWorker(const Options& o)
      : opt_(o), hwc_(size_t(o.size) * o.size * 3), chw_(size_t(o.size) * o.size * 3) {}

  /// Draws k crops (and flips) for an image of the given size from a generator seeded with
  /// `seed`; returns the rows they cover.
  fkd::RowRange draw(unsigned seed, int k, int height, int width) {
    std::mt19937 rng(seed);
    crops_.clear();
    fkd::RowRange rows{height, 0};
    for (int j = 0; j < k; ++j) {
      const fkd::PixelBox b = random_resized_crop(rng, height, width);
      crops_.push_back({b, bool(rng() & 1)});
      rows.begin = std::min(rows.begin, b.top);
      rows.end = std::max(rows.end, b.top + b.height);
    }
    return rows;
  }

  /// Runs the drawn crops on `img`, whose row 0 is row `first_row` of the drawn-for image.
  void run(const fkd::Image& img, int first_row = 0) {
    for (const Crop& c : crops_) {
      fkd::PixelBox box = c.box;
      box.top -= first_row;
      fkd::detail::resized_crop_with(
          opt_.portable ? fkd::detail::Kernels::kPortable : fkd::detail::Kernels::kBest, img, box,
          c.flip, opt_.size, opt_.size, fkd::Interp::kBilinear, hwc_.data(), scratch_);
      fkd::to_float_chw(hwc_.data(), opt_.size, opt_.size, img.channels, norm_, chw_.data());
    }
  }

 private:
  struct Crop {
    fkd::PixelBox box;
    bool flip;
  };
  const Options& opt_;
  std::vector<Crop> crops_;
  std::vector<uint8_t> hwc_, scratch_;
  std::vector<float> chw_;
  fkd::Normalize norm_;
};

Options parse(int argc, char** argv) {
  Options o;
  auto usage = [&] {
    std::fprintf(stderr, "usage: %s DIR [--size N] [--crops 1,2,4] [--rounds R] [--portable]\n",
                 argv[0]);
    std::exit(2);
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (a == "--size")
      o.size = std::stoi(value());
    else if (a == "--rounds")
      o.rounds = std::stoi(value());
    else if (a == "--portable")
      o.portable = true;
    else if (a == "--crops") {
      o.crops.clear();
      const std::string v = value();
      for (size_t p = 0; p < v.size();) {
        const size_t q = std::min(v.find(',', p), v.size());
        o.crops.push_back(std::stoi(v.substr(p, q - p)));
        p = q + 1;
      }
    } else if (!a.empty() && a[0] != '-' && o.dir.empty())
      o.dir = a;
    else
      usage();
  }
  if (o.dir.empty() || o.rounds < 1 || o.size < 1) usage();
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  std::vector<std::string> paths;
  for (const auto& e : std::filesystem::directory_iterator(opt.dir)) {
    const auto ext = e.path().extension().string();
    if (ext == ".jpg" || ext == ".jpeg" || ext == ".JPEG") paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  if (paths.empty()) {
    std::fprintf(stderr, "%s: no .jpg files\n", opt.dir.c_str());
    return 1;
  }
  std::vector<std::vector<uint8_t>> files;
  for (const auto& p : paths) {
    std::ifstream f(p, std::ios::binary);
    files.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }

  try {
    const size_t n = files.size(), nk = opt.crops.size();
    std::vector<fkd::Image> decoded;
    for (size_t i = 0; i < n; ++i) {
      decoded.push_back(fkd::decode_image(files[i].data(), files[i].size(), 3, paths[i]));
    }
    CropWorker worker(opt);
    auto decode = [&](size_t i) {
      return fkd::decode_image(files[i].data(), files[i].size(), 3, paths[i]);
    };
    // Best time per file of each mode: decode, pipeline K..., rows K..., crop_only.
    const size_t modes = 2 + 2 * nk;
    std::vector<double> best(modes * n, std::numeric_limits<double>::infinity());
    auto timed = [&](size_t mode, size_t i, auto&& work) {
      const double t0 = cpu_seconds();
      work();
      best[mode * n + i] = std::min(best[mode * n + i], cpu_seconds() - t0);
    };
    for (int r = 0; r < opt.rounds; ++r) {
      for (size_t i = 0; i < n; ++i) {
        timed(0, i, [&] { decode(i); });
        for (size_t c = 0; c < nk; ++c) {
          const unsigned seed = unsigned(i * 16 + c);
          timed(1 + c, i, [&] {
            const fkd::Image img = decode(i);
            worker.draw(seed, opt.crops[c], img.height, img.width);
            worker.run(img);
          });
          timed(1 + nk + c, i, [&] {
            const fkd::ImageBand band = fkd::decode_image_rows(
                files[i].data(), files[i].size(), 3, paths[i],
                [&](int h, int w) { return worker.draw(seed, opt.crops[c], h, w); });
            worker.run(band.image, band.first_row);
          });
        }
        timed(modes - 1, i, [&] {
          worker.draw(unsigned(i), 1, decoded[i].height, decoded[i].width);
          worker.run(decoded[i]);
        });
      }
    }
    auto rate = [&](size_t mode) {
      double total = 0;
      for (size_t i = 0; i < n; ++i) total += best[mode * n + i];
      return double(n) / total;
    };
    std::printf("decode 0 %.1f %.1f\n", rate(0), 0.0);
    for (size_t c = 0; c < nk; ++c) {
      std::printf("pipeline %d %.1f %.1f\n", opt.crops[c], rate(1 + c), rate(1 + c) * opt.crops[c]);
    }
    for (size_t c = 0; c < nk; ++c) {
      std::printf("rows %d %.1f %.1f\n", opt.crops[c], rate(1 + nk + c),
                  rate(1 + nk + c) * opt.crops[c]);
    }
    std::printf("crop_only 1 %.1f %.1f\n", rate(modes - 1), rate(modes - 1));
  } catch (const fkd::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
