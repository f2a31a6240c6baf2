// Datasets (IDX, ImageFolder), crop sampling and the loader.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>
#include <tuple>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/loader.h"
#include "fkd/transforms.h"
#include "testutil.h"

namespace fs = std::filesystem;
using namespace fkd;
using fkd::test::TempDir;

namespace {

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }

/// Writes an IDX pair for `split` ("train"/"t10k"): image k has every pixel = (k*7+c) & 255
/// varying by column so crops are distinguishable; label = k % classes.
void write_idx(const std::string& dir, const std::string& split, int n, int rows, int cols,
               int classes, bool gz) {
  std::string img = be32(0x803) + be32(n) + be32(rows) + be32(cols);
  std::string lab = be32(0x801) + be32(n);
  for (int k = 0; k < n; ++k) {
    for (int y = 0; y < rows; ++y)
      for (int x = 0; x < cols; ++x) img += char((k * 7 + x * 3 + y * 11) & 255);
    lab += char(k % classes);
  }
  auto put = [&](const std::string& name, const std::string& bytes) {
    if (!gz) return fkd::test::write_file(dir + "/" + name, bytes);
    gzFile f = gzopen((dir + "/" + name + ".gz").c_str(), "wb");
    gzwrite(f, bytes.data(), unsigned(bytes.size()));
    gzclose(f);
  };
  put(split + "-images-idx3-ubyte", img);
  put(split + "-labels-idx1-ubyte", lab);
}

}  // namespace

TEST(Idx, ReadsPlainAndGzip) {
  for (bool gz : {false, true}) {
    TempDir d;
    write_idx(d.path(), "train", 12, 5, 4, 3, gz);
    write_idx(d.path(), "t10k", 6, 5, 4, 3, gz);
    auto ds = open_dataset(d.path(), Split::kTrain);
    ASSERT_EQ(ds->size(), 12u);
    EXPECT_EQ(ds->classes().size(), 3u);
    EXPECT_EQ(ds->channels(), 1);
    EXPECT_EQ(ds->label(4), 1);
    const Image im = ds->load(2);
    EXPECT_EQ(im.height, 5);
    EXPECT_EQ(im.width, 4);
    EXPECT_EQ(im.pixels[1 * 4 + 3], uint8_t((2 * 7 + 3 * 3 + 1 * 11) & 255));
    EXPECT_EQ(open_dataset(d.path(), Split::kVal)->size(), 6u);
  }
}

TEST(Idx, RgbReplicatesGray) {
  TempDir d;
  write_idx(d.path(), "train", 2, 3, 3, 2, false);
  DatasetOptions o;
  o.channels = 3;
  const Image im = open_dataset(d.path(), Split::kTrain, o)->load(1);
  ASSERT_EQ(im.channels, 3);
  EXPECT_EQ(im.pixels[3 * 4 + 0], im.pixels[3 * 4 + 2]);
  EXPECT_EQ(im.pixels[3 * 4 + 0], uint8_t((7 + 1 * 3 + 1 * 11) & 255));
}

TEST(Idx, CorruptInputsAreClearErrors) {
  TempDir d;
  write_idx(d.path(), "train", 4, 3, 3, 2, false);
  const std::string img = d.file("train-images-idx3-ubyte");
  std::string bytes = fkd::test::read_file(img);
  // Truncated pixels.
  fkd::test::write_file(img, bytes.substr(0, bytes.size() - 5));
  auto msg = fkd::test::error_message<FormatError>([&] { open_dataset(d.path(), Split::kTrain); });
  EXPECT_NE(msg.find("train-images-idx3-ubyte"), std::string::npos) << msg;
  EXPECT_NE(msg.find("holds"), std::string::npos) << msg;
  // Bad magic.
  bytes[3] = 0x01;
  fkd::test::write_file(img, bytes);
  msg = fkd::test::error_message<FormatError>([&] { open_dataset(d.path(), Split::kTrain); });
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;
  // Empty file.
  fkd::test::write_file(img, "");
  fkd::test::error_message<FormatError>([&] { open_dataset(d.path(), Split::kTrain); });
  // Missing split files.
  msg = fkd::test::error_message<DataError>([&] { open_dataset(d.path(), Split::kVal); });
  EXPECT_NE(msg.find("t10k-images-idx3-ubyte"), std::string::npos) << msg;
}

TEST(Idx, CorruptGzipIsDataError) {
  TempDir d;
  write_idx(d.path(), "train", 50, 8, 8, 2, true);
  const std::string gz = d.file("train-images-idx3-ubyte.gz");
  std::string bytes = fkd::test::read_file(gz);
  fkd::test::write_file(gz, bytes.substr(0, bytes.size() / 2));
  const auto msg =
      fkd::test::error_message<DataError>([&] { open_dataset(d.path(), Split::kTrain); });
  EXPECT_NE(msg.find(".gz"), std::string::npos) << msg;
}

TEST(FashionMnist, EmbeddedDatasetOpens) {
  auto train = open_dataset("fashion-mnist", Split::kTrain);
  auto val = open_dataset("fashion-mnist", Split::kVal);
  EXPECT_EQ(train->size(), 60000u);
  EXPECT_EQ(val->size(), 10000u);
  EXPECT_EQ(train->classes(), fashion_mnist_classes());
  const Image im = val->load(0);
  EXPECT_EQ(im.height, 28);
  EXPECT_EQ(val->label(0), 9);  // the first test image is an ankle boot
}

TEST(Dataset, SubsetIsEveryKth) {
  DatasetOptions o;
  o.limit = 100;
  auto sub = open_dataset("fashion-mnist", Split::kVal, o);
  auto full = open_dataset("fashion-mnist", Split::kVal);
  ASSERT_EQ(sub->size(), 100u);
  EXPECT_EQ(sub->item_name(3), full->item_name(300));
  EXPECT_EQ(sub->label(3), full->label(300));
}

TEST(ImageFolder, OrderMatchesTorchvision) {
  TempDir d;
  const auto r = fkd::test::run_python("data_make_folder.py", {d.path()});
  ASSERT_EQ(r.status, 0);
  auto ds = open_dataset(d.path(), Split::kTrain);
  EXPECT_EQ(ds->classes(), (std::vector<std::string>{"bird", "cat", "dog"}));
  EXPECT_EQ(ds->channels(), 3);
  std::istringstream lines(r.out);
  size_t i, n = 0;
  int64_t label;
  std::string rel;
  while (lines >> i >> label >> rel) {
    ASSERT_LT(i, ds->size());
    EXPECT_EQ(ds->item_name(i), rel);
    EXPECT_EQ(ds->label(i), label);
    ++n;
  }
  EXPECT_EQ(n, ds->size());
  EXPECT_EQ(n, 15u);
  const Image im = ds->load(0);
  EXPECT_EQ(im.channels, 3);
  EXPECT_GT(im.height, 0);
}

TEST(ImageFolder, StructuralErrorsBeforeWork) {
  TempDir d;
  fs::create_directories(d.file("train/a"));
  fs::create_directories(d.file("train/b"));
  fkd::test::write_file(d.file("train/a/x.png"), "not really a png");
  auto msg = fkd::test::error_message<DataError>([&] { open_dataset(d.path(), Split::kTrain); });
  EXPECT_NE(msg.find("train/b"), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty class folder"), std::string::npos) << msg;
  msg = fkd::test::error_message<DataError>([&] { open_dataset(d.path(), Split::kVal); });
  EXPECT_NE(msg.find("missing split folder 'val'"), std::string::npos) << msg;
  // A folder that does not exist: an IoError that says it is not found.
  msg =
      fkd::test::error_message<NotFoundError>([&] { open_dataset(d.file("nope"), Split::kTrain); });
  EXPECT_NE(msg.find("nope: no such dataset directory"), std::string::npos) << msg;
  // The split folder itself (what torchvision's ImageFolder is given) is named as such.
  msg = fkd::test::error_message<DataError>([&] { open_dataset(d.file("train"), Split::kTrain); });
  EXPECT_NE(msg.find("is a split, not a dataset root: pass its parent"), std::string::npos) << msg;
}

TEST(RandomResizedCrop, StaysWithinBounds) {
  const float scale[2] = {0.08f, 1.0f}, ratio[2] = {3.f / 4, 4.f / 3};
  int fallbacks = 0;
  for (int t = 0; t < 20000; ++t) {
    Rng rng(42, RngStream::kAugment, {uint64_t(t)});
    const int H = 20 + t % 500, W = 20 + (t * 7) % 700;
    const PixelBox b = sample_random_resized_crop(rng, H, W, scale, ratio);
    ASSERT_GE(b.left, 0);
    ASSERT_GE(b.top, 0);
    ASSERT_LE(b.left + b.width, W);
    ASSERT_LE(b.top + b.height, H);
    ASSERT_GT(b.width, 0);
    ASSERT_GT(b.height, 0);
    const bool centred = b.left == (W - b.width) / 2 && b.top == (H - b.height) / 2 &&
                         (b.width == W || b.height == H);
    if (centred) {
      ++fallbacks;
      continue;
    }
    // Rounding w and h to integers moves area and ratio slightly: allow one pixel each way.
    const double area_hi = double(b.width + 1) * (b.height + 1) / (double(H) * W);
    const double area_lo = double(b.width - 1) * (b.height - 1) / (double(H) * W);
    ASSERT_GE(area_hi, scale[0]) << H << "x" << W;
    ASSERT_LE(area_lo, scale[1]);
    ASSERT_GE(double(b.width + 1) / std::max(1, b.height - 1), ratio[0]);
    ASSERT_LE(double(b.width - 1) / (b.height + 1), ratio[1]);
  }
  EXPECT_LT(fallbacks, 20000 / 10);
}

TEST(RandomResizedCrop, FallbackIsCentredAndClamped) {
  // A 10x1000 strip: no crop with ratio in [3/4, 4/3] of >= 8% area fits, so the centre
  // crop clamped to ratio 4/3 is returned: h = 10, w = round(10 * 4/3) = 13.
  const float scale[2] = {0.5f, 1.0f}, ratio[2] = {3.f / 4, 4.f / 3};
  Rng rng(1);
  const PixelBox b = sample_random_resized_crop(rng, 10, 1000, scale, ratio);
  EXPECT_EQ(b.height, 10);
  EXPECT_EQ(b.width, 13);
  EXPECT_EQ(b.left, (1000 - 13) / 2);
  EXPECT_EQ(b.top, 0);
}

TEST(RandomResizedCrop, DistributionMatchesTorchvision) {
  // torchvision's get_params is the oracle: same mean area fraction and aspect ratio,
  // including the bias its rejection loop and fallback introduce on elongated images.
  const float scale[2] = {0.08f, 1.0f}, ratio[2] = {3.f / 4, 4.f / 3};
  for (auto [H, W] : {std::pair<int, int>{375, 500}, {100, 400}}) {
    const auto r =
        fkd::test::run_python("data_rrc_stats.py", {std::to_string(H), std::to_string(W), "30000"});
    ASSERT_EQ(r.status, 0);
    std::istringstream in(r.out);
    double tv_area, tv_ratio, tv_full;
    ASSERT_TRUE(in >> tv_area >> tv_ratio >> tv_full) << r.out;
    double area = 0, aspect = 0;
    const int n = 200000;
    for (int t = 0; t < n; ++t) {
      Rng rng(3, RngStream::kAugment, {uint64_t(t)});
      const PixelBox b = sample_random_resized_crop(rng, H, W, scale, ratio);
      area += double(b.width) * b.height / (double(H) * W);
      aspect += double(b.width) / b.height;
    }
    // Python's 30k samples have a standard error of ~0.0016 on the mean area.
    EXPECT_NEAR(area / n, tv_area, 0.008) << H << "x" << W;
    EXPECT_NEAR(aspect / n, tv_ratio, 0.01) << H << "x" << W;
  }
}

TEST(PaddedCrop, UniformOverPaddedImage) {
  std::set<std::pair<int, int>> seen;
  for (int t = 0; t < 5000; ++t) {
    Rng rng(5, RngStream::kAugment, {uint64_t(t)});
    const PixelBox b = sample_padded_crop(rng, 28, 28, 28, 28, 4);
    ASSERT_GE(b.left, -4);
    ASSERT_LE(b.left, 4);
    ASSERT_GE(b.top, -4);
    ASSERT_LE(b.top, 4);
    seen.insert({b.left, b.top});
  }
  EXPECT_EQ(seen.size(), 81u);  // all 9 x 9 offsets occur
}

namespace {

std::vector<std::vector<float>> run_epoch(const std::shared_ptr<Dataset>& ds, int workers,
                                          int64_t epoch, std::vector<int64_t>* targets) {
  TrainTransform t;
  t.crop.kind = CropKind::kRandomResized;
  t.crop.size = 12;
  t.norm = Normalize{};
  LoaderOptions o;
  o.batch_size = 8;
  o.seed = 99;
  o.workers = workers;
  o.prefetch = 3;
  Loader loader(ds, t, std::make_shared<RandomCropSource>(t, 99), o);
  loader.start_epoch(epoch);
  std::vector<std::vector<float>> out;
  Batch b;
  int64_t expect_index = 0;
  while (loader.next(b)) {
    EXPECT_EQ(b.index, expect_index++);
    out.emplace_back(b.images.get(), b.images.get() + size_t(b.n) * b.c * b.h * b.w);
    for (auto y : b.targets) targets->push_back(y);
  }
  EXPECT_EQ(size_t(expect_index), loader.num_batches());
  return out;
}

}  // namespace

TEST(Loader, DeterministicForAnyThreadCount) {
  TempDir d;
  write_idx(d.path(), "train", 61, 16, 20, 4, false);
  auto ds = open_dataset(d.path(), Split::kTrain);
  std::vector<int64_t> t0, t1, t2, t4;
  const auto b0 = run_epoch(ds, 0, 3, &t0);
  const auto b1 = run_epoch(ds, 1, 3, &t1);
  const auto b2 = run_epoch(ds, 2, 3, &t2);
  const auto b4 = run_epoch(ds, 4, 3, &t4);
  ASSERT_EQ(b0.size(), 8u);  // ceil(61 / 8)
  EXPECT_EQ(b0, b1);
  EXPECT_EQ(b1, b2);
  EXPECT_EQ(b1, b4);
  EXPECT_EQ(t1, t4);
  EXPECT_EQ(t1.size(), 61u);
  // Another epoch shuffles differently.
  std::vector<int64_t> t_other;
  EXPECT_NE(run_epoch(ds, 2, 4, &t_other), b2);
}

TEST(Loader, EpochVisitsEverySampleOnce) {
  TempDir d;
  write_idx(d.path(), "train", 37, 4, 4, 37, false);  // label = index
  auto ds = open_dataset(d.path(), Split::kTrain);
  std::vector<int64_t> targets;
  run_epoch(ds, 2, 0, &targets);
  std::set<int64_t> s(targets.begin(), targets.end());
  EXPECT_EQ(s.size(), 37u);
  EXPECT_NE(targets, [] {
    std::vector<int64_t> v(37);
    for (int i = 0; i < 37; ++i) v[size_t(i)] = i;
    return v;
  }()) << "shuffle should change the order";
}

TEST(Loader, MultiCropGroupsRowsByImage) {
  TempDir d;
  write_idx(d.path(), "train", 10, 16, 16, 10, false);
  auto ds = open_dataset(d.path(), Split::kTrain);
  TrainTransform t;
  t.crop.size = 8;
  LoaderOptions o;
  o.batch_size = 8;
  o.workers = 2;
  Loader loader(ds, t, std::make_shared<RandomCropSource>(t, 1, /*per_image=*/4), o);
  loader.start_epoch(0);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  ASSERT_EQ(b.n, 8);
  EXPECT_EQ(b.sample[0], b.sample[3]);
  EXPECT_NE(b.sample[3], b.sample[4]);
  EXPECT_EQ(b.crop[2], 2);
  // Different crops of one image differ.
  EXPECT_FALSE(b.plans[0].box.left == b.plans[1].box.left &&
               b.plans[0].box.top == b.plans[1].box.top &&
               b.plans[0].box.width == b.plans[1].box.width);
}

TEST(Loader, BadImagesAreSkippedOrFatal) {
  TempDir d;
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {d.path()}).status, 0);
  auto ds0 = open_dataset(d.path(), Split::kTrain);
  const std::string victim = ds0->item_name(4);
  {  // truncate one image
    const std::string p = d.file(victim);
    const std::string bytes = fkd::test::read_file(p);
    fkd::test::write_file(p, bytes.substr(0, bytes.size() / 2));
  }
  auto ds = open_dataset(d.path(), Split::kTrain);
  TrainTransform t;
  t.crop.size = 8;
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  Loader loader(ds, t, std::make_shared<RandomCropSource>(t, 1), o);
  for (int epoch = 0; epoch < 2; ++epoch) {
    loader.start_epoch(epoch);
    Batch b;
    size_t rows = 0;
    while (loader.next(b)) rows += size_t(b.n);
    EXPECT_EQ(rows, ds->size() - 1);
  }
  EXPECT_EQ(loader.skipped(), 1u);  // counted once, not once per epoch
  ASSERT_EQ(loader.bad_samples().size(), 1u);
  EXPECT_EQ(loader.bad_samples()[0].name, victim);
  EXPECT_NE(loader.bad_samples()[0].error.find(victim), std::string::npos);

  o.strict = true;
  Loader strict(ds, t, std::make_shared<RandomCropSource>(t, 1), o);
  strict.start_epoch(0);
  Batch b;
  const auto msg = fkd::test::error_message<DataError>([&] {
    while (strict.next(b)) {
    }
  });
  EXPECT_NE(msg.find(victim), std::string::npos) << msg;
}

TEST(Loader, EvalIsCentreCropInOrder) {
  TempDir d;
  write_idx(d.path(), "train", 5, 10, 10, 5, false);
  auto ds = open_dataset(d.path(), Split::kTrain);
  EvalTransform t;
  t.resize = 0;
  t.size = 10;
  t.norm.mean[0] = 0;
  t.norm.std[0] = 1;
  LoaderOptions o;
  o.batch_size = 2;
  o.shuffle = false;
  Loader loader(ds, t, o);
  loader.start_epoch(0);
  Batch b;
  std::vector<int64_t> targets;
  while (loader.next(b)) {
    for (int r = 0; r < b.n; ++r) {
      const Image im = ds->load(b.sample[size_t(r)]);
      for (int k = 0; k < 100; ++k) {
        ASSERT_FLOAT_EQ(b.images[size_t(r) * 100 + size_t(k)], im.pixels[size_t(k)] / 255.f);
      }
    }
    targets.insert(targets.end(), b.targets.begin(), b.targets.end());
  }
  EXPECT_EQ(targets, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(PortableMath, MatchesLibm) {
  for (double x = -20; x <= 20; x += 0.0137) {
    EXPECT_NEAR(portable_exp(x), std::exp(x), 1e-15 * std::exp(x)) << x;
  }
  for (double x = 1e-6; x < 1e6; x *= 1.37) {
    EXPECT_NEAR(portable_log(x), std::log(x), 1e-15 * std::max(1.0, std::fabs(std::log(x)))) << x;
  }
  EXPECT_EQ(portable_log(1.0), 0.0);
  EXPECT_EQ(portable_exp(0.0), 1.0);
}

TEST(LabelCrops, DerivedCropsArePureAndVaried) {
  CropSampler rrc;
  rrc.kind = CropKind::kRandomResized;
  const CropPlan a = derive_label_crop(rrc, 7, 12, 3, 375, 500);
  const CropPlan b = derive_label_crop(rrc, 7, 12, 3, 375, 500);
  EXPECT_EQ(a.box.left, b.box.left);
  EXPECT_EQ(a.box.top, b.box.top);
  EXPECT_EQ(a.box.width, b.box.width);
  EXPECT_EQ(a.box.height, b.box.height);
  EXPECT_EQ(a.flip, b.flip);
  int flips = 0;
  std::set<std::tuple<int, int, int, int>> boxes;
  for (uint32_t c = 0; c < 1000; ++c) {
    const CropPlan p = derive_label_crop(rrc, 7, 12, c, 375, 500);
    flips += p.flip;
    boxes.insert({p.box.left, p.box.top, p.box.width, p.box.height});
  }
  EXPECT_GT(boxes.size(), 990u);
  EXPECT_NEAR(flips, 500, 80);
  // Another seed or image gives other crops.
  const CropPlan c = derive_label_crop(rrc, 8, 12, 3, 375, 500);
  const CropPlan d = derive_label_crop(rrc, 7, 13, 3, 375, 500);
  EXPECT_FALSE(c.box.left == a.box.left && c.box.top == a.box.top && c.box.width == a.box.width);
  EXPECT_FALSE(d.box.left == a.box.left && d.box.top == a.box.top && d.box.width == a.box.width);
}

TEST(LabelCrops, GoldenValuesPinTheSampler) {
  // Stores written by any fkd build must replay identically: these boxes are part of the
  // label-store format (docs/label-store.md). Changing them is a format version bump.
  CropSampler rrc;
  rrc.kind = CropKind::kRandomResized;
  const CropPlan p = derive_label_crop(rrc, 0, 0, 0, 375, 500);
  const CropPlan q = derive_label_crop(rrc, 42, 1000, 499, 28, 28);
  EXPECT_EQ((std::vector<int>{p.box.left, p.box.top, p.box.width, p.box.height, int(p.flip)}),
            (std::vector<int>{14, 192, 147, 122, 1}));
  EXPECT_EQ((std::vector<int>{q.box.left, q.box.top, q.box.width, q.box.height, int(q.flip)}),
            (std::vector<int>{9, 3, 13, 16, 1}));
}

TEST(ImageFolder, FindUnreadableImagesListsEveryBadOneInOrder) {
  TempDir d;
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {d.path()}).status, 0);
  auto ds = open_dataset(d.path(), Split::kTrain);
  // Damage two files: one truncated, one not an image at all.
  const std::string a = d.path() + "/" + ds->item_name(3), b = d.path() + "/" + ds->item_name(11);
  const std::string bytes = fkd::test::read_file(a);
  fkd::test::write_file(a, bytes.substr(0, bytes.size() / 3));
  fkd::test::write_file(b, "plain text");
  ds = open_dataset(d.path(), Split::kTrain);  // the sizes changed
  for (int threads : {1, 3}) {
    size_t last = 0;
    const auto bad =
        find_unreadable_images(*ds, 0, ds->size(), threads, [&](size_t done) { last = done; });
    ASSERT_EQ(bad.size(), 2u) << threads;
    EXPECT_EQ(bad[0].index, 3u);
    EXPECT_EQ(bad[1].index, 11u);
    EXPECT_NE(bad[0].message.find(a), std::string::npos) << bad[0].message;
    EXPECT_NE(bad[1].message.find("unknown magic bytes"), std::string::npos) << bad[1].message;
    EXPECT_EQ(last, ds->size());
  }
  // A range that leaves them out finds nothing.
  EXPECT_TRUE(find_unreadable_images(*ds, 4, 11, 2).empty());
}

TEST(ImageFolder, DanglingLinkIsReportedLikeAnUnreadableFile) {
  // torchvision lists a dangling link with an image extension and fails to load it; it
  // once vanished from fkd's dataset without a word.
  TempDir d;
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {d.path()}).status, 0);
  const size_t before = open_dataset(d.path(), Split::kTrain)->size();
  fs::create_symlink(d.file("gone.png"), d.file("train/cat/zz_link.png"));
  auto ds = open_dataset(d.path(), Split::kTrain);
  ASSERT_EQ(ds->size(), before + 1);
  const auto bad = find_unreadable_images(*ds, 0, ds->size(), 1);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(ds->item_name(bad[0].index), "train/cat/zz_link.png");
  EXPECT_NE(bad[0].message.find("zz_link.png"), std::string::npos) << bad[0].message;
}

TEST(ImageFolder, LinkedImagesAreNamedWhereTheyAreNotWhereTheyPoint) {
  // Trees of symlinks into a shared pool of images are common; names (messages,
  // fingerprints, the reference's label paths) follow the tree, as torchvision's paths do.
  TempDir d;
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {d.path()}).status, 0);
  fs::create_directories(d.file("pool"));
  fs::copy_file(d.file("train/cat/") + fkd::test::list_dir(d.file("train/cat")).front(),
                d.file("pool/x.png"));
  fs::create_symlink(d.file("pool/x.png"), d.file("train/cat/zz_linked.png"));
  auto ds = open_dataset(d.path(), Split::kTrain);
  bool found = false;
  for (size_t i = 0; i < ds->size(); ++i) {
    EXPECT_EQ(ds->item_name(i).rfind("train/", 0), 0u) << ds->item_name(i);
    found |= ds->item_name(i) == "train/cat/zz_linked.png";
  }
  EXPECT_TRUE(found);
}

TEST(Loader, EveryPerImageMessageNamesTheFile) {
  // A crop that cannot be cut from one image (RandomCrop(32) of a small image) is that
  // image's fault: skipped, or fatal when strict, and named either way.
  TempDir d;
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {d.path()}).status, 0);
  auto ds = open_dataset(d.path(), Split::kTrain);  // images of 12 to 39 px
  TrainTransform t;
  t.crop.kind = CropKind::kPadded;
  t.crop.size = 40;
  t.crop.padding = 0;
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 1;
  Loader loader(ds, t, std::make_shared<RandomCropSource>(t, 1), o);
  loader.start_epoch(0);
  Batch b;
  while (loader.next(b)) {
  }
  ASSERT_EQ(loader.skipped(), ds->size());
  for (const BadSample& s : loader.bad_samples()) {
    EXPECT_NE(s.error.find(d.path() + "/" + s.name + ": random crop 40x40 is larger than"),
              std::string::npos)
        << s.error;
  }
  o.strict = true;
  Loader strict(ds, t, std::make_shared<RandomCropSource>(t, 1), o);
  strict.start_epoch(0);
  const auto msg = fkd::test::error_message<DataError>([&] {
    while (strict.next(b)) {
    }
  });
  EXPECT_NE(msg.find(d.path() + "/train/"), std::string::npos) << msg;
}
