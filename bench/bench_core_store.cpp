// Size and random-access read speed of fkd's label store, on synthetic teacher-like labels.
//
//   write DIR --classes C [--images 200] [--crops 500] [--k 5] [--dump FILE]
//       Generates labels (below), quantizes them marginal_smoothing top-k and writes four
//       stores: DIR/fp16 and DIR/u8, DIR/fp16-v1 in format version 1 (zstd records), and
//       DIR/fp16-explicit, whose records store the same crops as explicit pixel boxes (what
//       an import of the reference's files writes). --dump
//       also writes the same labels for bench/store_reference.py (little-endian: int32 indices
//       [I,N,k], float32 values [I,N,k], float32 normalized crops (top, left, height, width)
//       [I,N,4], uint8 flips [I,N]) so the reference layout holds exactly the same labels. Prints:
//       "write PREC BYTES_PER_CROP RECORDS_PER_S" (writer: encode + pack + write).
//   read DIR [--rounds 40] [--reads 1000]
//       Decodes random records (every crop's indices and values) of the page-cached store.
//       Prints: "read RECORDS_PER_S CROPS_PER_S" and "derive US_PER_CROP" (deriving one
//       crop's box and flip, which training does only for the crops it picks).
//
// Synthetic labels, a stand-in for a real teacher on random-resized crops: per image, a true
// class and prior logits 1.5 * N(0,1) for every class (the image's content: the same for all
// its crops); per crop, logits = prior + 0.5 * N(0,1), the true class + ln(C) + 2 + 2 * N(0,1)
// (crops that miss the object are less sure); softmax at temperature 1. The top classes of
// an image's crops repeat as they do with a real teacher, and the top-1 probability spreads
// widely (mean about 0.6).
//
// Rates are per CPU-second of this thread (the machine may be shared), best of --rounds.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fkd/error.h"
#include "fkd/rng.h"
#include "fkd/store.h"
#include "fkd/transforms.h"

namespace {

namespace fs = std::filesystem;
using namespace fkd;

double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}

double normal(Rng& r) {
  const double u = std::max(r.uniform(), 1e-300), v = r.uniform();
  return std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v);
}

struct Args {
  std::string mode, dir, dump;
  int classes = 1000, images = 200, crops = 500, k = 5, rounds = 40, reads = 1000;
};

Args parse(int argc, char** argv) {
  FKD_CHECK(argc >= 3, ConfigError, "usage: bench_core_store write|read DIR [options]");
  Args a;
  a.mode = argv[1];
  a.dir = argv[2];
  for (int i = 3; i < argc; ++i) {
    const std::string o = argv[i];
    FKD_CHECK(i + 1 < argc, ConfigError, "{} needs a value", o);
    const std::string v = argv[++i];
    if (o == "--classes")
      a.classes = std::stoi(v);
    else if (o == "--images")
      a.images = std::stoi(v);
    else if (o == "--crops")
      a.crops = std::stoi(v);
    else if (o == "--k")
      a.k = std::stoi(v);
    else if (o == "--rounds")
      a.rounds = std::stoi(v);
    else if (o == "--reads")
      a.reads = std::stoi(v);
    else if (o == "--dump")
      a.dump = v;
    else
      fail<ConfigError>("unknown option {}", o);
  }
  return a;
}

Manifest bench_manifest(const Args& a, Precision p) {
  Manifest m;
  m.num_images = uint64_t(a.images);
  m.dataset_fingerprint = "synthetic";
  for (int c = 0; c < a.classes; ++c) m.classes.push_back("c" + std::to_string(c));
  m.teacher = "synthetic-teacher";
  m.teacher_hash = "0";
  m.label_type = LabelType::kMarginalSmoothing;
  m.k = a.k;
  m.precision = p;
  m.crops_per_image = uint32_t(a.crops);
  m.seed = 1;
  m.crop.size = 224;
  return m;
}

int write(const Args& a) {
  const int C = a.classes, N = a.crops, K = a.k;
  const uint32_t H = 375, W = 500;  // a typical ImageNet image
  std::vector<ImageLabels> labels(size_t(a.images));
  std::vector<float> coords;
  std::vector<uint8_t> flips;
  const Manifest m16 = bench_manifest(a, Precision::kFp16);
  std::vector<double> logit(static_cast<size_t>(C)), prior(static_cast<size_t>(C));
  std::vector<float> p(static_cast<size_t>(C));
  double top1 = 0;
  for (int i = 0; i < a.images; ++i) {
    Rng img(hash_keys({uint64_t(i), 1}));
    const size_t truth = size_t(img.below(uint64_t(C)));
    for (double& x : prior) x = 1.5 * normal(img);
    ImageLabels& l = labels[size_t(i)];
    l.height = H;
    l.width = W;
    l.num_crops = uint32_t(N);
    l.crop_hash = label_crop_hash(m16, uint64_t(i), H, W);
    l.indices.resize(size_t(N) * size_t(K));
    l.values.resize(size_t(N) * size_t(K));
    for (int c = 0; c < N; ++c) {
      Rng cr(hash_keys({uint64_t(i), uint64_t(c), 2}));
      for (int j = 0; j < C; ++j) logit[size_t(j)] = prior[size_t(j)] + 0.5 * normal(cr);
      logit[truth] += std::log(double(C)) + 2 + 2 * normal(cr);
      const double mx = *std::max_element(logit.begin(), logit.end());
      double sum = 0;
      for (double& x : logit) sum += (x = std::exp(x - mx));
      for (int j = 0; j < C; ++j) p[size_t(j)] = float(logit[size_t(j)] / sum);
      quantize_crop(p.data(), C, LabelType::kMarginalSmoothing, K,
                    l.indices.data() + size_t(c) * size_t(K),
                    l.values.data() + size_t(c) * size_t(K));
      top1 += l.values[size_t(c) * size_t(K)];
      if (!a.dump.empty()) {
        const CropPlan cp =
            derive_label_crop(m16.crop, m16.seed, uint64_t(i), uint32_t(c), int(H), int(W));
        coords.insert(coords.end(),
                      {float(cp.box.top) / float(H), float(cp.box.left) / float(W),
                       float(cp.box.height) / float(H), float(cp.box.width) / float(W)});
        flips.push_back(cp.flip ? 1 : 0);
      }
    }
  }
  std::fprintf(stderr, "classes %d: mean top-1 probability %.3f\n", C,
               top1 / (double(a.images) * N));
  if (!a.dump.empty()) {
    std::ofstream f(a.dump, std::ios::binary);
    for (const auto& l : labels)
      f.write(reinterpret_cast<const char*>(l.indices.data()),
              std::streamsize(l.indices.size() * 4));
    for (const auto& l : labels)
      f.write(reinterpret_cast<const char*>(l.values.data()), std::streamsize(l.values.size() * 4));
    f.write(reinterpret_cast<const char*>(coords.data()), std::streamsize(coords.size() * 4));
    f.write(reinterpret_cast<const char*>(flips.data()), std::streamsize(flips.size()));
    FKD_CHECK(f.good(), IoError, "{}: cannot write", a.dump);
  }
  // The same crops as explicit boxes: RandomResizedCrop boxes of the 500 x 375 image, as the
  // reference's files hold them.
  std::vector<ImageLabels> boxed = labels;
  for (int i = 0; i < a.images; ++i) {
    for (int c = 0; c < N; ++c) {
      boxed[size_t(i)].boxes.push_back(
          derive_label_crop(m16.crop, m16.seed, uint64_t(i), uint32_t(c), int(H), int(W)));
    }
  }
  // fp16 and u8 in the current format; fp16 also as a version 1 store (zstd records) and with
  // explicit crops.
  struct Kind {
    Precision prec;
    int version;
    CropOrigin origin;
    const char* suffix;
  };
  for (const Kind& k :
       {Kind{Precision::kFp16, kStoreFormatVersion, CropOrigin::kDerived, ""},
        Kind{Precision::kU8, kStoreFormatVersion, CropOrigin::kDerived, ""},
        Kind{Precision::kFp16, 1, CropOrigin::kDerived, "-v1"},
        Kind{Precision::kFp16, kStoreFormatVersion, CropOrigin::kExplicit, "-explicit"}}) {
    const Precision prec = k.prec;
    Manifest m = bench_manifest(a, prec);
    m.version = k.version;
    m.crop_origin = k.origin;
    const std::vector<ImageLabels>& records = k.origin == CropOrigin::kExplicit ? boxed : labels;
    const std::string name = std::string(precision_name(prec)) + k.suffix;
    const std::string dir = a.dir + "/" + name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    write_manifest(dir, m);
    const double t0 = cpu_seconds();
    {
      ShardWriter w(dir, m, 0);
      for (int i = 0; i < a.images; ++i) w.append(uint64_t(i), records[size_t(i)]);
      w.finish();
    }
    const double t = cpu_seconds() - t0;
    const StoreReader r(dir);
    std::printf("write %s %.3f %.0f\n", name.c_str(),
                double(r.shard_bytes()) / (double(a.images) * N), a.images / t);
  }
  return 0;
}

int read(const Args& a) {
  const StoreReader r(a.dir);
  const uint64_t n = r.num_images();
  ImageLabels l;
  // Touch every record once: the store is page-cached, as the reference's files are.
  for (uint64_t i = 0; i < n; ++i) r.read(i, l);
  double best = 1e30;
  uint64_t checksum = 0;
  for (int round = 0; round < a.rounds; ++round) {
    Rng rng(hash_keys({uint64_t(round), 3}));
    const double t0 = cpu_seconds();
    for (int it = 0; it < a.reads; ++it) {
      r.read(rng.below(n), l);
      checksum += uint64_t(l.indices[0]);
    }
    best = std::min(best, cpu_seconds() - t0);
  }
  const double rate = a.reads / best;
  std::printf("read %.0f %.0f\n", rate, rate * r.manifest().crops_per_image);
  const Manifest& m = r.manifest();
  const int crops = 100000;
  double derive = 1e30;
  for (int round = 0; round < a.rounds; ++round) {
    const double t0 = cpu_seconds();
    for (int c = 0; c < crops; ++c) {
      const CropPlan p =
          derive_label_crop(m.crop, m.seed, uint64_t(c % 997), uint32_t(c), 375, 500);
      checksum += uint64_t(p.box.left);
    }
    derive = std::min(derive, cpu_seconds() - t0);
  }
  std::printf("derive %.3f\n", derive / crops * 1e6);
  std::fprintf(stderr, "(checksum %llu)\n", static_cast<unsigned long long>(checksum));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    if (a.mode == "write") return write(a);
    if (a.mode == "read") return read(a);
    fkd::fail<fkd::ConfigError>("unknown mode '{}': expected write or read", a.mode);
  } catch (const fkd::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
