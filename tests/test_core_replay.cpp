// FKD's replay of a label store (replay.h): which stored crops an image trains on in each
// pass (replay_crop_ids), the store/dataset match check, and StoreCropSource on its own and
// inside the Loader, over a real small store built on a Fashion-MNIST subset.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/image.h"
#include "fkd/loader.h"
#include "fkd/replay.h"
#include "fkd/store.h"
#include "fkd/transforms.h"
#include "testutil.h"

namespace fkd {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// --- replay_crop_ids --------------------------------------------------------------------

std::vector<uint32_t> ids(uint64_t seed, uint64_t image, int64_t pass, uint32_t n, int m) {
  std::vector<uint32_t> out(static_cast<size_t>(m), 0xdeadbeefu);
  replay_crop_ids(seed, image, pass, n, m, out.data());
  return out;
}

/// The ids of passes 0 .. passes-1, concatenated (the image's crop sequence).
std::vector<uint32_t> sequence(uint64_t seed, uint64_t image, uint32_t n, int m, int passes) {
  std::vector<uint32_t> seq;
  for (int p = 0; p < passes; ++p) {
    const auto v = ids(seed, image, p, n, m);
    seq.insert(seq.end(), v.begin(), v.end());
  }
  return seq;
}

TEST(ReplayCropIds, PureAndIndependentOfEarlierPasses) {
  const std::pair<uint32_t, int> cases[] = {{10, 4}, {8, 4}, {5, 5}, {7, 3}, {6, 1}, {3, 7}};
  for (const auto& [n, m] : cases) {
    SCOPED_TRACE("n=" + std::to_string(n) + " m=" + std::to_string(m));
    const int passes = 9;
    // Same arguments, same ids.
    for (int64_t p : {0, 1, 5}) EXPECT_EQ(ids(11, 3, p, n, m), ids(11, 3, p, n, m));
    // Computed in descending order (no earlier pass computed first) == ascending order.
    std::vector<std::vector<uint32_t>> down(passes);
    for (int p = passes - 1; p >= 0; --p) down[size_t(p)] = ids(11, 3, p, n, m);
    for (int p = 0; p < passes; ++p) EXPECT_EQ(ids(11, 3, p, n, m), down[size_t(p)]) << p;
    // Pass p takes positions [p*m, p*m+m) of one sequence that does not depend on m: it
    // equals the first passes*m ids taken in one call (m' = passes*m, pass 0), and the
    // sequence read with m = 1.
    const std::vector<uint32_t> seq = sequence(11, 3, n, m, passes);
    EXPECT_EQ(seq, ids(11, 3, 0, n, m * passes));
    EXPECT_EQ(seq, sequence(11, 3, n, 1, m * passes));
    // A far pass on its own equals the same positions of the long sequence.
    const int64_t far = 1000;
    const auto far_ids = ids(11, 3, far, n, m);
    for (int k = 0; k < m; ++k) {
      EXPECT_EQ(far_ids[size_t(k)], ids(11, 3, far * m + k, n, 1)[0]) << k;
    }
  }
}

TEST(ReplayCropIds, EveryCropOnceBeforeReuse) {
  const std::pair<uint32_t, int> cases[] = {{10, 4}, {8, 4}, {5, 5}, {7, 3}, {1, 1},
                                            {1, 3},  {2, 3}, {6, 4}, {13, 5}};
  for (const auto& [n, m] : cases) {
    for (uint64_t image : {0u, 1u, 17u, 123456789u}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " m=" + std::to_string(m) +
                   " image=" + std::to_string(image));
      const int rounds = 5;
      const int passes = int((uint64_t(rounds) * n + uint64_t(m) - 1) / uint64_t(m));
      const std::vector<uint32_t> seq = sequence(99, image, n, m, passes);
      ASSERT_GE(seq.size(), size_t(rounds) * n);
      for (uint32_t id : seq) ASSERT_LT(id, n);
      for (int r = 0; r < rounds; ++r) {
        std::vector<uint32_t> block(seq.begin() + ptrdiff_t(r) * n,
                                    seq.begin() + ptrdiff_t(r + 1) * n);
        std::sort(block.begin(), block.end());
        std::vector<uint32_t> all(n);
        std::iota(all.begin(), all.end(), 0u);
        EXPECT_EQ(block, all) << "round " << r << " is not a permutation of [0, n)";
      }
    }
  }
}

TEST(ReplayCropIds, OrdersDifferAcrossImagesRoundsAndSeeds) {
  const uint32_t n = 50;
  std::set<std::vector<uint32_t>> orders;
  std::vector<uint32_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0u);
  for (uint64_t image = 0; image < 20; ++image) {
    const auto r0 = ids(7, image, 0, n, int(n));  // round 0
    const auto r1 = ids(7, image, 1, n, int(n));  // round 1
    EXPECT_NE(r0, r1) << "image " << image << ": rounds 0 and 1 are the same permutation";
    EXPECT_NE(r0, identity) << "image " << image << ": round 0 is not shuffled";
    orders.insert(r0);
  }
  EXPECT_EQ(orders.size(), 20u) << "different images should get different orders";
  // The seed matters too.
  EXPECT_NE(ids(7, 3, 0, n, int(n)), ids(8, 3, 0, n, int(n)));
}

TEST(ReplayCropIds, BadArgumentsThrowConfigError) {
  uint32_t out[8] = {};
  EXPECT_THROW(replay_crop_ids(1, 0, 0, 0, 1, out), ConfigError);   // n = 0
  EXPECT_THROW(replay_crop_ids(1, 0, 0, 4, 0, out), ConfigError);   // m = 0
  EXPECT_THROW(replay_crop_ids(1, 0, 0, 4, -2, out), ConfigError);  // m < 0
  EXPECT_THROW(replay_crop_ids(1, 0, -1, 4, 2, out), ConfigError);  // pass < 0
  EXPECT_NO_THROW(replay_crop_ids(1, 0, 0, 1, 1, out));
}

// --- a real small store over Fashion-MNIST ----------------------------------------------

constexpr int kClasses = 10;
constexpr uint32_t kCrops = 6;  // N: crops per image in the store
constexpr int kTopK = 3;
constexpr uint64_t kStoreSeed = 1234;  // the crop sampler's seed (manifest)
constexpr uint64_t kReplaySeed = 77;   // the training run's seed (StoreCropSource)
constexpr int kSide = 28;

std::shared_ptr<Dataset> fashion(size_t limit) {
  DatasetOptions o;
  o.limit = limit;
  return open_dataset("fashion-mnist", Split::kTrain, o);
}

/// Synthetic teacher output of crop `crop` of image `image`: a distinct top class per crop
/// (so crops of one image have different labels), integer weights, exact float division.
std::vector<float> synth_probs(uint64_t image, uint32_t crop) {
  std::vector<float> w(kClasses);
  for (int c = 0; c < kClasses; ++c) w[size_t(c)] = float(1 + (c * 5 + image * 3 + crop * 7) % 11);
  w[size_t((image * 3 + crop) % kClasses)] += float(40 + 4 * crop);
  w[size_t((image + crop * 3 + 5) % kClasses)] += float(12 + crop);
  float sum = 0;
  for (float x : w) sum += x;
  for (float& x : w) x /= sum;
  return w;
}

/// The dense soft label training must see for (image, crop), recomputed from the synthetic
/// probabilities: quantize (marginal_smoothing, top-3), round to fp32, recover.
std::vector<float> expected_soft(uint64_t image, uint32_t crop) {
  const auto p = synth_probs(image, crop);
  int32_t idx[kTopK];
  float val[kTopK];
  quantize_crop(p.data(), kClasses, LabelType::kMarginalSmoothing, kTopK, idx, val);
  for (float& v : val) v = round_to_precision(v, Precision::kFp32);
  std::vector<float> out(kClasses, -1.0f);
  recover_dense(LabelType::kMarginalSmoothing, kTopK, kClasses, idx, val, out.data());
  return out;
}

Manifest make_manifest(const Dataset& ds, size_t limit) {
  Manifest m;
  m.num_images = ds.size();
  m.dataset_fingerprint = dataset_fingerprint(ds);
  m.classes = ds.classes();
  m.dataset = "fashion-mnist";
  m.dataset_limit = limit;
  m.teacher = "teacher.pt";
  m.teacher_hash = "00112233445566778899aabbccddeeff";
  m.temperature = 1.0f;
  m.label_type = LabelType::kMarginalSmoothing;
  m.k = kTopK;
  m.precision = Precision::kFp32;
  m.crops_per_image = kCrops;
  m.seed = kStoreSeed;
  m.crop.scale = {0.25f, 1.0f};
  m.crop.ratio = {3.f / 4.f, 4.f / 3.f};
  m.crop.flip = 0.5f;
  m.crop.size = kSide;
  m.interpolation = "bilinear";
  m.mean = {0.5f};
  m.std = {0.5f};
  m.num_shards = 1;
  return m;
}

/// Writes manifest + one shard; image `wrong_image` (if any) is recorded at 30x28.
void write_store(const std::string& dir, const Manifest& m, int64_t wrong_image = -1) {
  fs::create_directories(dir);
  write_manifest(dir, m);
  const int ni = stored_indices(m.label_type, m.k);
  const int nv = stored_values(m.label_type, m.k, kClasses);
  ShardWriter w(dir, m, 0);
  for (uint64_t i = 0; i < m.num_images; ++i) {
    ImageLabels l;
    l.height = int64_t(i) == wrong_image ? 30 : kSide;
    l.width = kSide;
    l.num_crops = m.crops_per_image;
    l.crop_hash = label_crop_hash(m, i, l.height, l.width);
    l.indices.resize(size_t(m.crops_per_image) * size_t(ni));
    l.values.resize(size_t(m.crops_per_image) * size_t(nv));
    for (uint32_t c = 0; c < m.crops_per_image; ++c) {
      const auto p = synth_probs(i, c);
      quantize_crop(p.data(), kClasses, m.label_type, m.k, l.indices.data() + size_t(c) * ni,
                    l.values.data() + size_t(c) * nv);
    }
    w.append(i, l);
  }
  w.finish();
}

CropPlan expected_plan(const Manifest& m, uint64_t image, uint32_t crop) {
  return derive_label_crop(m.crop, kStoreSeed, image, crop, kSide, kSide);
}

void expect_same_plan(const CropPlan& a, const CropPlan& b, const std::string& what) {
  EXPECT_EQ(a.box.left, b.box.left) << what;
  EXPECT_EQ(a.box.top, b.box.top) << what;
  EXPECT_EQ(a.box.width, b.box.width) << what;
  EXPECT_EQ(a.box.height, b.box.height) << what;
  EXPECT_EQ(a.flip, b.flip) << what;
  EXPECT_EQ(a.id, b.id) << what;
}

class StoreReplay : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    ds_ = new std::shared_ptr<Dataset>(fashion(64));
    ASSERT_EQ((*ds_)->size(), 64u);
    manifest_ = new Manifest(make_manifest(**ds_, 64));
    write_store(dir_->path(), *manifest_);
    store_ = new std::shared_ptr<const StoreReader>(
        std::make_shared<StoreReader>(dir_->path(), /*check_crops=*/true));
  }
  static void TearDownTestSuite() {
    delete store_;
    delete manifest_;
    delete ds_;
    delete dir_;
  }
  static TempDir* dir_;
  static std::shared_ptr<Dataset>* ds_;
  static Manifest* manifest_;
  static std::shared_ptr<const StoreReader>* store_;
};
TempDir* StoreReplay::dir_ = nullptr;
std::shared_ptr<Dataset>* StoreReplay::ds_ = nullptr;
Manifest* StoreReplay::manifest_ = nullptr;
std::shared_ptr<const StoreReader>* StoreReplay::store_ = nullptr;

TEST_F(StoreReplay, FixtureIsRealAndLabelsDistinguishCrops) {
  const Dataset& ds = **ds_;
  for (size_t i = 0; i < ds.size(); ++i) {
    const Image im = ds.load(i);
    ASSERT_EQ(im.height, kSide);
    ASSERT_EQ(im.width, kSide);
    ASSERT_EQ(im.channels, 1);
  }
  // The synthetic labels tell the crops of an image apart, so a wrong crop id is caught.
  for (uint64_t i = 0; i < 8; ++i) {
    for (uint32_t a = 0; a < kCrops; ++a) {
      for (uint32_t b = a + 1; b < kCrops; ++b) {
        EXPECT_NE(expected_soft(i, a), expected_soft(i, b)) << i << " " << a << " " << b;
      }
    }
  }
  // And the crops themselves differ (boxes or flips).
  std::set<std::tuple<int, int, int, int, bool>> boxes;
  for (uint32_t c = 0; c < kCrops; ++c) {
    const CropPlan p = expected_plan(*manifest_, 0, c);
    boxes.insert({p.box.left, p.box.top, p.box.width, p.box.height, p.flip});
  }
  EXPECT_GT(boxes.size(), 3u);
  for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE((*store_)->verify_crops(i));
  // The replay seed and the sampler seed give different crop orders, so a source that
  // replayed with the wrong one would be caught below.
  int same = 0;
  for (uint64_t i = 0; i < 16; ++i) {
    same += ids(kReplaySeed, i, 0, kCrops, 2) == ids(kStoreSeed, i, 0, kCrops, 2);
  }
  EXPECT_LT(same, 8);
}

TEST_F(StoreReplay, SourceGivesReplayedCropsAndStoredLabels) {
  for (int m : {1, 2, 4, 6}) {
    StoreCropSource source(*store_, m, kReplaySeed);
    EXPECT_EQ(source.crops_per_image(), m);
    EXPECT_EQ(source.soft_label_classes(), kClasses);
    for (size_t image : {size_t(0), size_t(5), size_t(63)}) {
      for (int64_t pass : {0, 1, 2, 3, 10}) {
        const std::string what = "m=" + std::to_string(m) + " image=" + std::to_string(image) +
                                 " pass=" + std::to_string(pass);
        std::vector<CropPlan> plans(static_cast<size_t>(m));
        std::vector<float> soft(size_t(m) * kClasses, -7.0f);
        source.crops(image, pass, kSide, kSide, plans.data(), soft.data());
        const auto want_ids = ids(kReplaySeed, image, pass, kCrops, m);
        for (int k = 0; k < m; ++k) {
          const uint32_t id = want_ids[size_t(k)];
          CropPlan want = expected_plan(*manifest_, image, id);
          want.id = id;
          expect_same_plan(plans[size_t(k)], want, what + " k=" + std::to_string(k));
          const std::vector<float> got(soft.begin() + ptrdiff_t(k) * kClasses,
                                       soft.begin() + ptrdiff_t(k + 1) * kClasses);
          EXPECT_EQ(got, expected_soft(image, id)) << what << " k=" << k;
        }
        // A null soft pointer is allowed and gives the same plans.
        std::vector<CropPlan> again(static_cast<size_t>(m));
        source.crops(image, pass, kSide, kSide, again.data(), nullptr);
        for (int k = 0; k < m; ++k) expect_same_plan(again[size_t(k)], plans[size_t(k)], what);
      }
    }
  }
}

/// One batch's content, for comparisons across worker counts.
struct Flat {
  std::vector<float> images;
  std::vector<uint32_t> sample, crop;
  std::vector<float> soft;
  std::vector<int64_t> targets;
  bool operator==(const Flat& o) const {
    return images == o.images && sample == o.sample && crop == o.crop && soft == o.soft &&
           targets == o.targets;
  }
};

TrainTransform transform28() {
  TrainTransform t;
  t.crop.kind = CropKind::kRandomResized;
  t.crop.size = kSide;
  t.interp = Interp::kBilinear;
  t.norm.mean[0] = 0.25f;
  t.norm.std[0] = 0.5f;
  return t;
}

std::vector<Batch> run_epoch(const std::shared_ptr<const Dataset>& ds,
                             const std::shared_ptr<const StoreReader>& store, int m, int workers,
                             int64_t epoch) {
  LoaderOptions o;
  o.batch_size = size_t(4 * m);  // 4 images per batch: 8 rows for m = 2
  o.workers = workers;
  o.shuffle = true;
  o.seed = 5;
  o.prefetch = 3;
  o.strict = true;
  Loader loader(ds, transform28(), std::make_shared<StoreCropSource>(store, m, kReplaySeed), o);
  loader.start_epoch(epoch);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  EXPECT_EQ(out.size(), loader.num_batches());
  EXPECT_EQ(loader.skipped(), 0u);
  return out;
}

std::vector<Flat> flatten(const std::vector<Batch>& batches) {
  std::vector<Flat> out;
  for (const Batch& b : batches) {
    Flat f;
    f.images.assign(b.images.get(), b.images.get() + size_t(b.n) * b.c * b.h * b.w);
    f.sample = b.sample;
    f.crop = b.crop;
    f.soft = b.soft;
    f.targets = b.targets;
    out.push_back(std::move(f));
  }
  return out;
}

TEST_F(StoreReplay, LoaderYieldsReplayedCropsLabelsAndPixels) {
  const int m = 2;
  const Dataset& ds = **ds_;
  const TrainTransform t = transform28();
  std::vector<Image> decoded;
  for (size_t i = 0; i < ds.size(); ++i) decoded.push_back(ds.load(i));
  const size_t plane = size_t(kSide) * kSide;  // one channel

  for (int64_t epoch : {0, 1, 4}) {
    SCOPED_TRACE("epoch " + std::to_string(epoch));
    const auto batches = run_epoch(*ds_, *store_, m, 2, epoch);
    ASSERT_EQ(batches.size(), 16u);  // 64 images * 2 crops / 8 rows
    std::vector<uint32_t> order;
    std::vector<uint8_t> hwc(plane);
    std::vector<uint8_t> scratch;
    std::vector<float> want_px(plane);
    for (const Batch& b : batches) {
      ASSERT_EQ(b.n, 8);
      ASSERT_EQ(b.c, 1);
      ASSERT_EQ(b.h, kSide);
      ASSERT_EQ(b.w, kSide);
      ASSERT_EQ(b.soft_classes, kClasses);
      ASSERT_EQ(b.soft.size(), size_t(b.n) * kClasses);
      ASSERT_EQ(b.sample.size(), size_t(b.n));
      ASSERT_EQ(b.crop.size(), size_t(b.n));
      ASSERT_EQ(b.plans.size(), size_t(b.n));
      for (int g = 0; g < b.n; g += m) {
        const uint32_t s = b.sample[size_t(g)];
        ASSERT_LT(s, ds.size());
        order.push_back(s);
        const auto want_ids = ids(kReplaySeed, s, epoch, kCrops, m);
        for (int k = 0; k < m; ++k) {
          const size_t r = size_t(g + k);
          const std::string what = "batch " + std::to_string(b.index) + " row " + std::to_string(r);
          EXPECT_EQ(b.sample[r], s) << what << ": rows of one image are not grouped";
          EXPECT_EQ(b.crop[r], want_ids[size_t(k)]) << what;
          EXPECT_EQ(b.targets[r], ds.label(s)) << what;
          CropPlan plan = expected_plan(*manifest_, s, want_ids[size_t(k)]);
          plan.id = want_ids[size_t(k)];
          expect_same_plan(b.plans[r], plan, what);
          const std::vector<float> soft(b.soft.begin() + ptrdiff_t(r) * kClasses,
                                        b.soft.begin() + ptrdiff_t(r + 1) * kClasses);
          EXPECT_EQ(soft, expected_soft(s, want_ids[size_t(k)])) << what;
          // Independent pixel replay on the whole decoded image.
          resized_crop(decoded[s], plan.box, plan.flip, kSide, kSide, t.interp, hwc.data(),
                       scratch);
          to_float_chw(hwc.data(), kSide, kSide, 1, t.norm, want_px.data());
          EXPECT_EQ(0,
                    std::memcmp(want_px.data(), b.images.get() + r * plane, plane * sizeof(float)))
              << what << ": pixels differ from the replayed crop";
        }
      }
    }
    // Every image exactly once per epoch, in a shuffled order.
    std::vector<uint32_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<uint32_t> all(ds.size());
    std::iota(all.begin(), all.end(), 0u);
    EXPECT_EQ(sorted, all);
    EXPECT_NE(order, all) << "shuffle should change the order";
  }
}

/// A dataset that decodes only the band of rows the loader asks for (as ImageFolder does for
/// JPEG), so the loader must replay crops band-relative. Counts bands that start below row 0.
class BandDataset final : public Dataset {
 public:
  explicit BandDataset(std::shared_ptr<Dataset> base) : base_(std::move(base)) {
    classes_ = base_->classes();
    channels_ = base_->channels();
    root_ = base_->root();
  }
  size_t size() const override { return base_->size(); }
  int64_t label(size_t i) const override { return base_->label(i); }
  Image load(size_t i) const override { return base_->load(i); }
  std::string item_name(size_t i) const override { return base_->item_name(i); }
  uint64_t item_bytes(size_t i) const override { return base_->item_bytes(i); }
  ImageBand load_rows(size_t i, const RowPicker& pick) const override {
    const Image full = base_->load(i);
    RowRange r = pick(full.height, full.width);
    r.begin = std::max(0, r.begin);
    r.end = std::min(full.height, r.end);
    if (r.end <= r.begin) throw ConfigError("empty band");
    ImageBand band;
    band.first_row = r.begin;
    band.full_height = full.height;
    band.image.height = r.end - r.begin;
    band.image.width = full.width;
    band.image.channels = full.channels;
    band.image.pixels.assign(full.row(r.begin), full.row(r.begin) + size_t(band.image.height) *
                                                                        full.width * full.channels);
    if (r.begin > 0) ++partial_;
    return band;
  }
  mutable std::atomic<int> partial_{0};

 private:
  std::shared_ptr<Dataset> base_;
};

TEST_F(StoreReplay, LoaderReplaysCropsOnDecodedBands) {
  auto banded = std::make_shared<BandDataset>(*ds_);
  for (int m : {1, 2}) {
    for (int64_t epoch : {0, 2}) {
      const auto plain = run_epoch(*ds_, *store_, m, 2, epoch);
      const auto band = run_epoch(banded, *store_, m, 2, epoch);
      EXPECT_TRUE(flatten(plain) == flatten(band)) << "m=" << m << " epoch=" << epoch;
      for (const Batch& b : band) {
        for (int r = 0; r < b.n; ++r) {
          EXPECT_EQ(b.heights[size_t(r)], kSide);
          EXPECT_EQ(b.widths[size_t(r)], kSide);
        }
      }
    }
  }
  EXPECT_GT(banded->partial_.load(), 10) << "the bands should not all start at row 0";
}

TEST_F(StoreReplay, LoaderIsIdenticalForAnyWorkerCount) {
  for (int m : {2, 3}) {
    const auto w0 = flatten(run_epoch(*ds_, *store_, m, 0, 3));
    const auto w1 = flatten(run_epoch(*ds_, *store_, m, 1, 3));
    const auto w3 = flatten(run_epoch(*ds_, *store_, m, 3, 3));
    ASSERT_FALSE(w0.empty());
    EXPECT_TRUE(w0 == w1) << "m=" << m << ": workers 0 vs 1";
    EXPECT_TRUE(w0 == w3) << "m=" << m << ": workers 0 vs 3";
    // Another epoch is another pass: different crops.
    EXPECT_FALSE(w0 == flatten(run_epoch(*ds_, *store_, m, 1, 4))) << "m=" << m;
  }
}

TEST_F(StoreReplay, EveryStoredCropOncePerCycleOfPasses) {
  for (int m : {2, 3, 6}) {
    SCOPED_TRACE("m=" + std::to_string(m));
    const int passes = int((kCrops + uint32_t(m) - 1) / uint32_t(m));  // ceil(N/m)
    std::map<uint32_t, std::vector<uint32_t>> seen;  // image -> crop ids over the passes
    for (int64_t epoch = 0; epoch < passes; ++epoch) {
      for (const Batch& b : run_epoch(*ds_, *store_, m, 2, epoch)) {
        for (int r = 0; r < b.n; ++r) seen[b.sample[size_t(r)]].push_back(b.crop[size_t(r)]);
      }
    }
    ASSERT_EQ(seen.size(), (*ds_)->size());
    std::vector<uint32_t> all(kCrops);
    std::iota(all.begin(), all.end(), 0u);
    for (auto& [image, crops] : seen) {
      std::sort(crops.begin(), crops.end());
      EXPECT_EQ(crops, all) << "image " << image << " did not see each of its crops once";
    }
  }
}

// --- check_store_matches ----------------------------------------------------------------

TEST_F(StoreReplay, CheckStoreMatchesNamesTheStore) {
  const Manifest mf = read_manifest(dir_->path());
  EXPECT_NO_THROW(check_store_matches(mf, dir_->path(), **ds_, "fashion-mnist", 64));
  EXPECT_NO_THROW(check_store_matches(mf, dir_->path(), *fashion(64), "fashion-mnist", 64));

  const auto ds32 = fashion(32);
  ASSERT_EQ(ds32->size(), 32u);
  try {
    check_store_matches(mf, dir_->path(), *ds32, "fashion-mnist", 32);
    ADD_FAILURE() << "a store for 64 images accepted a 32-image dataset";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(dir_->path()), std::string::npos) << msg;
    EXPECT_NE(msg.find("64"), std::string::npos) << msg;
    EXPECT_NE(msg.find("32"), std::string::npos) << msg;
  }

  // Same count, other images (fingerprint differs).
  Manifest other = mf;
  other.dataset_fingerprint = "0123456789abcdef";
  EXPECT_THROW(check_store_matches(other, dir_->path(), **ds_, "fashion-mnist", 64), ConfigError);
  // Same images, other class names.
  Manifest renamed = mf;
  renamed.classes[3] = "Gown";
  EXPECT_THROW(check_store_matches(renamed, dir_->path(), **ds_, "fashion-mnist", 64), ConfigError);
}

// --- StoreCropSource errors --------------------------------------------------------------

TEST_F(StoreReplay, SourceRejectsBadCropCounts) {
  EXPECT_THROW(StoreCropSource(*store_, 0, 1), ConfigError);
  EXPECT_THROW(StoreCropSource(*store_, -1, 1), ConfigError);
  EXPECT_THROW(StoreCropSource(*store_, int(kCrops) + 1, 1), ConfigError);
  EXPECT_NO_THROW(StoreCropSource(*store_, int(kCrops), 1));
  EXPECT_NO_THROW(StoreCropSource(*store_, 1, 1));
}

TEST(StoreReplaySize, ImageOfAnotherSizeIsDataError) {
  TempDir dir;
  const auto ds = fashion(16);
  const Manifest mf = make_manifest(*ds, 16);
  write_store(dir.path(), mf, /*wrong_image=*/5);
  auto store = std::make_shared<const StoreReader>(dir.path());
  StoreCropSource source(store, 2, kReplaySeed);
  std::vector<CropPlan> plans(2);
  std::vector<float> soft(2 * kClasses);
  EXPECT_THROW(source.crops(5, 0, kSide, kSide, plans.data(), soft.data()), DataError);
  EXPECT_THROW(source.crops(5, 3, kSide, kSide, plans.data(), nullptr), DataError);
  // The size the store recorded is accepted; other images are fine at their real size.
  EXPECT_NO_THROW(source.crops(5, 0, 30, kSide, plans.data(), soft.data()));
  EXPECT_NO_THROW(source.crops(4, 0, kSide, kSide, plans.data(), soft.data()));
  EXPECT_NO_THROW(source.crops(6, 0, kSide, kSide, plans.data(), soft.data()));
  EXPECT_THROW(source.crops(4, 0, kSide + 1, kSide, plans.data(), soft.data()), DataError);
  EXPECT_THROW(source.crops(4, 0, kSide, kSide - 1, plans.data(), soft.data()), DataError);

  // In the loader: fatal when strict, otherwise that image is skipped and the rest trains.
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  o.strict = true;
  {
    Loader strict(ds, transform28(), std::make_shared<StoreCropSource>(store, 2, kReplaySeed), o);
    strict.start_epoch(0);
    Batch b;
    EXPECT_THROW(
        {
          while (strict.next(b)) {
          }
        },
        DataError);
  }
  o.strict = false;
  Loader lenient(ds, transform28(), std::make_shared<StoreCropSource>(store, 2, kReplaySeed), o);
  lenient.start_epoch(0);
  Batch b;
  std::set<uint32_t> samples;
  size_t rows = 0;
  while (lenient.next(b)) {
    ASSERT_EQ(b.soft.size(), size_t(b.n) * kClasses);
    for (int r = 0; r < b.n; ++r) {
      samples.insert(b.sample[size_t(r)]);
      const auto want = expected_soft(b.sample[size_t(r)], b.crop[size_t(r)]);
      EXPECT_EQ(std::vector<float>(b.soft.begin() + ptrdiff_t(r) * kClasses,
                                   b.soft.begin() + ptrdiff_t(r + 1) * kClasses),
                want)
          << "row " << r << " of batch " << b.index << " (soft labels shifted by the skip?)";
    }
    rows += size_t(b.n);
  }
  EXPECT_EQ(lenient.skipped(), 1u);
  EXPECT_EQ(samples.count(5u), 0u);
  EXPECT_EQ(samples.size(), 15u);
  EXPECT_EQ(rows, 30u);
}

}  // namespace
}  // namespace fkd
