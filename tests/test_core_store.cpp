// The label store (store.h, docs/label-store.md): pure kernels, round trips of every label
// type and precision, a table of corrupt stores, crash/resume of the writer, sharding and
// merging, the crop hash, and the committed v1 seed shards (golden files).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <regex>
#include <set>
#include <thread>
#include <utility>

#include <xxhash.h>
#include <nlohmann/json.hpp>

#include "fkd/error.h"
#include "fkd/rng.h"
#include "fkd/store.h"
#include "fkd/transforms.h"
#include "store/manifest.h"
#include "store/shard_file.h"
#include "testutil.h"

namespace fkd {
namespace {

namespace fs = std::filesystem;
using test::read_file;
using test::TempDir;
using test::write_file;

// --- fixtures --------------------------------------------------------------------------

Manifest make_manifest(LabelType t, int k, Precision p, int num_classes, uint32_t crops,
                       uint64_t num_images, uint32_t shards = 1) {
  Manifest m;
  m.num_images = num_images;
  m.dataset_fingerprint = "0123456789abcdef";
  for (int c = 0; c < num_classes; ++c) m.classes.push_back("class" + std::to_string(c));
  m.teacher = "teacher.pt";
  m.teacher_hash = "00112233445566778899aabbccddeeff";
  m.label_type = t;
  m.k = k;
  m.precision = p;
  m.crops_per_image = crops;
  m.seed = 42;
  m.crop.size = 32;
  m.mean = {0.5f, 0.25f, 0.125f};
  m.std = {0.2f, 0.3f, 0.4f};
  m.num_shards = shards;
  return m;
}

double normal(Rng& r) {
  const double u = std::max(r.uniform(), 1e-300), v = r.uniform();
  return std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v);
}

/// A teacher-like softmax: per-image prior logits and a boosted true class, per-crop noise.
std::vector<float> crop_probs(uint64_t image, uint32_t crop, int C) {
  Rng img(hash_keys({image, 7}));
  Rng cr(hash_keys({image, crop, 9}));
  const int truth = int(img.below(uint64_t(C)));
  std::vector<double> logit(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) logit[size_t(c)] = 1.5 * normal(img) + 0.5 * normal(cr);
  logit[size_t(truth)] += std::log(double(C)) + 2 + 2 * normal(cr);
  const double mx = *std::max_element(logit.begin(), logit.end());
  double sum = 0;
  for (double& x : logit) sum += (x = std::exp(x - mx));
  std::vector<float> p(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) p[size_t(c)] = float(logit[size_t(c)] / sum);
  return p;
}

int num_classes(const Manifest& m) { return int(m.classes.size()); }

/// Image i's labels as a labeler would produce them (quantized, not yet rounded).
ImageLabels make_labels(const Manifest& m, uint64_t image) {
  const int C = num_classes(m);
  const int ni = stored_indices(m.label_type, m.k), nv = stored_values(m.label_type, m.k, C);
  ImageLabels l;
  l.height = 40 + uint32_t(image % 17);
  l.width = 50 + uint32_t(image % 23);
  l.num_crops = m.crops_per_image;
  l.crop_hash = label_crop_hash(m, image, l.height, l.width);
  l.indices.resize(size_t(m.crops_per_image) * size_t(ni));
  l.values.resize(size_t(m.crops_per_image) * size_t(nv));
  for (uint32_t c = 0; c < m.crops_per_image; ++c) {
    const auto p = crop_probs(image, c, C);
    quantize_crop(p.data(), C, m.label_type, m.k, l.indices.data() + size_t(c) * size_t(ni),
                  l.values.data() + size_t(c) * size_t(nv));
  }
  return l;
}

/// Labels from integer arithmetic and correctly rounded float division only (no libm), so
/// the committed golden shards compare equal on every platform.
ImageLabels portable_labels(const Manifest& m, uint64_t image) {
  const int C = num_classes(m);
  const int ni = stored_indices(m.label_type, m.k), nv = stored_values(m.label_type, m.k, C);
  ImageLabels l;
  l.height = 30 + uint32_t(image);
  l.width = 45 - uint32_t(image);
  l.num_crops = m.crops_per_image;
  if (m.crop_origin == CropOrigin::kExplicit) {
    Rng boxes(hash_keys({image, 19}));
    for (uint32_t c = 0; c < m.crops_per_image; ++c) {
      CropPlan p;
      p.box.width = 1 + int(boxes.below(l.width));
      p.box.height = 1 + int(boxes.below(l.height));
      p.box.left = int(boxes.below(l.width - uint32_t(p.box.width) + 1));
      p.box.top = int(boxes.below(l.height - uint32_t(p.box.height) + 1));
      p.flip = boxes.below(2) == 1;
      p.id = c;
      l.boxes.push_back(p);
    }
    l.crop_hash = store::crops_hash(l.boxes.data(), l.boxes.size());
  } else {
    l.crop_hash = label_crop_hash(m, image, l.height, l.width);
  }
  l.indices.resize(size_t(m.crops_per_image) * size_t(ni));
  l.values.resize(size_t(m.crops_per_image) * size_t(nv));
  Rng img(hash_keys({image, 11}));
  const uint64_t truth = img.below(uint64_t(C));
  std::vector<uint64_t> prior(static_cast<size_t>(C));
  for (auto& w : prior) w = 1 + img.below(50);
  std::vector<float> p(static_cast<size_t>(C));
  for (uint32_t c = 0; c < m.crops_per_image; ++c) {
    Rng cr(hash_keys({image, c, 13}));
    std::vector<uint64_t> w(static_cast<size_t>(C));
    for (int j = 0; j < C; ++j) w[size_t(j)] = prior[size_t(j)] * (1 + cr.below(4));
    w[truth] += 400 * (1 + cr.below(3));  // the true class dominates
    uint64_t sum = 0;
    for (uint64_t x : w) sum += x;
    for (int j = 0; j < C; ++j) p[size_t(j)] = float(w[size_t(j)]) / float(sum);
    quantize_crop(p.data(), C, m.label_type, m.k, l.indices.data() + size_t(c) * size_t(ni),
                  l.values.data() + size_t(c) * size_t(nv));
  }
  return l;
}

/// What a reader must return for `l`: the values rounded to the store's precision.
ImageLabels rounded(const Manifest& m, ImageLabels l) {
  for (float& v : l.values) v = round_to_precision(v, m.precision);
  return l;
}

void expect_same(const ImageLabels& a, const ImageLabels& b, const std::string& what) {
  EXPECT_EQ(a.height, b.height) << what;
  EXPECT_EQ(a.width, b.width) << what;
  EXPECT_EQ(a.crop_hash, b.crop_hash) << what;
  EXPECT_EQ(a.num_crops, b.num_crops) << what;
  EXPECT_EQ(a.indices, b.indices) << what;
  ASSERT_EQ(a.values.size(), b.values.size()) << what;
  // Bitwise: decoded values must be exactly the rounded ones.
  if (!a.values.empty()) {
    EXPECT_EQ(0, std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)))
        << what;
  }
}

using LabelFn = ImageLabels (*)(const Manifest&, uint64_t);

void write_shard(const std::string& dir, const Manifest& m, uint32_t shard,
                 LabelFn labels = make_labels) {
  ShardWriter w(dir, m, shard);
  for (uint64_t i = w.next_image(); i < shard_range(m.num_images, shard, m.num_shards).second; ++i)
    w.append(i, labels(m, i));
  w.finish();
}

void write_store(const std::string& dir, const Manifest& m, LabelFn labels = make_labels) {
  fs::create_directories(dir);
  write_manifest(dir, m);
  for (uint32_t s = 0; s < m.num_shards; ++s) write_shard(dir, m, s, labels);
}

std::string shard_path(const std::string& dir, uint32_t i, uint32_t n) {
  return dir + "/" + shard_file_name(i, n);
}

const LabelType kAllTypes[] = {LabelType::kHard, LabelType::kSmoothing,
                               LabelType::kMarginalSmoothing, LabelType::kMarginalRenorm,
                               LabelType::kFull};
const Precision kAllPrecisions[] = {Precision::kFp32, Precision::kFp16, Precision::kU8};

int k_for(LabelType t, int C) {
  return (t == LabelType::kMarginalSmoothing || t == LabelType::kMarginalRenorm) ? std::min(5, C)
                                                                                 : 1;
}

// --- names, rounding, quantization, recovery --------------------------------------------

TEST(StoreNames, RoundTripAndReject) {
  for (LabelType t : kAllTypes) EXPECT_EQ(parse_label_type(label_type_name(t)), t);
  for (Precision p : kAllPrecisions) EXPECT_EQ(parse_precision(precision_name(p)), p);
  EXPECT_THROW(parse_label_type("marginal"), ConfigError);
  EXPECT_THROW(parse_precision("bf16"), ConfigError);
  EXPECT_EQ(stored_indices(LabelType::kMarginalSmoothing, 5), 5);
  EXPECT_EQ(stored_values(LabelType::kFull, 1, 1000), 1000);
  EXPECT_EQ(stored_indices(LabelType::kFull, 1), 0);
  EXPECT_EQ(stored_values(LabelType::kHard, 1, 10), 0);
  EXPECT_EQ(shard_file_name(3, 8), "shard-00003-of-00008.fkdl");
}

uint32_t bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float from_bits(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

TEST(StoreHalf, HandValues) {
  using store::float_to_half;
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(0.1f), 0x2e66);  // 0.0999755859375
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(65519.99f), 0x7bff);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // tie rounds to even: infinity
  EXPECT_EQ(float_to_half(INFINITY), 0x7c00);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half(0x1p-24f), 0x0001);           // smallest subnormal
  EXPECT_EQ(float_to_half(0x1p-25f), 0x0000);           // tie to even: zero
  EXPECT_EQ(float_to_half(0x1.8p-25f), 0x0001);         // above the tie
  EXPECT_EQ(float_to_half(0x1.8p-24f), 0x0002);         // 1.5 ulp: tie to even 2
  EXPECT_EQ(float_to_half(0x1p-14f), 0x0400);           // smallest normal
  EXPECT_EQ(float_to_half(0x1.ff8p-15f), 0x03ff);       // largest subnormal
  EXPECT_EQ(float_to_half(0x1.ffbp-15f), 0x03ff);       // below the midpoint
  EXPECT_EQ(float_to_half(0x1.ffcp-15f), 0x0400);       // midpoint: even, the smallest normal
  EXPECT_EQ(float_to_half(1.0f + 0x1p-11f), 0x3c00);    // tie, even stays
  EXPECT_EQ(float_to_half(1.0f + 0x1.8p-10f), 0x3c02);  // tie, odd rounds up
  EXPECT_TRUE(std::isnan(store::half_to_float(float_to_half(NAN))));
  EXPECT_EQ(store::half_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(store::half_to_float(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(store::half_to_float(0xfc00)));
}

TEST(StoreHalf, EveryHalfRoundTripsAndMatchesCompiler) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = store::half_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(store::float_to_half(f), h) << std::hex << h;
#ifdef __FLT16_MAX__
    ASSERT_EQ(bits(f), bits(float(_Float16(f)))) << std::hex << h;
#endif
  }
#ifdef __FLT16_MAX__
  std::mt19937 gen(1);
  for (int i = 0; i < 300000; ++i) {
    const float f = from_bits(uint32_t(gen()));
    if (std::isnan(f)) continue;
    const _Float16 ref = _Float16(f);
    uint16_t rb;
    std::memcpy(&rb, &ref, 2);
    ASSERT_EQ(store::float_to_half(f), rb) << f;
  }
#endif
}

TEST(StoreRounding, U8AndFp32) {
  EXPECT_EQ(round_to_precision(0.0f, Precision::kU8), 0.0f);
  EXPECT_EQ(round_to_precision(1.0f, Precision::kU8), 1.0f);
  EXPECT_EQ(round_to_precision(0.2f, Precision::kU8), 51.0f / 255.0f);
  EXPECT_EQ(round_to_precision(0.998f, Precision::kU8), 254.0f / 255.0f);    // 254.49
  EXPECT_EQ(round_to_precision(2.5f / 255, Precision::kU8), 3.0f / 255.0f);  // half rounds up
  EXPECT_EQ(round_to_precision(1.0f / 510, Precision::kU8), 1.0f / 255.0f);  // 0.5 rounds up
  EXPECT_EQ(round_to_precision(0.1234567f, Precision::kFp32), 0.1234567f);
  EXPECT_EQ(round_to_precision(0.1f, Precision::kFp16), 0.0999755859375f);
}

TEST(StoreQuantize, EachTypeAndTies) {
  const float p[6] = {0.1f, 0.3f, 0.05f, 0.3f, 0.2f, 0.05f};
  int32_t idx[6];
  float val[6];
  quantize_crop(p, 6, LabelType::kHard, 1, idx, val);
  EXPECT_EQ(idx[0], 1);  // tie 1 vs 3: lower id
  quantize_crop(p, 6, LabelType::kSmoothing, 1, idx, val);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(val[0], 0.3f);
  quantize_crop(p, 6, LabelType::kMarginalSmoothing, 5, idx, val);
  EXPECT_EQ(std::vector<int32_t>(idx, idx + 5), (std::vector<int32_t>{1, 3, 4, 0, 2}));
  EXPECT_EQ(std::vector<float>(val, val + 5), (std::vector<float>{0.3f, 0.3f, 0.2f, 0.1f, 0.05f}));
  // marginal_renorm stores the raw top-k: recover_dense renormalizes.
  quantize_crop(p, 6, LabelType::kMarginalRenorm, 2, idx, val);
  EXPECT_EQ(std::vector<int32_t>(idx, idx + 2), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(std::vector<float>(val, val + 2), (std::vector<float>{0.3f, 0.3f}));
  quantize_crop(p, 6, LabelType::kFull, 1, idx, val);
  EXPECT_EQ(std::vector<float>(val, val + 6), std::vector<float>(p, p + 6));
  // Wide k takes the partial_sort path and must agree with the short-list path.
  std::vector<float> q(100);
  for (int c = 0; c < 100; ++c) q[size_t(c)] = float((c * 37) % 11) / 100.0f;
  std::vector<int32_t> a(40), b(10);
  std::vector<float> av(40), bv(10);
  quantize_crop(q.data(), 100, LabelType::kMarginalSmoothing, 40, a.data(), av.data());
  quantize_crop(q.data(), 100, LabelType::kMarginalSmoothing, 10, b.data(), bv.data());
  EXPECT_EQ(std::vector<int32_t>(a.begin(), a.begin() + 10), b);
  for (int i = 1; i < 40; ++i) {
    EXPECT_TRUE(av[size_t(i - 1)] > av[size_t(i)] ||
                (av[size_t(i - 1)] == av[size_t(i)] && a[size_t(i - 1)] < a[size_t(i)]));
  }
  EXPECT_THROW(quantize_crop(p, 6, LabelType::kMarginalSmoothing, 7, idx, val), ConfigError);
}

TEST(StoreRecover, HandComputedVectors) {
  std::vector<float> out(5);
  const int32_t i2[1] = {2};
  recover_dense(LabelType::kHard, 1, 5, i2, nullptr, out.data());
  EXPECT_EQ(out, (std::vector<float>{0, 0, 1, 0, 0}));

  const float p7[1] = {0.6f};
  recover_dense(LabelType::kSmoothing, 1, 5, i2, p7, out.data());
  const float r = (1.0f - 0.6f) / 4.0f;
  EXPECT_EQ(out, (std::vector<float>{r, r, 0.6f, r, r}));

  const int32_t i13[2] = {3, 1};
  const float v13[2] = {0.5f, 0.25f};
  recover_dense(LabelType::kMarginalSmoothing, 2, 5, i13, v13, out.data());
  const float m = (1.0f - 0.75f) / 3.0f;
  EXPECT_EQ(out, (std::vector<float>{m, 0.25f, m, 0.5f, m}));

  recover_dense(LabelType::kMarginalRenorm, 2, 5, i13, v13, out.data());
  EXPECT_EQ(out, (std::vector<float>{0, 0.25f / 0.75f, 0, 0.5f / 0.75f, 0}));

  const float zero[2] = {0, 0};  // u8 may round both to zero: uniform over the top-k
  recover_dense(LabelType::kMarginalRenorm, 2, 5, i13, zero, out.data());
  EXPECT_EQ(out, (std::vector<float>{0, 0.5f, 0, 0.5f, 0}));

  const float over[2] = {0.75f, 0.5f};  // rounding can push the sum past 1: rest clamps to 0
  recover_dense(LabelType::kMarginalSmoothing, 2, 5, i13, over, out.data());
  EXPECT_EQ(out, (std::vector<float>{0, 0.5f, 0, 0.75f, 0}));

  const float full[5] = {0.1f, 0.2f, 0.3f, 0.15f, 0.25f};
  recover_dense(LabelType::kFull, 1, 5, nullptr, full, out.data());
  EXPECT_EQ(out, std::vector<float>(full, full + 5));

  const int32_t bad[1] = {5};
  EXPECT_THROW(recover_dense(LabelType::kHard, 1, 5, bad, nullptr, out.data()), DataError);
}

TEST(StoreRecover, SumsToOneWhereTheTypeImpliesIt) {
  const int C = 50;
  for (LabelType t : kAllTypes) {
    for (Precision p : kAllPrecisions) {
      const Manifest m = make_manifest(t, k_for(t, C), p, C, 8, 4);
      // Rounded values carry the precision's error; where the type fills the rest from
      // 1 - sum (smoothing types), only the clamp at 0 can leave the sum above 1.
      double tol = 1e-5;
      if (p != Precision::kFp32 && t != LabelType::kHard && t != LabelType::kMarginalRenorm) {
        const double step = p == Precision::kFp16 ? 0x1p-11 : 0.5 / 255;
        tol = (t == LabelType::kFull ? C : m.k) * step + 1e-5;
      }
      const int ni = stored_indices(t, m.k), nv = stored_values(t, m.k, C);
      std::vector<float> dense(static_cast<size_t>(C));
      for (uint64_t i = 0; i < 4; ++i) {
        const ImageLabels l = rounded(m, make_labels(m, i));
        for (uint32_t c = 0; c < m.crops_per_image; ++c) {
          recover_dense(t, m.k, C, l.indices.data() + c * size_t(ni),
                        l.values.data() + c * size_t(nv), dense.data());
          double sum = 0;
          for (float v : dense) sum += v;
          EXPECT_NEAR(sum, 1.0, tol) << label_type_name(t) << " " << precision_name(p);
          if (t == LabelType::kHard) EXPECT_EQ(sum, 1.0);
        }
      }
    }
  }
}

// --- round trips --------------------------------------------------------------------------

TEST(StoreRoundTrip, EveryLabelTypeAndPrecision) {
  const int C = 37;
  for (int version : {1, 2}) {
    for (LabelType t : kAllTypes) {
      for (Precision p : kAllPrecisions) {
        TempDir dir;
        Manifest m = make_manifest(t, k_for(t, C), p, C, 12, 5, 2);
        m.version = version;
        write_store(dir.path(), m);
        StoreReader r(dir.path());
        ASSERT_EQ(r.num_images(), 5u);
        EXPECT_TRUE(manifest_differences(r.manifest(), m).empty());
        ImageLabels got;
        std::vector<float> a(static_cast<size_t>(C)), b(static_cast<size_t>(C));
        const int ni = stored_indices(t, m.k), nv = stored_values(t, m.k, C);
        for (uint64_t i = 0; i < 5; ++i) {
          const ImageLabels want = rounded(m, make_labels(m, i));
          r.read(i, got);
          const std::string what =
              fmt::format("v{} {} {} image {}", version, label_type_name(t), precision_name(p), i);
          expect_same(got, want, what);
          for (uint32_t c = 0; c < m.crops_per_image; ++c) {
            recover_dense(t, m.k, C, got.indices.data() + c * size_t(ni),
                          got.values.data() + c * size_t(nv), a.data());
            recover_dense(t, m.k, C, want.indices.data() + c * size_t(ni),
                          want.values.data() + c * size_t(nv), b.data());
            ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << what;
          }
          if (t == LabelType::kFull && p == Precision::kFp32) {
            for (uint32_t c = 0; c < m.crops_per_image; ++c) {
              const auto probs = crop_probs(i, c, C);
              ASSERT_EQ(
                  0, std::memcmp(probs.data(), got.values.data() + c * size_t(C), size_t(C) * 4));
            }
          }
        }
      }
    }
  }
}

/// Round trip of one record through both codecs, without files: encode -> compress ->
/// decode, and, where the record's values descend in every crop (and the type is not
/// `full`), pack -> decode; a record that does not descend must refuse to pack.
void codec_round_trip(const store::RecordFormat& f, const ImageLabels& l) {
  store::check_labels(f, l, "test");
  std::vector<uint8_t> raw, payload;
  std::vector<size_t> sections;
  store::encode_record(f, l, raw, sections);
  store::compress_record(raw, sections, payload);
  ImageLabels got;
  const std::string name = "memory";
  store::decode_record(f, payload.data(), payload.size(), uint32_t(raw.size()), got,
                       store::Where{name, 0, 0});
  EXPECT_EQ(got.indices, l.indices);
  EXPECT_EQ(got.values, l.values);
  const size_t nv = size_t(f.n_val());
  bool descending = store::packable(f);
  for (size_t i = 0; descending && nv > 0 && i < l.values.size(); ++i) {
    descending = i % nv == 0 || store::value_code(l.values[i], f.precision) <=
                                    store::value_code(l.values[i - 1], f.precision);
  }
  std::vector<uint8_t> packed;
  ASSERT_EQ(store::encode_packed_record(f, l, packed), descending);
  if (!descending) return;
  ImageLabels unpacked;
  store::decode_packed_record(f, packed.data(), packed.size(), unpacked, store::Where{name, 0, 0});
  EXPECT_EQ(unpacked.height, l.height);
  EXPECT_EQ(unpacked.crop_hash, l.crop_hash);
  EXPECT_EQ(unpacked.indices, l.indices);
  EXPECT_EQ(unpacked.values, l.values);
}

/// An empty record of `f`'s crops for a side x side image, to fill.
ImageLabels blank_labels(const store::RecordFormat& f, uint32_t side) {
  ImageLabels l;
  l.height = l.width = side;
  l.num_crops = f.crops_per_image;
  return l;
}

TEST(StoreRoundTrip, DictionaryWidthsOneTwoFourBytes) {
  // D <= 256, D <= 65536 and D > 65536 distinct classes in one record.
  for (int D : {200, 3000, 70000}) {
    const store::RecordFormat f{LabelType::kMarginalSmoothing, 5, 70000, Precision::kFp16,
                                uint32_t((D + 4) / 5) + 1};
    ImageLabels l = blank_labels(f, 10);
    for (uint32_t c = 0; c < f.crops_per_image; ++c) {
      for (int r = 0; r < 5; ++r) {
        l.indices.push_back(int32_t((69999 - (c * 5 + uint32_t(r)) % uint32_t(D) * 1) % 70000));
        l.values.push_back(round_to_precision(0.5f / float(1 + r + int(c % 7)), f.precision));
      }
    }
    codec_round_trip(f, l);
  }
}

TEST(StoreRoundTrip, ExtremeValuesEveryPrecision) {
  // Exact zeros, one, fp16 subnormals (below 2^-14) and values that round to zero in u8,
  // through every value path of the decoder (1, 2, 4-byte codes; delta and not).
  const float extreme[7] = {1.0f, 0.5f, 1e-3f, 6.0e-5f, 1e-6f, 6e-8f, 0.0f};
  for (Precision p : kAllPrecisions) {
    for (LabelType t : {LabelType::kMarginalSmoothing, LabelType::kSmoothing, LabelType::kFull}) {
      const store::RecordFormat f{t, t == LabelType::kMarginalSmoothing ? 7 : 1, 7, p, 9};
      ImageLabels l = blank_labels(f, 3);
      for (uint32_t c = 0; c < f.crops_per_image; ++c) {
        for (int r = 0; r < f.n_idx(); ++r) l.indices.push_back((int32_t(c) + r) % 7);
        for (int r = 0; r < f.n_val(); ++r) {
          // full: class order, so not descending; the others descend
          const int at = t == LabelType::kFull ? (int(c) + 3 * r) % 7 : (r + int(c % 2)) % 7;
          l.values.push_back(round_to_precision(extreme[at], p));
        }
      }
      SCOPED_TRACE(std::string(label_type_name(t)) + " " + precision_name(p));
      codec_round_trip(f, l);
    }
  }
  EXPECT_EQ(round_to_precision(6e-8f, Precision::kFp16), 0x1p-24f);  // a subnormal half
}

TEST(StoreRoundTrip, EveryValueCodeThroughVectorAndTailCrops) {
  // Every valid code of each precision, in value counts per crop that fill whole groups of
  // 4 ranks, leave ranks over, or are below 4, and crop counts that are and are not
  // multiples of 8 (the decoder's vector blocks; the crops after them take the rank-plane
  // loops). Values in any order: the delta of the marginal types is modulo.
  for (Precision p : kAllPrecisions) {
    for (LabelType t : {LabelType::kMarginalSmoothing, LabelType::kFull, LabelType::kSmoothing}) {
      for (int nv : {1, 2, 3, 4, 5, 8, 9}) {
        if ((t == LabelType::kSmoothing) != (nv == 1)) continue;
        const uint32_t codes = p == Precision::kU8 ? 256 : p == Precision::kFp16 ? 0x3c01 : 4096;
        for (uint32_t extra : {0u, 3u, 7u}) {
          const uint32_t blocks = ((codes + uint32_t(nv) - 1) / uint32_t(nv) + 7) / 8;
          const store::RecordFormat f{t, t == LabelType::kMarginalSmoothing ? nv : 1,
                                      t == LabelType::kFull ? nv : 20, p, blocks * 8 + extra};
          ImageLabels l = blank_labels(f, 5);
          for (uint32_t c = 0; c < f.crops_per_image; ++c) {
            for (int r = 0; r < f.n_idx(); ++r) l.indices.push_back((int32_t(c) + r) % 20);
            for (int r = 0; r < f.n_val(); ++r) {
              const uint32_t i = (c * uint32_t(nv) + uint32_t(r)) % codes;
              // fp32: codes spread over [0, 1], both ends included
              l.values.push_back(p == Precision::kU8     ? float(i) / 255.0f
                                 : p == Precision::kFp16 ? store::half_to_float(uint16_t(i))
                                 : i == codes - 1        ? 1.0f
                                                         : from_bits(i * (0x3f800000u / codes)));
            }
          }
          SCOPED_TRACE(fmt::format("{} {} nv {} crops {}", label_type_name(t), precision_name(p),
                                   nv, f.crops_per_image));
          codec_round_trip(f, l);
        }
      }
    }
  }
}

TEST(StoreCorrupt, ValueCodeOutOfRangeIsNamedWhereverItIs) {
  // A code just above 1, or far above, in the first crop (vector block) or the last (after
  // the vector blocks), direct or reached through the rank delta: the error names the
  // largest code.
  for (Precision p : {Precision::kFp16, Precision::kFp32}) {
    const uint32_t one = p == Precision::kFp16 ? 0x3c00u : 0x3f800000u;
    for (uint32_t bad : {one + 1, p == Precision::kFp16 ? 0x7c00u : 0x7f800000u}) {
      for (LabelType t : {LabelType::kFull, LabelType::kMarginalSmoothing}) {
        for (uint32_t crop : {0u, 10u}) {
          const store::RecordFormat f{t, t == LabelType::kFull ? 1 : 5, 6, p, 11};
          ImageLabels l = blank_labels(f, 5);
          for (uint32_t c = 0; c < f.crops_per_image; ++c) {
            for (int r = 0; r < f.n_idx(); ++r) l.indices.push_back(r);
            for (int r = 0; r < f.n_val(); ++r)
              l.values.push_back(round_to_precision(0.5f / float(1 + r), p));
          }
          std::vector<uint8_t> raw;
          std::vector<size_t> sections;
          store::encode_record(f, l, raw, sections);
          // Rank 0 of `crop` in each byte plane (the value planes end the record). Rank 0 is
          // stored as is; the ranks below it (delta) decode to smaller codes.
          const size_t S = size_t(f.value_bytes()),
                       count = size_t(f.crops_per_image) * size_t(f.n_val());
          for (size_t b = 0; b < S; ++b)
            raw[raw.size() - (S - b) * count + crop] = uint8_t(bad >> (8 * b));
          ImageLabels got;
          const std::string name = "memory";
          std::string msg;
          try {
            store::decode_raw_record(f, raw.data(), raw.size(), got, store::Where{name, 0, 0});
          } catch (const FormatError& e) {
            msg = e.what();
          }
          SCOPED_TRACE(fmt::format("{} {} crop {}", label_type_name(t), precision_name(p), crop));
          EXPECT_NE(msg.find(fmt::format("value code 0x{:x} is not a probability", bad)),
                    std::string::npos)
              << msg;
        }
      }
    }
  }
}

TEST(StoreRoundTrip, SeventyThousandClasses) {
  const int C = 70000;
  TempDir dir;
  Manifest m = make_manifest(LabelType::kMarginalSmoothing, 5, Precision::kFp16, C, 6, 3);
  fs::create_directories(dir.path());
  write_manifest(dir.path(), m);
  std::vector<ImageLabels> want;
  {
    ShardWriter w(dir.path(), m, 0);
    for (uint64_t i = 0; i < 3; ++i) {
      ImageLabels l;
      l.height = 64;
      l.width = 48;
      l.num_crops = 6;
      l.crop_hash = label_crop_hash(m, i, 64, 48);
      for (uint32_t c = 0; c < 6; ++c) {
        for (int r = 0; r < 5; ++r) {
          l.indices.push_back(int32_t(C - 1 - int(i) - int((c * 3 + uint32_t(r) * 11) % 40)));
          l.values.push_back(0.4f / float(r + 1) + 0.001f * float(c));
        }
        // distinct within the crop by construction? make sure:
        std::vector<int32_t> s(l.indices.end() - 5, l.indices.end());
        std::sort(s.begin(), s.end());
        ASSERT_EQ(std::adjacent_find(s.begin(), s.end()), s.end());
      }
      w.append(i, l);
      want.push_back(rounded(m, l));
    }
    w.finish();
  }
  StoreReader r(dir.path());
  ImageLabels got;
  for (uint64_t i = 0; i < 3; ++i) {
    r.read(i, got);
    expect_same(got, want[i], "image " + std::to_string(i));
    EXPECT_GE(*std::min_element(got.indices.begin(), got.indices.end()), C - 50);
  }
}

// --- manifest ---------------------------------------------------------------------------

TEST(StoreManifest, WriteReadCompare) {
  TempDir dir;
  Manifest m = make_manifest(LabelType::kMarginalRenorm, 3, Precision::kU8, 10, 7, 100, 4);
  m.temperature = 2.5f;
  m.seed = 0xfedcba9876543210ULL;  // needs all 64 bits
  m.crop.scale[0] = 0.08f;
  m.crop.ratio[1] = 4.f / 3.f;
  write_manifest(dir.path(), m);
  EXPECT_FALSE(fs::exists(dir.file("manifest.json.tmp")));
  const std::string text = read_file(dir.file("manifest.json"));
  EXPECT_NE(text.find("\"label_type\": \"marginal_renorm\""), std::string::npos);
  EXPECT_NE(text.find("0.08"), std::string::npos);  // shortest float text
  const Manifest back = read_manifest(dir.path());
  EXPECT_TRUE(manifest_differences(m, back).empty());
  EXPECT_EQ(back.num_shards, 4u);
  EXPECT_EQ(back.teacher, "teacher.pt");
  EXPECT_EQ(back.seed, m.seed);
  EXPECT_EQ(back.crop.ratio[1], 4.f / 3.f);

  Manifest o = m;
  o.temperature = 1;
  o.k = 5;
  o.classes[3] = "dog";
  o.num_shards = 1;        // not a difference
  o.teacher = "other.pt";  // not a difference
  const auto d = manifest_differences(m, o);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0], "classes[3] ('class3' vs 'dog')");
  EXPECT_EQ(d[1], "temperature (2.5 vs 1)");
  EXPECT_EQ(d[2], "k (3 vs 5)");
  o = m;
  o.mean = {1.f};
  EXPECT_EQ(manifest_differences(m, o),
            std::vector<std::string>{"mean ([0.5, 0.25, 0.125] vs [1])"});

  Manifest bad = m;
  bad.k = 11;
  EXPECT_THROW(write_manifest(dir.path(), bad), ConfigError);
  bad = m;
  bad.crop.flip = 2;
  EXPECT_THROW(write_manifest(dir.path(), bad), ConfigError);
}

template <typename F>
std::string io_error_of(F&& f) {
  return test::error_message<IoError>(std::forward<F>(f));
}

TEST(StoreManifest, FullDiskKeepsThePreviousManifest) {
  TempDir dir;
  const Manifest m = make_manifest(LabelType::kMarginalRenorm, 3, Precision::kU8, 10, 7, 100, 4);
  write_manifest(dir.path(), m);
  const std::string before = read_file(dir.file("manifest.json"));
  Manifest bigger = m;
  for (int c = 0; c < 200; ++c) bigger.classes.push_back("another class " + std::to_string(c));
  std::string msg;
  {
    test::FileSizeLimit limit(before.size());
    msg = io_error_of([&] { write_manifest(dir.path(), bigger); });
  }
  // One line naming manifest.json itself, the old manifest intact, nothing left behind.
  EXPECT_EQ(msg, dir.file("manifest.json") + ": cannot write: File too large");
  EXPECT_EQ(read_file(dir.file("manifest.json")), before);
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"manifest.json"});
}

TEST(StoreManifest, ConcurrentWritersNeverTearIt) {
  // Shards labeled by several processes at once each write the same manifest.
  TempDir dir;
  const Manifest m = make_manifest(LabelType::kMarginalRenorm, 3, Precision::kU8, 300, 7, 100, 4);
  write_manifest(dir.path(), m);
  std::atomic<int> errors{0};
  auto writer = [&] {
    for (int i = 0; i < 100; ++i) {
      try {
        write_manifest(dir.path(), m);
        read_manifest(dir.path());
      } catch (const Error&) {
        ++errors;
      }
    }
  };
  std::thread a(writer), b(writer);
  a.join();
  b.join();
  EXPECT_EQ(errors, 0);
  EXPECT_TRUE(manifest_differences(read_manifest(dir.path()), m).empty());
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"manifest.json"});
}

TEST(StoreManifest, RandomCropSampler) {
  TempDir dir;
  Manifest rrc = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 7, 20);
  write_manifest(dir.path(), rrc);
  // The original sampler writes no sampler keys (manifests of stores made before stay
  // byte-identical), and a manifest without them reads as random_resized_crop.
  std::string text = read_file(dir.file("manifest.json"));
  EXPECT_EQ(text.find("crop_sampler"), std::string::npos);
  EXPECT_EQ(read_manifest(dir.path()).crop.kind, CropKind::kRandomResized);

  Manifest rc = rrc;
  rc.crop.kind = CropKind::kPadded;
  rc.crop.padding = 4;
  write_manifest(dir.path(), rc);
  text = read_file(dir.file("manifest.json"));
  EXPECT_NE(text.find("\"crop_sampler\": \"random_crop\""), std::string::npos);
  const Manifest back = read_manifest(dir.path());
  EXPECT_EQ(back.crop.kind, CropKind::kPadded);
  EXPECT_EQ(back.crop.padding, 4);
  EXPECT_TRUE(manifest_differences(rc, back).empty());
  EXPECT_EQ(manifest_differences(rrc, rc),
            (std::vector<std::string>{"crop sampler (rrc vs crop)"}));
  // Between two RandomCrop stores the padding and the box size tell their crops apart.
  Manifest rc3 = rc;
  rc3.crop.padding = 2;
  rc3.crop.size = 28;
  EXPECT_EQ(manifest_differences(rc, rc3),
            (std::vector<std::string>{"input size (32 vs 28)", "padding (4 vs 2)"}));
  // The store key tells the samplers (and paddings) apart, so shards never mix.
  EXPECT_NE(store::store_key(rrc), store::store_key(rc));
  Manifest rc2 = rc;
  rc2.crop.padding = 2;
  EXPECT_NE(store::store_key(rc), store::store_key(rc2));

  Manifest bad = rc;
  bad.crop.kind = CropKind::kNone;  // no sampler a store can hold
  EXPECT_THROW(write_manifest(dir.path(), bad), ConfigError);
  bad = rc;
  bad.crop.size = 0;
  EXPECT_THROW(write_manifest(dir.path(), bad), ConfigError);
  write_file(dir.file("manifest.json"),
             std::regex_replace(text, std::regex("\"random_crop\""), "\"zoom\""));
  EXPECT_THROW(read_manifest(dir.path()), FormatError);
}

TEST(StoreCrops, RandomCropSamplerIsTorchvisionRandomCrop) {
  Manifest m = make_manifest(LabelType::kHard, 1, Precision::kFp16, 10, 500, 4);
  m.crop.kind = CropKind::kPadded;
  m.crop.padding = 4;
  m.crop.size = 28;
  const int H = 28, W = 28;
  std::set<int> tops, lefts;
  int flips = 0;
  for (uint32_t c = 0; c < 500; ++c) {
    const CropPlan p = derive_label_crop(m.crop, m.seed, 7, c, H, W);
    EXPECT_EQ(p.id, c);
    EXPECT_EQ(p.box.width, 28);
    EXPECT_EQ(p.box.height, 28);
    EXPECT_GE(p.box.top, -4);
    EXPECT_LE(p.box.top, H + 4 - 28);
    EXPECT_GE(p.box.left, -4);
    EXPECT_LE(p.box.left, W + 4 - 28);
    tops.insert(p.box.top);
    lefts.insert(p.box.left);
    flips += p.flip;
    // Pure: the same arguments give the same crop.
    const CropPlan q = derive_label_crop(m.crop, m.seed, 7, c, H, W);
    EXPECT_EQ(q.box.top, p.box.top);
    EXPECT_EQ(q.box.left, p.box.left);
    EXPECT_EQ(q.flip, p.flip);
  }
  EXPECT_EQ(tops.size(), 9u);  // every offset in [-4, 4] occurs in 500 draws
  EXPECT_EQ(lefts.size(), 9u);
  EXPECT_NEAR(flips / 500.0, 0.5, 0.08);
  // The draw follows the spec: top = below(H + 2P - S + 1) - P, then left, then the flip,
  // from Rng(seed, kLabelCrops, {image, crop}).
  Rng rng(m.seed, RngStream::kLabelCrops, {7, 3});
  const int top = int(rng.below(9)) - 4, left = int(rng.below(9)) - 4;
  const bool flip = rng.uniform() < m.crop.flip;
  const CropPlan p3 = derive_label_crop(m.crop, m.seed, 7, 3, H, W);
  EXPECT_EQ(p3.box.top, top);
  EXPECT_EQ(p3.box.left, left);
  EXPECT_EQ(p3.flip, flip);
  // The record's crop hash covers the sampler: another padding gives other crops.
  Manifest m2 = m;
  m2.crop.padding = 2;
  EXPECT_NE(label_crop_hash(m, 7, H, W), label_crop_hash(m2, 7, H, W));
  // The random_resized_crop sampler draws the RandomResizedCrop box, then the flip.
  const Manifest r = make_manifest(LabelType::kHard, 1, Precision::kFp16, 10, 5, 4);
  const CropPlan a = derive_label_crop(r.crop, r.seed, 2, 1, 41, 77);
  Rng rr(r.seed, RngStream::kLabelCrops, {2, 1});
  const PixelBox b =
      sample_random_resized_crop(rr, 41, 77, r.crop.scale.data(), r.crop.ratio.data());
  EXPECT_EQ(a.box.left, b.left);
  EXPECT_EQ(a.box.top, b.top);
  EXPECT_EQ(a.box.width, b.width);
  EXPECT_EQ(a.box.height, b.height);
  EXPECT_EQ(a.flip, rr.uniform() < r.crop.flip);
}

TEST(StoreShardRange, TilesForAwkwardCounts) {
  for (uint64_t n : {0ull, 1ull, 2ull, 3ull, 7ull, 10ull, 1000003ull, (1ull << 62) + 5}) {
    for (uint32_t count : {1u, 2u, 3u, 5u, 7u, 8u, 64u, 99999u}) {
      uint64_t next = 0, lo = UINT64_MAX, hi = 0;
      for (uint32_t i = 0; i < count; ++i) {
        const auto [b, e] = shard_range(n, i, count);
        ASSERT_EQ(b, next) << n << " " << count << " " << i;
        ASSERT_LE(b, e);
        lo = std::min(lo, e - b);
        hi = std::max(hi, e - b);
        next = e;
      }
      EXPECT_EQ(next, n);
      EXPECT_LE(hi - lo, 1u);  // balanced
    }
  }
  EXPECT_THROW(shard_range(10, 3, 3), ConfigError);
}

// --- crop hash ---------------------------------------------------------------------------

TEST(StoreCropHash, MatchesDerivedCropsAndIsChecked) {
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 6, 4);
  // The hash is XXH32 of the derived crops as little-endian int32s.
  std::vector<int32_t> v;
  for (uint32_t c = 0; c < 6; ++c) {
    const CropPlan p = derive_label_crop(m.crop, m.seed, 2, c, 41, 77);
    v.insert(v.end(), {p.box.left, p.box.top, p.box.width, p.box.height, p.flip ? 1 : 0});
  }
  const uint32_t h = label_crop_hash(m, 2, 41, 77);
  std::vector<uint8_t> le;
  for (int32_t x : v) {
    for (int b = 0; b < 4; ++b) le.push_back(uint8_t(uint32_t(x) >> (8 * b)));
  }
  EXPECT_EQ(h, XXH32(le.data(), le.size(), 0));
  EXPECT_NE(h, label_crop_hash(m, 3, 41, 77));
  EXPECT_NE(h, label_crop_hash(m, 2, 41, 78));
  Manifest other = m;
  other.seed = 43;
  EXPECT_NE(h, label_crop_hash(other, 2, 41, 77));

  TempDir dir;
  write_manifest(dir.path(), m);
  {
    ShardWriter w(dir.path(), m, 0);
    for (uint64_t i = 0; i < 4; ++i) {
      ImageLabels l = make_labels(m, i);
      if (i == 2) l.crop_hash ^= 1;  // labeled on other crops
      w.append(i, l);
    }
    w.finish();
  }
  StoreReader r(dir.path());
  EXPECT_TRUE(r.verify_crops(0));
  EXPECT_TRUE(r.verify_crops(3));
  EXPECT_FALSE(r.verify_crops(2));
  ImageLabels l;
  r.read(2, l);  // not checked by default
  StoreReader checked(dir.path(), /*check_crops=*/true);
  checked.read(1, l);
  try {
    checked.read(2, l);
    FAIL() << "crop hash mismatch not detected";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("crop hash"), std::string::npos) << e.what();
  }
}

// --- corrupt stores ------------------------------------------------------------------------

void reseal_header(std::string& b) {
  store::store_u64(reinterpret_cast<uint8_t*>(&b[120]),
                   store::checksum64(reinterpret_cast<const uint8_t*>(b.data()), 120));
}
uint64_t footer_u64(const std::string& b, size_t field) {
  return store::load_u64(reinterpret_cast<const uint8_t*>(b.data()) + b.size() - 32 + field);
}
void reseal_index(std::string& b) {
  const uint64_t off = footer_u64(b, 0), n = footer_u64(b, 8);
  store::store_u64(reinterpret_cast<uint8_t*>(&b[b.size() - 16]),
                   store::checksum64(reinterpret_cast<const uint8_t*>(b.data()) + off, n * 24));
}
/// Recomputes the checksum of the block of index entry `i` (and the index's copy).
void reseal_block(std::string& b, uint64_t i) {
  auto* d = reinterpret_cast<uint8_t*>(b.data());
  const uint64_t entry = footer_u64(b, 0) + i * 24, off = store::load_u64(d + entry);
  const uint64_t sum = store::block_checksum(d + off, store::load_u32(d + off + 4));
  store::store_u64(d + off + 8, sum);
  store::store_u64(d + entry + 16, sum);
  reseal_index(b);
}

struct Corruption {
  const char* name;
  std::function<void(const std::string& dir)> apply;
  std::vector<std::string> expect;  ///< substrings of the error
  int read_image = -1;              ///< >= 0: the store opens; reading this image fails
};

void edit_file(const std::string& path, const std::function<void(std::string&)>& f) {
  std::string b = read_file(path);
  f(b);
  write_file(path, b);
}

void edit_manifest(const std::string& dir, const std::function<void(nlohmann::json&)>& f) {
  auto j = nlohmann::json::parse(read_file(dir + "/manifest.json"));
  f(j);
  write_file(dir + "/manifest.json", j.dump(2));
}

TEST(StoreCorrupt, TableOfHandcraftedStores) {
  TempDir base;
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 5, 2);
  write_store(base.path(), m);
  const std::string s0 = shard_file_name(0, 2), s1 = shard_file_name(1, 2);
  auto shard = [&](const std::string& dir, const std::string& s) { return dir + "/" + s; };

  const std::vector<Corruption> table = {
      {"bad magic",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) { b.replace(0, 8, "NOTLABEL"); });
       },
       {s0, "offset 0", "expected magic 'FKDLABEL', found 'NOTLABEL'"}},
      {"future version",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) {
           b[8] = 4;
           reseal_header(b);
         });
       },
       {s0, "format version 4 is newer than this fkd supports (3)"}},
      {"version zero",
       [&](const std::string& d) { edit_file(shard(d, s0), [](std::string& b) { b[8] = 0; }); },
       {s0, "format version 0: no fkd version wrote it (versions are 1 to 3)"}},
      {"header checksum",
       [&](const std::string& d) { edit_file(shard(d, s1), [](std::string& b) { b[30] ^= 1; }); },
       {s1, "offset 120", "header checksum mismatch"}},
      {"unknown label type byte",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) {
           b[56] = 9;
           reseal_header(b);
         });
       },
       {s0, "offset 56", "unknown label type 9"}},
      {"unknown precision byte",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) {
           b[57] = 3;
           reseal_header(b);
         });
       },
       {s0, "offset 57", "unknown precision 3"}},
      {"empty shard file",
       [&](const std::string& d) { write_file(shard(d, s1), ""); },
       {s1, "found a 0-byte file"}},
      {"truncated block",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) { b.resize(b.size() / 2); });
       },
       {s0, "footer missing"}},
      {"footer missing",
       [&](const std::string& d) {
         edit_file(shard(d, s1), [](std::string& b) { b.resize(b.size() - 32); });
       },
       {s1, "footer missing", "'FKDL_END'"}},
      {"count larger than file",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) {
           store::store_u64(reinterpret_cast<uint8_t*>(&b[b.size() - 24]), 1ull << 40);
         });
       },
       {s0, "index of 1099511627776 entries", "does not fit"}},
      {"count disagrees with header",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) {
           store::store_u64(reinterpret_cast<uint8_t*>(&b[b.size() - 24]), 1);
         });
       },
       {s0, "expected 2 index entries", "found 1"}},
      {"index checksum",
       [&](const std::string& d) {
         edit_file(shard(d, s1), [](std::string& b) { b[footer_u64(b, 0) + 9] ^= 4; });
       },
       {s1, "index checksum mismatch"}},
      {"index pointing past the end",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) {
           store::store_u64(reinterpret_cast<uint8_t*>(&b[footer_u64(b, 0)]), 1ull << 40);
           reseal_index(b);
         });
       },
       {s0, "expected block offset 128, found 1099511627776"}},
      {"block size past the index",
       [&](const std::string& d) {
         edit_file(shard(d, s0), [](std::string& b) {
           const uint64_t last = footer_u64(b, 0) + 24;  // image 1's entry
           store::store_u32(reinterpret_cast<uint8_t*>(&b[last + 8]), 100000);
           reseal_index(b);
         });
       },
       {s0, "index entry of image 1", "payload"}},
      {"flipped checksum byte in a record",
       [&](const std::string& d) {
         edit_file(shard(d, s1), [](std::string& b) {
           const uint64_t off =
               store::load_u64(reinterpret_cast<const uint8_t*>(b.data()) + footer_u64(b, 0) + 24);
           b[off + 40] ^= 0x10;
         });
       },
       {s1, "block of image 3", "checksum mismatch", "the record is corrupt"},
       3},
      {"block header disagrees with index",
       [&](const std::string& d) {
         edit_file(shard(d, s1), [](std::string& b) { b[128 + 16] = 7; });
       },
       {s1, "offset 128", "expected image 2", "found image 7"},
       2},
      {"resealed garbage payload",
       [&](const std::string& d) {
         edit_file(shard(d, s1), [](std::string& b) {
           for (size_t i = 128 + 32; i < 128 + 40; ++i) b[i] = char(0xff);
           reseal_block(b, 0);
         });
       },
       {s1, "image 2 (block at offset 128)", "image size 4294967295x4294967295 is not positive"},
       2},
      {"packed record marked as zstd",
       [&](const std::string& d) {
         edit_file(shard(d, s1), [](std::string& b) {
           b[128 + 28] = 0;
           reseal_block(b, 0);
         });
       },
       {s1, "image 2 (block at offset 128)", "zstd"},
       2},
      {"unknown codec",
       [&](const std::string& d) {
         edit_file(shard(d, s1), [](std::string& b) {
           b[128 + 28] = 7;
           reseal_block(b, 0);
         });
       },
       {s1, "offset 156", "block of image 2", "unknown codec 7"},
       2},
      {"manifest k differs",
       [&](const std::string& d) { edit_manifest(d, [](nlohmann::json& j) { j["k"] = 2; }); },
       {s0, "header says k = 3, manifest.json says 2"}},
      {"manifest crops_per_image differs",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) { j["crops_per_image"] = 5; });
       },
       {s0, "crops_per_image = 4, manifest.json says 5"}},
      {"manifest teacher differs",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) { j["teacher_hash"] = "ff"; });
       },
       {s0, "store key"}},
      {"manifest teacher_amp edited",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) { j["teacher_amp"] = "bf16"; });
       },
       {s0, "store key"}},
      {"manifest num_shards differs",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) { j["num_shards"] = 3; });
       },
       {shard_file_name(0, 3), "missing shard 0 of 3"}},
      {"missing shard",
       [&](const std::string& d) { fs::remove(shard(d, s1)); },
       {s1, "missing shard 1 of 2"}},
      {".partial only",
       [&](const std::string& d) { fs::rename(shard(d, s1), shard(d, s1) + ".partial"); },
       {s1, "unfinished", ".partial"}},
      {"manifest missing required key",
       [&](const std::string& d) { edit_manifest(d, [](nlohmann::json& j) { j.erase("k"); }); },
       {"manifest.json", "missing required key 'k'"}},
      {"manifest future version",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) {
           j["version"] = 4;
           j.erase("k");
         });
       },
       {"manifest.json", "version 4 is newer than this fkd supports (3)"}},
      {"manifest version zero",
       [&](const std::string& d) { edit_manifest(d, [](nlohmann::json& j) { j["version"] = 0; }); },
       {"manifest.json", "format version 0: no fkd version wrote it (versions are 1 to 3)"}},
      {"manifest wrong type",
       [&](const std::string& d) { edit_manifest(d, [](nlohmann::json& j) { j["k"] = "five"; }); },
       {"manifest.json", "key 'k': expected an integer, found string"}},
      {"manifest unknown label type",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) { j["label_type"] = "soft"; });
       },
       {"manifest.json", "unknown label type 'soft'"}},
      {"manifest value out of range",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) { j["flip_prob"] = 1.5; });
       },
       {"manifest.json", "flip_prob: 1.5 is not in [0, 1]"}},
      {"manifest not a store",
       [&](const std::string& d) {
         edit_manifest(d, [](nlohmann::json& j) { j["format"] = "other"; });
       },
       {"manifest.json", "key 'format'"}},
      {"manifest not JSON",
       [&](const std::string& d) { write_file(d + "/manifest.json", "{\"format\": "); },
       {"manifest.json", "not valid JSON"}},
  };
  for (const Corruption& c : table) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    fs::copy(base.path(), dir.path(),
             fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    c.apply(dir.path());
    std::string msg;
    try {
      StoreReader r(dir.path());
      ASSERT_GE(c.read_image, 0) << "the store opened";
      ImageLabels l;
      for (uint64_t i = 0; i < r.num_images(); ++i) {
        if (int(i) != c.read_image) r.read(i, l);  // the others still read
      }
      r.read(uint64_t(c.read_image), l);
      FAIL() << "read did not fail";
    } catch (const FormatError& e) {
      msg = e.what();
    }
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& s : c.expect)
      EXPECT_NE(msg.find(s), std::string::npos) << "'" << s << "' not in: " << msg;
  }
}

TEST(StoreManifest, TeacherAmpIsPartOfTheIdentity) {
  TempDir dir;
  Manifest m = make_manifest(LabelType::kMarginalRenorm, 3, Precision::kU8, 10, 7, 100, 4);
  EXPECT_EQ(m.teacher_amp, AmpMode::kOff);
  const uint64_t off_key = store::store_key(m);
  // Stores of earlier versions have no teacher_amp: they read as float32 with the same key.
  write_manifest(dir.path(), m);
  EXPECT_NE(read_file(dir.file("manifest.json")).find("\"teacher_amp\": \"off\""),
            std::string::npos);
  edit_manifest(dir.path(), [](nlohmann::json& j) { j.erase("teacher_amp"); });
  const Manifest old = read_manifest(dir.path());
  EXPECT_EQ(old.teacher_amp, AmpMode::kOff);
  EXPECT_EQ(store::store_key(old), off_key);

  Manifest bf16 = m;
  bf16.teacher_amp = AmpMode::kBf16;
  EXPECT_NE(store::store_key(bf16), off_key);
  EXPECT_EQ(manifest_differences(m, bf16), std::vector<std::string>{"teacher_amp (off vs bf16)"});
  write_manifest(dir.path(), bf16);
  EXPECT_EQ(read_manifest(dir.path()).teacher_amp, AmpMode::kBf16);

  for (const char* bad : {"auto", "half"}) {
    edit_manifest(dir.path(), [&](nlohmann::json& j) { j["teacher_amp"] = bad; });
    const std::string msg = test::error_message<FormatError>([&] { read_manifest(dir.path()); });
    EXPECT_NE(msg.find("manifest.json: key 'teacher_amp'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  }
  bf16.teacher_amp = AmpMode::kAuto;
  EXPECT_THROW(write_manifest(dir.path(), bf16), ConfigError);
}

TEST(StoreCorrupt, PackedRecordsOnlyWhereTheFormatAllowsThem) {
  // A version 1 store is written with zstd records (codec 0), and a packed codec in its
  // blocks is refused; so is a packed record in a store of `full` labels.
  struct Case {
    int version;
    LabelType type;
    const char* error;
  };
  for (const Case& c : {Case{1, LabelType::kMarginalSmoothing, "codec 1 in a version 1 shard"},
                        Case{2, LabelType::kFull, "a packed record in a store of full labels"}}) {
    SCOPED_TRACE(c.error);
    Manifest m = make_manifest(c.type, 3, Precision::kFp16, 10, 4, 2);
    m.version = c.version;
    TempDir dir;
    write_store(dir.path(), m);
    const std::string path = shard_path(dir.path(), 0, 1);
    std::string b = read_file(path);
    EXPECT_EQ(b[128 + 28], 0) << "a zstd record";
    b[128 + 28] = 1;
    reseal_block(b, 0);
    write_file(path, b);
    StoreReader r(dir.path());
    ImageLabels l;
    r.read(1, l);
    try {
      r.read(0, l);
      FAIL() << "the packed codec was accepted";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(c.error), std::string::npos) << e.what();
    }
  }
  // In version 2 the writer packs every other type, and falls back to zstd for a record
  // whose values do not descend.
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 2);
  TempDir dir;
  {
    ShardWriter w(dir.path(), m, 0);
    ImageLabels l = make_labels(m, 0);
    w.append(0, l);
    std::swap(l.values[0], l.values[2]);  // crop 0: ascending
    w.append(1, l);
    w.finish();
  }
  write_manifest(dir.path(), m);
  const std::string b = read_file(shard_path(dir.path(), 0, 1));
  const uint64_t second =
      store::load_u64(reinterpret_cast<const uint8_t*>(b.data()) + footer_u64(b, 0) + 24);
  EXPECT_EQ(b[128 + 28], 1);
  EXPECT_EQ(b[second + 28], 0);
}

/// A packed record of 4 crops, smoothing labels (one index, one fp16 value) over 3 classes.
std::string packed_record(const std::string& dictionary, const std::string& positions,
                          const std::string& values) {
  std::string r(16, '\0');
  store::store_u32(reinterpret_cast<uint8_t*>(&r[0]), 8);   // height
  store::store_u32(reinterpret_cast<uint8_t*>(&r[4]), 9);   // width
  store::store_u32(reinterpret_cast<uint8_t*>(&r[12]), 4);  // crops
  return r + dictionary + positions + values;
}

TEST(StoreCorrupt, TableOfHandcraftedPackedRecords) {
  store::RecordFormat f;
  f.label_type = LabelType::kSmoothing;
  f.k = 1;
  f.num_classes = 3;
  f.precision = Precision::kFp16;
  f.crops_per_image = 4;
  const std::string file = "x.fkdl";
  auto decode = [&](const std::string& rec, ImageLabels& l) {
    store::decode_packed_record(f, reinterpret_cast<const uint8_t*>(rec.data()), rec.size(), l,
                                store::Where{file, 5, 128});
  };
  // Dictionary {2}: one entry, no order bits. Positions all 0 (width 0). Values: width 16,
  // lanes of one 16-bit slot each: 1.0 - code, so 0x3c00 - 0x3800 = 0x400 is 0.5.
  const std::string dict1("\x01\x02", 2), zero_plane("\x00\x00", 2);
  const std::string halves("\x10\x00\x00\x04\x00\x04\x00\x04\x00\x04", 10);
  ImageLabels l;
  decode(packed_record(dict1, zero_plane, halves), l);
  EXPECT_EQ(l.indices, std::vector<int32_t>({2, 2, 2, 2}));
  EXPECT_EQ(l.values, std::vector<float>({0.5f, 0.5f, 0.5f, 0.5f}));
  // Dictionary {0, 2}, ordered 2 then 0 (order bits: 1, 0); positions 0 1 0 0 via one
  // exception (index 1, high part 1) on a width-0 plane.
  const std::string dict2("\x02\x00\x01\x01", 4);
  const std::string one_exception("\x00\x01\x01\x01\x01", 5);
  decode(packed_record(dict2, one_exception, halves), l);
  EXPECT_EQ(l.indices, std::vector<int32_t>({2, 0, 2, 2}));

  struct Bad {
    const char* name;
    std::string record;
    const char* error;
  };
  const std::vector<Bad> table = {
      {"dictionary size 0", packed_record(std::string("\x00", 1), zero_plane, halves),
       "dictionary size 0 is not in [1, 3]"},
      {"dictionary id past the classes",
       packed_record(std::string("\x01\x03", 2), zero_plane, halves),
       "class id 3 out of range [0, 3)"},
      {"dictionary order repeated",
       packed_record(std::string("\x02\x00\x01\x00", 4), zero_plane, halves),
       "dictionary order entry 1: 0 is past 2 entries or repeated"},
      {"width above 32", packed_record(dict1, zero_plane, std::string("\x21\x00", 2)),
       "width 33 is more than 32"},
      {"more exceptions than values", packed_record(dict1, std::string("\x00\x05", 2), halves),
       "5 exceptions for 4 values"},
      {"exceptions out of order",
       packed_record(dict2, std::string("\x00\x02\x01\x06\x03", 5), halves),
       "exception 1 at value 1 is out of order"},
      {"exception width above 32 - w",
       packed_record(dict2, std::string("\x00\x01\x21\x01\x01", 5), halves),
       "exception width 33 is not in [1, 1]"},
      {"positions wider than the dictionary",
       packed_record(dict1, std::string("\x01\x00\x01\x00\x00\x00", 6), halves),
       "width 1 is more than 0"},
      {"position past the dictionary",
       packed_record(std::string("\x03\x00\x00\x00\x24", 5),
                     std::string("\x02\x00\x03\x00\x00\x00", 6), halves),
       "dictionary position 3 >= dictionary size 3"},
      {"value above 1",
       packed_record(dict1, zero_plane,
                     std::string("\x10\x00\x01\x3c\x00\x00\x00\x00\x00\x00", 10)),
       "value difference is larger than the value above it"},
      {"truncated values", packed_record(dict1, zero_plane, halves.substr(0, 9)),
       "record truncated: values needs 8 bytes"},
      {"trailing byte", packed_record(dict1, zero_plane, halves + "x"), "1 trailing bytes"},
      {"varint too long",
       packed_record(std::string("\x81\x80\x80\x80\x80\x01", 6), zero_plane, halves), "varint"},
  };
  for (const Bad& b : table) {
    SCOPED_TRACE(b.name);
    try {
      decode(b.record, l);
      FAIL() << "decoded";
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("x.fkdl: image 5 (block at offset 128)"), std::string::npos) << msg;
      EXPECT_NE(msg.find(b.error), std::string::npos) << msg;
    }
  }
}

// --- verification ----------------------------------------------------------------------

/// Offset of image `image`'s block in a shard file (from its index).
uint64_t block_offset(const std::string& shard, uint64_t image) {
  const std::string b = read_file(shard);
  const auto v =
      store::ShardView::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), shard);
  return v.entry(image).offset;
}

/// Flips one bit of byte `at` of image `image`'s block (32: the first payload byte).
void flip_in_block(const std::string& shard, uint64_t image, uint64_t at) {
  const uint64_t off = block_offset(shard, image);
  edit_file(shard, [&](std::string& b) { b[off + at] ^= 0x10; });
}

TEST(StoreVerify, IntactStoreIsOk) {
  TempDir dir;
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 9, 3);
  write_store(dir.path(), m);
  const StoreVerification v = verify_store(dir.path());
  EXPECT_TRUE(v.ok());
  EXPECT_EQ(v.images, 9u);
  EXPECT_EQ(v.records_checked, 9u);
  EXPECT_TRUE(v.damaged_images().empty());
}

TEST(StoreVerify, ListsEveryDamagedRecordWithItsShardAndOffset) {
  TempDir dir;
  // 12 images over 3 shards of 4: [0, 4), [4, 8), [8, 12). Packed and zstd records both.
  for (Precision p : {Precision::kFp16, Precision::kFp32}) {
    SCOPED_TRACE(precision_name(p));
    const std::string store = dir.file(precision_name(p));
    const LabelType type = p == Precision::kFp32 ? LabelType::kFull : LabelType::kMarginalSmoothing;
    const Manifest m = make_manifest(type, k_for(type, 10), p, 10, 6, 12, 3);
    write_store(store, m);
    const std::string s0 = shard_path(store, 0, 3), s1 = shard_path(store, 1, 3);
    flip_in_block(s0, 1, 40);  // payload bytes
    flip_in_block(s1, 5, 33);
    flip_in_block(s1, 7, 50);
    flip_in_block(s1, 6, 17);  // the block header's image id
    const StoreVerification v = verify_store(store);
    EXPECT_FALSE(v.ok());
    EXPECT_TRUE(v.shards.empty());
    EXPECT_EQ(v.records_checked, 12u);
    ASSERT_EQ(v.records.size(), 4u);
    const std::vector<std::pair<std::string, uint64_t>> want = {{s0, 1}, {s1, 5}, {s1, 6}, {s1, 7}};
    for (size_t i = 0; i < want.size(); ++i) {
      const auto& r = v.records[i];
      EXPECT_EQ(r.shard, want[i].first) << i;
      EXPECT_EQ(r.image, want[i].second) << i;
      EXPECT_EQ(r.offset, block_offset(want[i].first, want[i].second)) << i;
      EXPECT_EQ(r.problem.find('\n'), std::string::npos) << r.problem;
      EXPECT_NE(r.problem.find(fmt::format("block of image {}", r.image)), std::string::npos)
          << r.problem;
    }
    EXPECT_NE(v.records[0].problem.find("checksum mismatch"), std::string::npos);
    EXPECT_NE(v.records[2].problem.find("disagrees with the index"), std::string::npos);
    EXPECT_EQ(v.damaged_images(), (std::vector<uint64_t>{1, 5, 6, 7}));

    // The reader stops at a damaged record with a line naming the shard, image and offset.
    const StoreReader reader(store);
    ImageLabels l;
    reader.read(4, l);
    try {
      reader.read(5, l);
      ADD_FAILURE() << "damaged record read";
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(fmt::format("{}: offset {}: block of image 5: checksum mismatch", s1,
                                      block_offset(s1, 5)),
                          0),
                0u)
          << msg;
    }
  }
}

TEST(StoreVerify, RecordWithAGoodChecksumButWrongCropsIsListed) {
  // Resealed after the edit, so only the record's own checks can tell.
  TempDir dir;
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 6, 1);
  write_store(dir.path(), m);
  const std::string shard = shard_path(dir.path(), 0, 1);
  const uint64_t off = block_offset(shard, 2);
  edit_file(shard, [&](std::string& b) {
    ASSERT_EQ(store::load_u32(reinterpret_cast<const uint8_t*>(b.data()) + off + 28),
              uint32_t(store::Codec::kPacked));
    b[off + 32 + 8] ^= 1;  // the record header's crop hash
    reseal_block(b, 2);
  });
  const StoreVerification v = verify_store(dir.path());
  ASSERT_EQ(v.records.size(), 1u);
  EXPECT_EQ(v.records[0].image, 2u);
  EXPECT_EQ(v.records[0].offset, off);
  EXPECT_NE(v.records[0].problem.find("crop hash"), std::string::npos) << v.records[0].problem;
}

TEST(StoreVerify, WholeShardProblemsAreListedWithTheirImages) {
  TempDir dir;
  const Manifest m =
      make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 12, 4);
  write_store(dir.path(), m);
  const std::string s0 = shard_path(dir.path(), 0, 4), s2 = shard_path(dir.path(), 2, 4),
                    s3 = shard_path(dir.path(), 3, 4);
  fs::remove(s0);                                               // images [0, 3)
  edit_file(s2, [](std::string& b) { b[b.size() - 3] ^= 1; });  // footer magic, [6, 9)
  fs::rename(s3, s3 + ".partial");                              // unfinished, [9, 12)
  flip_in_block(shard_path(dir.path(), 1, 4), 4, 40);           // one record of shard 1
  const StoreVerification v = verify_store(dir.path());
  EXPECT_EQ(v.records_checked, 3u);
  ASSERT_EQ(v.shards.size(), 3u);
  EXPECT_EQ(v.shards[0].shard, s0);
  EXPECT_EQ(v.shards[0].index, 0u);
  EXPECT_EQ(v.shards[0].image_begin, 0u);
  EXPECT_EQ(v.shards[0].image_end, 3u);
  EXPECT_NE(v.shards[0].problem.find("missing shard 0 of 4"), std::string::npos);
  EXPECT_EQ(v.shards[1].shard, s2);
  EXPECT_NE(v.shards[1].problem.find("footer missing"), std::string::npos) << v.shards[1].problem;
  EXPECT_EQ(v.shards[2].shard, s3);
  EXPECT_NE(v.shards[2].problem.find("unfinished"), std::string::npos) << v.shards[2].problem;
  ASSERT_EQ(v.records.size(), 1u);
  EXPECT_EQ(v.records[0].image, 4u);
  EXPECT_EQ(v.damaged_images(), (std::vector<uint64_t>{0, 1, 2, 4, 6, 7, 8, 9, 10, 11}));
  // A store without a readable manifest cannot be verified at all.
  fs::remove(dir.file("manifest.json"));
  EXPECT_THROW(verify_store(dir.path()), FormatError);
}

TEST(StoreCorrupt, RandomDamageNeverCrashes) {
  // A small in-unit-test fuzzer: flip bytes, truncate, with checksums off so the damage
  // reaches the decoders. Every outcome is a clean decode or an fkd::Error.
  TempDir dir;
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 300, 6, 3);
  write_store(dir.path(), m);
  const std::string good = read_file(shard_path(dir.path(), 0, 1));
  std::mt19937 gen(7);
  int decoded = 0, rejected = 0;
  ImageLabels l;
  for (int it = 0; it < 3000; ++it) {
    std::string b = good;
    const int flips = 1 + int(gen() % 4);
    for (int f = 0; f < flips; ++f) b[gen() % b.size()] ^= char(1 << (gen() % 8));
    if (it % 5 == 0) b.resize(gen() % b.size());
    const bool verify = it % 2 == 0;
    try {
      const auto v = store::ShardView::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(),
                                             "fuzz", store::ParseOptions{verify});
      for (uint64_t i = v.header().image_begin; i < v.header().image_end; ++i) v.read(i, l);
      ++decoded;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 1000);
  EXPECT_GT(decoded, 0);  // some flips hit bytes the decoder cannot tell (e.g. mantissas)
}

// --- writer: validation, crash and resume --------------------------------------------------

TEST(StoreWriter, RejectsBadRecordsAndOrder) {
  TempDir dir;
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 3);
  write_manifest(dir.path(), m);
  ShardWriter w(dir.path(), m, 0);
  EXPECT_EQ(w.next_image(), 0u);
  EXPECT_FALSE(w.finished());
  EXPECT_THROW(w.append(1, make_labels(m, 1)), ConfigError);  // out of order
  auto bad = [&](const std::function<void(ImageLabels&)>& f) {
    ImageLabels l = make_labels(m, 0);
    f(l);
    EXPECT_THROW(w.append(0, l), DataError);
  };
  bad([](ImageLabels& l) { l.indices[2] = 10; });
  bad([](ImageLabels& l) { l.indices[1] = l.indices[0]; });
  bad([](ImageLabels& l) { l.values[0] = NAN; });
  bad([](ImageLabels& l) { l.values[0] = 1.5f; });
  bad([](ImageLabels& l) { l.values[0] = -0.25f; });
  bad([](ImageLabels& l) { l.values.pop_back(); });
  bad([](ImageLabels& l) { l.num_crops = 3; });
  bad([](ImageLabels& l) { l.width = 0; });
  EXPECT_EQ(w.next_image(), 0u);
  w.append(0, make_labels(m, 0));
  EXPECT_THROW(w.finish(), ConfigError);  // images 1, 2 missing
  w.append(1, make_labels(m, 1));
  w.append(2, make_labels(m, 2));
  w.finish();
  EXPECT_TRUE(w.finished());
  EXPECT_THROW(w.append(3, make_labels(m, 2)), ConfigError);
  const std::string bytes = read_file(shard_path(dir.path(), 0, 1));
  ShardWriter again(dir.path(), m, 0);
  EXPECT_TRUE(again.finished());
  EXPECT_EQ(again.next_image(), 3u);
  again.finish();                                             // no-op
  EXPECT_EQ(read_file(shard_path(dir.path(), 0, 1)), bytes);  // never modified
  Manifest other = m;
  other.seed = 1;
  EXPECT_THROW(ShardWriter(dir.path(), other, 0),
               FormatError);  // a finished shard of another store
  EXPECT_THROW(ShardWriter(dir.path(), m, 1), ConfigError);
}

TEST(StoreWriter, SecondWriterOnTheSameShardIsRefused) {
  TempDir dir;
  const Manifest m = make_manifest(LabelType::kHard, 1, Precision::kU8, 10, 4, 3);
  ShardWriter a(dir.path(), m, 0);
  EXPECT_THROW(ShardWriter(dir.path(), m, 0), IoError);
}

/// Block boundaries of a .partial file: [128, b1, b2, ..., end].
std::vector<size_t> block_bounds(const std::string& b) {
  std::vector<size_t> out{128};
  size_t pos = 128;
  while (pos + 32 <= b.size()) {
    pos += 32 + store::load_u32(reinterpret_cast<const uint8_t*>(b.data()) + pos + 4);
    out.push_back(pos);
  }
  return out;
}

TEST(StoreWriter, CrashAndResumeGivesTheSameShardBytes) {
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 5, Precision::kFp16, 40, 10, 7);
  TempDir ref;
  write_store(ref.path(), m);
  const std::string want = read_file(shard_path(ref.path(), 0, 1));

  TempDir crashed;
  write_manifest(crashed.path(), m);
  {
    ShardWriter w(crashed.path(), m, 0);
    for (uint64_t i = 0; i < 5; ++i) w.append(i, make_labels(m, i));
  }  // "crash": no finish
  const std::string partial_name = shard_path(crashed.path(), 0, 1) + ".partial";
  const std::string partial = read_file(partial_name);
  const auto bounds = block_bounds(partial);
  ASSERT_EQ(bounds.size(), 6u);
  ASSERT_EQ(bounds.back(), partial.size());
  ASSERT_EQ(want.compare(0, partial.size(), partial), 0);  // the .partial is the shard's prefix

  struct Cut {
    const char* what;
    size_t size;
    uint64_t next;
    bool garbage = false;
  };
  const std::vector<Cut> cuts = {
      {"empty file", 0, 0},
      {"torn header", 100, 0},
      {"header only", 128, 0},
      {"inside the first block header", 128 + 10, 0},
      {"at a block boundary", bounds[2], 2},
      {"inside a block header", bounds[2] + 20, 2},
      {"inside a payload", bounds[3] + 32 + 5, 3},
      {"last byte missing", bounds[5] - 1, 4},
      {"complete", bounds[5], 5},
      {"garbage after a block", bounds[4], 4, true},
  };
  for (const Cut& c : cuts) {
    SCOPED_TRACE(c.what);
    TempDir dir;
    write_manifest(dir.path(), m);
    std::string b = partial.substr(0, c.size);
    if (c.garbage) b += std::string(50, '\x5a');
    write_file(shard_path(dir.path(), 0, 1) + ".partial", b);
    ShardWriter w(dir.path(), m, 0);
    ASSERT_EQ(w.next_image(), c.next);
    for (uint64_t i = w.next_image(); i < m.num_images; ++i) w.append(i, make_labels(m, i));
    w.finish();
    EXPECT_FALSE(fs::exists(shard_path(dir.path(), 0, 1) + ".partial"));
    EXPECT_EQ(read_file(shard_path(dir.path(), 0, 1)), want);
  }
  {
    SCOPED_TRACE(
        "every image written, long garbage tail");  // the tail must be cut, not overwritten
    TempDir dir;
    write_manifest(dir.path(), m);
    {
      ShardWriter w(dir.path(), m, 0);
      for (uint64_t i = 0; i < m.num_images; ++i) w.append(i, make_labels(m, i));
    }
    const std::string name = shard_path(dir.path(), 0, 1) + ".partial";
    write_file(name, read_file(name) + std::string(5000, '\x33'));
    ShardWriter w(dir.path(), m, 0);
    EXPECT_EQ(w.next_image(), m.num_images);
    w.finish();
    EXPECT_EQ(read_file(shard_path(dir.path(), 0, 1)), want);
  }
  {
    SCOPED_TRACE("corrupt middle block");
    TempDir dir;
    write_manifest(dir.path(), m);
    std::string b = partial;
    b[bounds[3] + 40] ^= 1;  // image 3's payload
    write_file(shard_path(dir.path(), 0, 1) + ".partial", b);
    ShardWriter w(dir.path(), m, 0);
    EXPECT_EQ(w.next_image(), 3u);
  }
  {
    SCOPED_TRACE("partial of another store");
    TempDir dir;
    Manifest other = m;
    other.k = 4;
    write_file(shard_path(dir.path(), 0, 1) + ".partial", partial);
    EXPECT_THROW(ShardWriter(dir.path(), other, 0), FormatError);
  }
}

TEST(StoreWriter, FullDiskIsOneLineAndTheShardResumes) {
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 5, Precision::kFp16, 40, 10, 7);
  TempDir ref;
  write_store(ref.path(), m);
  const std::string want = read_file(shard_path(ref.path(), 0, 1));

  TempDir dir;
  write_manifest(dir.path(), m);
  const std::string partial = shard_path(dir.path(), 0, 1) + ".partial";
  std::string msg;
  {
    test::FileSizeLimit limit(want.size() / 2);  // the disk fills half way through
    try {
      ShardWriter w(dir.path(), m, 0);
      for (uint64_t i = w.next_image(); i < m.num_images; ++i) w.append(i, make_labels(m, i));
      w.finish();
      ADD_FAILURE() << "no error on a full disk";
    } catch (const IoError& e) {
      msg = e.what();
    }
  }
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind(partial + ": cannot write ", 0), 0u) << msg;
  EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(shard_path(dir.path(), 0, 1)));
  // Space freed: the same labeling resumes from the .partial's complete blocks.
  ShardWriter w(dir.path(), m, 0);
  EXPECT_GT(w.next_image(), 0u);
  EXPECT_LT(w.next_image(), m.num_images);
  for (uint64_t i = w.next_image(); i < m.num_images; ++i) w.append(i, make_labels(m, i));
  w.finish();
  EXPECT_EQ(read_file(shard_path(dir.path(), 0, 1)), want);
}

template <typename F>
std::string error_of(F&& f) {
  return test::error_message<Error>(std::forward<F>(f));
}

TEST(StoreReader, NonRegularShardFilesAreRefusedNotWaitedOn) {
  // Opening a FIFO for reading waits for a writer: were it opened so, the alarm ends the test.
  ::alarm(60);
  const Manifest m = make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 3);
  TempDir dir;
  write_manifest(dir.path(), m);
  const std::string shard = shard_path(dir.path(), 0, 1), partial = shard + ".partial";

  fs::create_directory(shard);
  EXPECT_EQ(error_of([&] { StoreReader r(dir.path()); }),
            shard + ": is a directory, not a shard file");
  EXPECT_EQ(error_of([&] { ShardWriter w(dir.path(), m, 0); }),
            shard + ": is a directory, not a shard file");
  fs::remove(shard);

  ASSERT_EQ(::mkfifo(shard.c_str(), 0644), 0);
  EXPECT_EQ(error_of([&] { StoreReader r(dir.path()); }), shard + ": is a FIFO, not a shard file");
  EXPECT_EQ(error_of([&] { ShardWriter w(dir.path(), m, 0); }),
            shard + ": is a FIFO, not a shard file");
  fs::remove(shard);

  // An unfinished shard's place: progress counts nothing there, the writer refuses it.
  ASSERT_EQ(::mkfifo(partial.c_str(), 0644), 0);
  const StoreProgress p = store_progress(dir.path());
  EXPECT_TRUE(p.shards.at(0).started);
  EXPECT_EQ(p.done, 0u);
  EXPECT_EQ(error_of([&] { ShardWriter w(dir.path(), m, 0); }),
            partial + ": is a FIFO, not a shard file");
  fs::remove(partial);

  // manifest.json in a FIFO's place.
  fs::rename(dir.file("manifest.json"), dir.file("manifest.saved"));
  ASSERT_EQ(::mkfifo(dir.file("manifest.json").c_str(), 0644), 0);
  EXPECT_EQ(error_of([&] { read_manifest(dir.path()); }),
            dir.file("manifest.json") + ": is a FIFO, not a regular file");
  ::alarm(0);
}

// --- sharding and merging -------------------------------------------------------------------

TEST(StoreMerge, ShardsPlusMergeEqualsSingleShardWrite) {
  const int C = 20;
  const Manifest one = make_manifest(LabelType::kMarginalSmoothing, 4, Precision::kU8, C, 9, 11, 1);
  Manifest three = one;
  three.num_shards = 4;  // 11 images over 4 shards: 2, 3, 3, 3
  TempDir a, b, merged;
  write_store(a.path(), one);
  write_store(b.path(), three);
  StoreReader ra(a.path()), rb(b.path());
  ImageLabels x, y;
  for (uint64_t i = 0; i < 11; ++i) {
    ra.read(i, x);
    rb.read(i, y);
    expect_same(x, y, "image " + std::to_string(i));
  }
  merge_store(b.path(), merged.path() + "/out");
  EXPECT_EQ(read_file(shard_path(merged.path() + "/out", 0, 1)),
            read_file(shard_path(a.path(), 0, 1)));
  const Manifest mm = read_manifest(merged.path() + "/out");
  EXPECT_EQ(mm.num_shards, 1u);
  EXPECT_TRUE(manifest_differences(mm, one).empty());
  StoreReader rm(merged.path() + "/out");
  EXPECT_EQ(rm.shard_bytes(), ra.shard_bytes());
  // Run again, the finished merge is found done: nothing is written, nothing is refused.
  const std::string shard = read_file(shard_path(merged.path() + "/out", 0, 1));
  EXPECT_FALSE(merge_store(b.path(), merged.path() + "/out"));
  EXPECT_EQ(read_file(shard_path(merged.path() + "/out", 0, 1)), shard);
  // Another store there is never overwritten.
  TempDir c;
  write_store(c.path(),
              make_manifest(LabelType::kMarginalSmoothing, 4, Precision::kU8, C, 9, 12, 1));
  EXPECT_THROW(merge_store(c.path(), merged.path() + "/out"), ConfigError);
  EXPECT_EQ(read_file(shard_path(merged.path() + "/out", 0, 1)), shard);
}

TEST(StoreMerge, VersionOneStoreComesOutInTheCurrentVersion) {
  Manifest old = make_manifest(LabelType::kMarginalSmoothing, 5, Precision::kFp16, 30, 40, 6, 2);
  old.version = 1;
  TempDir a, merged;
  write_store(a.path(), old);
  merge_store(a.path(), merged.path() + "/out");
  const Manifest m = read_manifest(merged.path() + "/out");
  EXPECT_EQ(m.version, kStoreFormatVersion);
  EXPECT_EQ(m.num_shards, 1u);
  const std::string b = read_file(shard_path(merged.path() + "/out", 0, 1));
  EXPECT_EQ(b[8], char(kStoreFormatVersion));
  EXPECT_EQ(b[128 + 28], char(store::Codec::kPacked));
  StoreReader ra(a.path()), rm(merged.path() + "/out");
  ImageLabels x, y;
  for (uint64_t i = 0; i < 6; ++i) {
    ra.read(i, x);
    rm.read(i, y);
    expect_same(y, x, "image " + std::to_string(i));
    EXPECT_EQ(y.crop_hash, x.crop_hash);
  }
  EXPECT_LT(rm.shard_bytes(), ra.shard_bytes());
}

TEST(StoreMerge, MoreShardsThanImages) {
  const Manifest m = make_manifest(LabelType::kSmoothing, 1, Precision::kFp16, 5, 3, 3, 5);
  TempDir dir;
  write_store(dir.path(), m);  // shards 0 and 2 are empty
  StoreReader r(dir.path());
  ImageLabels l;
  for (uint64_t i = 0; i < 3; ++i) {
    r.read(i, l);
    expect_same(l, rounded(m, make_labels(m, i)), std::to_string(i));
  }
  EXPECT_THROW(r.read(3, l), ConfigError);
}

TEST(StoreReader, ConcurrentReadsAgree) {
  const Manifest m =
      make_manifest(LabelType::kMarginalSmoothing, 5, Precision::kFp16, 50, 16, 12, 3);
  TempDir dir;
  write_store(dir.path(), m);
  StoreReader r(dir.path());
  std::vector<ImageLabels> want(12);
  for (uint64_t i = 0; i < 12; ++i) want[i] = rounded(m, make_labels(m, i));
  std::atomic<int> bad{0};
  auto work = [&](int seed) {
    ImageLabels l;
    for (int it = 0; it < 400; ++it) {
      const uint64_t i = uint64_t((it * 7 + seed) % 12);
      r.read(i, l);
      if (l.indices != want[i].indices || l.values != want[i].values) ++bad;
    }
  };
  std::thread t1(work, 1), t2(work, 5);
  t1.join();
  t2.join();
  EXPECT_EQ(bad.load(), 0);
}

// --- golden files of every format version (the fuzzer's seed corpus) ----------------------

struct Seed {
  int version;
  const char* kind;
  LabelType type;
  int k;
  Precision precision;
  int classes;
  uint32_t crops;
  uint64_t images;
  CropOrigin origin = CropOrigin::kDerived;
};
const Seed kSeeds[] = {
    {1, "marginal_smoothing-fp16", LabelType::kMarginalSmoothing, 3, Precision::kFp16, 12, 6, 3},
    {1, "marginal_renorm-u8", LabelType::kMarginalRenorm, 2, Precision::kU8, 300, 5, 2},
    {1, "smoothing-fp32", LabelType::kSmoothing, 1, Precision::kFp32, 7, 4, 2},
    {1, "hard-u8", LabelType::kHard, 1, Precision::kU8, 5, 8, 2},
    {1, "full-fp16", LabelType::kFull, 1, Precision::kFp16, 4, 3, 2},
    {2, "marginal_smoothing-fp16", LabelType::kMarginalSmoothing, 3, Precision::kFp16, 12, 6, 3},
    {2, "marginal_smoothing-fp16-many", LabelType::kMarginalSmoothing, 10, Precision::kFp16, 40, 70,
     2},
    {2, "marginal_renorm-u8", LabelType::kMarginalRenorm, 2, Precision::kU8, 300, 5, 2},
    {2, "smoothing-fp32", LabelType::kSmoothing, 1, Precision::kFp32, 7, 4, 2},
    {2, "hard-u8", LabelType::kHard, 1, Precision::kU8, 5, 8, 2},
    {2, "full-fp16", LabelType::kFull, 1, Precision::kFp16, 4, 3, 2},
    {3, "marginal_smoothing-fp16", LabelType::kMarginalSmoothing, 3, Precision::kFp16, 12, 6, 3},
    {3, "marginal_smoothing-fp16-explicit", LabelType::kMarginalSmoothing, 5, Precision::kFp16, 40,
     70, 3, CropOrigin::kExplicit},
    {3, "hard-u8-explicit", LabelType::kHard, 1, Precision::kU8, 5, 8, 2, CropOrigin::kExplicit},
    {3, "full-fp16-explicit", LabelType::kFull, 1, Precision::kFp16, 4, 3, 2,
     CropOrigin::kExplicit},
};

TEST(StoreGolden, SeedShardsOfEveryVersionStillRead) {
  // FKD_WRITE_SEED_CORPUS=1 regenerates the current version's files in fuzz/corpus/ (only
  // when the format changes on purpose); older versions' files are never rewritten.
  const bool regenerate = std::getenv("FKD_WRITE_SEED_CORPUS") != nullptr;
  for (const Seed& s : kSeeds) {
    const std::string file = fmt::format("v{}-{}.fkdl", s.version, s.kind);
    SCOPED_TRACE(file);
    Manifest m = make_manifest(s.type, s.k, s.precision, s.classes, s.crops, s.images);
    m.version = s.version;
    m.crop_origin = s.origin;
    const std::string golden = test::source_path("fuzz/corpus/" + file);
    if (regenerate && s.version == kStoreFormatVersion) {
      TempDir dir;
      write_store(dir.path(), m, portable_labels);
      fs::create_directories(fs::path(golden).parent_path());
      fs::copy_file(shard_path(dir.path(), 0, 1), golden, fs::copy_options::overwrite_existing);
    }
    ASSERT_TRUE(fs::exists(golden)) << golden;
    const std::string b = read_file(golden);
    const auto v =
        store::ShardView::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), golden);
    EXPECT_EQ(v.header().version, uint32_t(s.version));
    EXPECT_EQ(v.header().store_key, store::store_key(m));
    ImageLabels l;
    for (uint64_t i = 0; i < s.images; ++i) {
      v.read(i, l);
      const ImageLabels want = rounded(m, portable_labels(m, i));
      expect_same(l, want, std::to_string(i));
      ASSERT_EQ(l.boxes.size(), want.boxes.size());
      for (size_t c = 0; c < l.boxes.size(); ++c) {
        EXPECT_EQ(l.boxes[c].box.left, want.boxes[c].box.left);
        EXPECT_EQ(l.boxes[c].box.top, want.boxes[c].box.top);
        EXPECT_EQ(l.boxes[c].box.width, want.boxes[c].box.width);
        EXPECT_EQ(l.boxes[c].box.height, want.boxes[c].box.height);
        EXPECT_EQ(l.boxes[c].flip, want.boxes[c].flip);
      }
    }
  }
}

}  // namespace

TEST(StoreProgress, CountsFinishedPartialAndMissingShards) {
  TempDir dir;
  const Manifest m =
      make_manifest(LabelType::kMarginalSmoothing, 3, Precision::kFp16, 10, 4, 12, 4);
  write_manifest(dir.path(), m);
  write_shard(dir.path(), m, 0);
  {  // shard 1: two records appended, then the writer stops (as a killed run leaves it)
    ShardWriter w(dir.path(), m, 1);
    const uint64_t first = w.next_image();
    w.append(first, make_labels(m, first));
    w.append(first + 1, make_labels(m, first + 1));
  }
  // shard 2: a header torn by a crash; shard 3: never started.
  write_file(shard_path(dir.path(), 2, 4) + ".partial", std::string(50, 'x'));
  const StoreProgress p = store_progress(dir.path());
  ASSERT_EQ(p.shards.size(), 4u);
  EXPECT_EQ(p.total, 12u);
  EXPECT_TRUE(p.shards[0].finished);
  EXPECT_EQ(p.shards[0].done, p.shards[0].total);
  EXPECT_FALSE(p.shards[1].finished);
  EXPECT_TRUE(p.shards[1].started);
  EXPECT_EQ(p.shards[1].done, 2u);
  EXPECT_TRUE(p.shards[2].started);
  EXPECT_EQ(p.shards[2].done, 0u);
  EXPECT_FALSE(p.shards[3].started);
  EXPECT_EQ(p.done, p.shards[0].total + 2);
  EXPECT_FALSE(p.complete());
  // Finishing every shard completes it, and the count agrees with the reader.
  fs::remove(shard_path(dir.path(), 2, 4) + ".partial");
  for (uint32_t s = 1; s < 4; ++s) write_shard(dir.path(), m, s);
  const StoreProgress done = store_progress(dir.path());
  EXPECT_TRUE(done.complete());
  EXPECT_EQ(done.done, StoreReader(dir.path()).num_images());
}

}  // namespace fkd
