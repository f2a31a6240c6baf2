// The loader's work and memory, counted: each image is decoded and planned once per epoch
// whatever the crops per image, and batch buffers are recycled instead of allocated per
// batch; and the malloc settings every program built on the library runs with. Counts, not times:
// these fail when the multi-crop path repeats per-image work for every crop, or when every batch
// goes to fresh memory again.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fkd/allocator.h"
#include "fkd/dataset.h"
#include "fkd/loader.h"
#include "fkd/transforms.h"
#include "testutil.h"

using namespace fkd;
using fkd::test::TempDir;

namespace {

/// A dataset that counts, per sample, the decodes asked of it.
class CountingDataset final : public Dataset {
 public:
  explicit CountingDataset(std::shared_ptr<Dataset> base)
      : base_(std::move(base)), decodes_(base_->size()) {
    classes_ = base_->classes();
    channels_ = base_->channels();
    root_ = base_->root();
  }
  size_t size() const override { return base_->size(); }
  int64_t label(size_t i) const override { return base_->label(i); }
  Image load(size_t i) const override {
    ++decodes_[i];
    return base_->load(i);
  }
  ImageBand load_rows(size_t i, const RowPicker& pick) const override {
    ++decodes_[i];
    return base_->load_rows(i, pick);
  }
  std::string item_name(size_t i) const override { return base_->item_name(i); }
  uint64_t item_bytes(size_t i) const override { return base_->item_bytes(i); }
  int decodes(size_t i) const { return decodes_[i].load(); }

 private:
  std::shared_ptr<Dataset> base_;
  mutable std::vector<std::atomic<int>> decodes_;
};

/// A crop source that counts, per sample, how often it is asked for an image's crops.
class CountingCropSource final : public CropSource {
 public:
  CountingCropSource(std::shared_ptr<const CropSource> base, size_t samples)
      : base_(std::move(base)), calls_(samples) {}
  int crops_per_image() const override { return base_->crops_per_image(); }
  void crops(size_t index, int64_t epoch, int height, int width, CropPlan* out,
             float* soft) const override {
    ++calls_[index];
    base_->crops(index, epoch, height, width, out, soft);
  }
  int calls(size_t i) const { return calls_[i].load(); }

 private:
  std::shared_ptr<const CropSource> base_;
  mutable std::vector<std::atomic<int>> calls_;
};

std::shared_ptr<Dataset> idx_dataset(const TempDir& d, int n) {
  fkd::test::write_idx_split(d.path(), "train", n, 20, 24, 5);
  return open_dataset(d.path(), Split::kTrain);
}

TrainTransform small_transform() {
  TrainTransform t;
  t.crop.size = 12;
  t.crop.scale[0] = 0.3f;
  return t;
}

/// Drains one epoch; returns its rows.
size_t drain(Loader& loader, int64_t epoch) {
  loader.start_epoch(epoch);
  Batch b;
  size_t rows = 0;
  while (loader.next(b)) rows += size_t(b.n);
  return rows;
}

}  // namespace

TEST(LoaderWork, EachImageIsDecodedAndPlannedOncePerEpochForAnyCropCount) {
  TempDir d;
  constexpr int kImages = 30, kEpochs = 2;
  auto base = idx_dataset(d, kImages);
  const TrainTransform t = small_transform();
  for (int m : {1, 2, 4}) {
    for (int workers : {0, 2}) {
      auto ds = std::make_shared<CountingDataset>(base);
      auto source = std::make_shared<CountingCropSource>(
          std::make_shared<RandomCropSource>(t, 7, m), ds->size());
      LoaderOptions o;
      o.batch_size = size_t(4 * m);
      o.workers = workers;
      Loader loader(ds, t, source, o);
      for (int e = 0; e < kEpochs; ++e) EXPECT_EQ(drain(loader, e), size_t(kImages * m));
      for (size_t i = 0; i < ds->size(); ++i) {
        ASSERT_EQ(ds->decodes(i), kEpochs) << "m " << m << " workers " << workers << " image " << i;
        ASSERT_EQ(source->calls(i), kEpochs)
            << "m " << m << " workers " << workers << " image " << i;
      }
    }
  }
}

TEST(LoaderWork, EvalDecodesEachImageOnce) {
  TempDir d;
  auto ds = std::make_shared<CountingDataset>(idx_dataset(d, 13));
  EvalTransform t;
  t.resize = 16;
  t.size = 12;
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = false;
  o.workers = 2;
  Loader loader(ds, t, o);
  EXPECT_EQ(drain(loader, 0), 13u);
  for (size_t i = 0; i < ds->size(); ++i) EXPECT_EQ(ds->decodes(i), 1) << i;
}

TEST(LoaderBuffers, BatchBuffersAreRecycledNotAllocatedPerBatch) {
  TempDir d;
  auto ds = idx_dataset(d, 64);
  const TrainTransform t = small_transform();
  for (int workers : {0, 1, 3}) {
    for (int m : {1, 4}) {
      LoaderOptions o;
      o.batch_size = size_t(4 * m);  // 16 batches per epoch
      o.workers = workers;
      o.prefetch = 2;
      Loader loader(ds, t, std::make_shared<RandomCropSource>(t, 3, m), o);
      for (int e = 0; e < 3; ++e) drain(loader, e);
      // 48 batches; at most the window (prefetch, raised to the workers) plus the consumer's
      // batch live at once.
      EXPECT_GE(loader.buffers_allocated(), 1u);
      EXPECT_LE(loader.buffers_allocated(), size_t(std::max(o.prefetch, workers)) + 1)
          << "workers " << workers << " m " << m;
    }
  }
}

TEST(LoaderBuffers, HeldBatchesKeepTheirPixels) {
  TempDir d;
  auto ds = idx_dataset(d, 40);
  const TrainTransform t = small_transform();
  LoaderOptions o;
  o.batch_size = 8;
  o.workers = 2;
  o.prefetch = 2;
  auto loader = std::make_unique<Loader>(ds, t, std::make_shared<RandomCropSource>(t, 5, 2), o);
  const size_t plane = size_t(ds->channels()) * 12 * 12;

  // Epoch 0 read and copied batch by batch: the reference pixels.
  std::vector<std::vector<float>> want;
  loader->start_epoch(0);
  Batch b;
  while (loader->next(b)) want.emplace_back(b.images.get(), b.images.get() + b.n * plane);
  const size_t recycled = loader->buffers_allocated();

  // The same epoch again, every batch held: no buffer may be handed out twice.
  std::vector<Batch> held;
  loader->start_epoch(0);
  while (loader->next(b)) held.push_back(b);
  ASSERT_EQ(held.size(), want.size());
  EXPECT_GE(loader->buffers_allocated(), held.size());
  EXPECT_GT(held.size(), recycled);

  // A batch outlives its loader.
  loader.reset();
  for (size_t k = 0; k < held.size(); ++k) {
    const std::vector<float> got(held[k].images.get(), held[k].images.get() + held[k].n * plane);
    EXPECT_EQ(got, want[k]) << "batch " << k;
  }
}

TEST(LoaderPixels, Uint8BatchesHoldTheCropsTheFloatBatchesNormalize) {
  TempDir d;
  auto ds = idx_dataset(d, 24);
  TrainTransform t = small_transform();
  t.norm = Normalize{{0.3f, 0.3f, 0.3f}, {0.2f, 0.2f, 0.2f}};
  std::atomic<int> live{0}, allocations{0};
  LoaderOptions fo;
  fo.batch_size = 8;
  fo.workers = 2;
  LoaderOptions uo = fo;
  uo.uint8_nhwc = true;
  // A caller-supplied allocator (what pinned memory for a GPU plugs into) serves the buffers.
  uo.host_memory.allocate = [&](size_t bytes) {
    ++live;
    ++allocations;
    return std::malloc(bytes);
  };
  uo.host_memory.release = [&](void* p) {
    --live;
    std::free(p);
  };
  {
    auto src = std::make_shared<RandomCropSource>(t, 11, 2);
    Loader fl(ds, t, src, fo), ul(ds, t, src, uo);
    const ChwConverter chw(t.norm, ds->channels());
    const size_t px = 12 * 12 * size_t(ds->channels());
    for (int e = 0; e < 2; ++e) {
      fl.start_epoch(e);
      ul.start_epoch(e);
      Batch fb, ub;
      while (fl.next(fb)) {
        ASSERT_TRUE(ul.next(ub));
        ASSERT_EQ(ub.n, fb.n);
        EXPECT_FALSE(ub.images);
        ASSERT_TRUE(ub.pixels);
        EXPECT_EQ(ub.norm.mean[0], 0.3f);
        EXPECT_EQ(ub.plans.size(), fb.plans.size());
        std::vector<float> got(px);
        for (int r = 0; r < ub.n; ++r) {
          chw.convert(ub.pixels.get() + size_t(r) * px, 12, 12, got.data());
          ASSERT_EQ(0,
                    std::memcmp(got.data(), fb.images.get() + size_t(r) * px, px * sizeof(float)))
              << "epoch " << e << " batch " << fb.index << " row " << r;
        }
      }
      EXPECT_FALSE(ul.next(ub));
    }
    EXPECT_GE(allocations.load(), 1);
  }
  EXPECT_EQ(live.load(), 0);  // every buffer went back through release
}

TEST(Malloc, ConfiguredOnceWithFkdsThresholdsUnlessTunablesSayOtherwise) {
  const MallocConfig& c = configure_malloc();
  EXPECT_EQ(&c, &configure_malloc());
  EXPECT_FALSE(c.description.empty());
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer's allocator stands in for glibc's and ignores mallopt: the
  // configuration must say so rather than claim thresholds it could not set.
  EXPECT_FALSE(c.tuned);
  EXPECT_NE(c.description.find("not accepted"), std::string::npos) << c.description;
#elif defined(__GLIBC__)
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && std::strstr(tunables, "glibc.malloc.")) {
    EXPECT_FALSE(c.tuned);
    EXPECT_NE(c.description.find(tunables), std::string::npos) << c.description;
  } else {
    EXPECT_TRUE(c.tuned) << c.description;
    EXPECT_EQ(c.mmap_threshold, size_t(32) << 20);
    EXPECT_EQ(c.trim_threshold, size_t(1) << 30);
  }
#endif
}

// --- data parallelism: slices of one global batch ----------------------------------------

namespace {

/// Everything of one batch that training depends on: per row, the sample, its crop, its box
/// and flip, its class and its pixels.
struct Rows {
  std::vector<uint32_t> sample, crop;
  std::vector<int> boxes;
  std::vector<int64_t> targets;
  std::vector<float> pixels;
  int global_n = 0;
  void append(const Batch& b) {
    sample.insert(sample.end(), b.sample.begin(), b.sample.end());
    crop.insert(crop.end(), b.crop.begin(), b.crop.end());
    for (const CropPlan& p : b.plans)
      boxes.insert(boxes.end(), {p.box.left, p.box.top, p.box.width, p.box.height, int(p.flip)});
    targets.insert(targets.end(), b.targets.begin(), b.targets.end());
    const size_t plane = size_t(b.c) * b.h * b.w;
    pixels.insert(pixels.end(), b.images.get(), b.images.get() + size_t(b.n) * plane);
    global_n = b.global_n;
  }
};

std::vector<Rows> epoch_rows(std::shared_ptr<const Dataset> ds, const TrainTransform& t, int m,
                             int rank, int world) {
  LoaderOptions o;
  o.batch_size = size_t(4 * m);  // 4 images a batch
  o.seed = 11;
  o.workers = 2;
  o.rank = rank;
  o.world = world;
  Loader loader(ds, t, std::make_shared<RandomCropSource>(t, 5, m), o);
  loader.start_epoch(3);
  std::vector<Rows> out;
  Batch b;
  while (loader.next(b)) {
    out.emplace_back();
    out.back().append(b);
  }
  return out;
}

}  // namespace

TEST(LoaderSlices, RanksTileTheBatchesOfOneProcess) {
  // The global batch at step s holds the same samples, crops and pixels for any number of
  // ranks: rank r takes its contiguous slice, and the slices in rank order make the batch.
  // 13 images in batches of 4: the last batch (1 image) leaves some ranks nothing.
  TempDir d;
  const auto ds = idx_dataset(d, 13);
  TrainTransform t = small_transform();
  for (int m : {1, 2}) {
    const std::vector<Rows> one = epoch_rows(ds, t, m, 0, 1);
    ASSERT_EQ(one.size(), 4u);
    for (int world : {2, 3, 4}) {
      std::vector<Rows> joined(one.size());
      for (int rank = 0; rank < world; ++rank) {
        const std::vector<Rows> part = epoch_rows(ds, t, m, rank, world);
        ASSERT_EQ(part.size(), one.size()) << "every rank runs every step";
        for (size_t s = 0; s < part.size(); ++s) {
          EXPECT_EQ(part[s].global_n, one[s].global_n);
          Rows& j = joined[s];
          j.sample.insert(j.sample.end(), part[s].sample.begin(), part[s].sample.end());
          j.crop.insert(j.crop.end(), part[s].crop.begin(), part[s].crop.end());
          j.boxes.insert(j.boxes.end(), part[s].boxes.begin(), part[s].boxes.end());
          j.targets.insert(j.targets.end(), part[s].targets.begin(), part[s].targets.end());
          j.pixels.insert(j.pixels.end(), part[s].pixels.begin(), part[s].pixels.end());
        }
      }
      for (size_t s = 0; s < one.size(); ++s) {
        EXPECT_EQ(joined[s].sample, one[s].sample)
            << "m " << m << " world " << world << " step " << s;
        EXPECT_EQ(joined[s].crop, one[s].crop);
        EXPECT_EQ(joined[s].boxes, one[s].boxes);
        EXPECT_EQ(joined[s].targets, one[s].targets);
        EXPECT_EQ(joined[s].pixels, one[s].pixels);
      }
    }
  }
  EXPECT_EQ(slice_of(10, 0, 4), (std::pair<size_t, size_t>{0, 2}));
  EXPECT_EQ(slice_of(10, 3, 4), (std::pair<size_t, size_t>{7, 10}));
  EXPECT_EQ(slice_of(1, 0, 2), (std::pair<size_t, size_t>{0, 0}));
}
