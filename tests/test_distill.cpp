// Distillation: the soft loss, batch mixing, FKD training from a label store, online KD.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

#include "fkd/demo.h"
#include "fkd/distill.h"
#include "fkd/error.h"
#include "fkd/hash.h"
#include "fkd/label.h"
#include "fkd/replay.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "testutil.h"
#include "train/checkpoint.h"
#include "train/schedule.h"
#include "train/soft_loss.h"

using namespace fkd;
using fkd::test::TempDir;

namespace {

void save_tensor(const torch::Tensor& t, const std::string& path) {
  const std::vector<char> bytes = torch::pickle_save(t);
  fkd::test::write_file(path, std::string(bytes.begin(), bytes.end()));
}

/// Hand-computed soft cross-entropy in double precision.
double soft_ce_by_hand(const torch::Tensor& logits, const torch::Tensor& q, double T) {
  const auto z = logits.to(torch::kDouble).contiguous();
  const auto p = q.to(torch::kDouble).contiguous();
  double total = 0;
  for (int64_t i = 0; i < z.size(0); ++i) {
    double mx = -1e300;
    for (int64_t c = 0; c < z.size(1); ++c) mx = std::max(mx, z[i][c].item<double>() / T);
    double sum = 0;
    for (int64_t c = 0; c < z.size(1); ++c) sum += std::exp(z[i][c].item<double>() / T - mx);
    const double lse = mx + std::log(sum);
    for (int64_t c = 0; c < z.size(1); ++c) {
      total -= p[i][c].item<double>() * (z[i][c].item<double>() / T - lse);
    }
  }
  return total / double(z.size(0));
}

}  // namespace

TEST(SoftLoss, EqualsHandComputedAndPyTorch) {
  torch::manual_seed(7);
  const auto logits = torch::randn({6, 5}) * 3;
  auto q = torch::rand({6, 5});
  q = q / q.sum(1, true);
  TempDir d;
  save_tensor(logits, d.file("z.pt"));
  save_tensor(q, d.file("q.pt"));
  for (double T : {1.0, 2.0, 4.0}) {
    const double ours = soft_cross_entropy(logits, q, T).item<double>();
    EXPECT_NEAR(ours, soft_ce_by_hand(logits, q, T), 1e-5) << "T=" << T;
    const auto py =
        fkd::test::run_python("soft_ce.py", {d.file("z.pt"), d.file("q.pt"), std::to_string(T)});
    ASSERT_EQ(py.status, 0);
    EXPECT_NEAR(ours, std::stod(py.out), 1e-5) << "T=" << T;
  }
  // A one-hot target reduces it to the ordinary cross-entropy, label smoothing included.
  const auto y = torch::tensor({0, 4, 2, 2, 1, 3}, torch::kLong);
  for (double s : {0.0, 0.1}) {
    const double ce =
        torch::nn::functional::cross_entropy(
            logits, y, torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(s))
            .item<double>();
    EXPECT_NEAR(soft_cross_entropy(logits, one_hot_targets(y, 5, s), 1.0).item<double>(), ce, 1e-5);
  }
}

TEST(Mix, BetaSamplerHasTheRightMoments) {
  for (double a : {0.2, 1.0, 2.0}) {
    Rng rng(1, RngStream::kMix, {uint64_t(a * 10)});
    const int n = 40000;
    double s = 0, s2 = 0;
    for (int i = 0; i < n; ++i) {
      const double x = sample_beta(rng, a);
      ASSERT_GE(x, 0.0);
      ASSERT_LE(x, 1.0);
      s += x;
      s2 += x * x;
    }
    const double mean = s / n, var = s2 / n - mean * mean;
    EXPECT_NEAR(mean, 0.5, 0.01) << a;
    EXPECT_NEAR(var, 1.0 / (4 * (2 * a + 1)), 0.01) << a;  // Beta(a, a) variance
  }
}

TEST(Mix, MixupAndCutmixMixImagesAndTargetsAlike) {
  torch::manual_seed(3);
  const int n = 6, C = 10, H = 12, W = 16;
  const auto x = torch::rand({n, 3, H, W});
  auto soft = torch::softmax(torch::randn({n, C}), 1);
  const auto y = torch::randint(0, C, {n}, torch::kLong);
  int mixups = 0, cutmixes = 0;
  for (uint64_t step = 0; step < 60; ++step) {
    Rng rng(9, RngStream::kMix, {step});
    const MixPlan p = sample_mix(rng, 0.8, 1.0, 1.0, 0.5, H, W);
    ASSERT_TRUE(p.mixed);
    torch::Tensor q = soft.clone(), hard = one_hot_targets(y, C, 0.0), undefined;
    const auto mx = apply_mix(p, x, {&q, &hard, &undefined});
    EXPECT_FALSE(undefined.defined());
    // Targets stay distributions: every row sums to one.
    EXPECT_TRUE(torch::allclose(q.sum(1), torch::ones({n}), 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(hard.sum(1), torch::ones({n}), 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(q, soft * p.lam + soft.flip(0) * (1 - p.lam), 1e-6, 1e-7));
    if (p.cutmix) {
      ++cutmixes;
      // Inside the box the partner row's pixels, outside the row's own; lam = area share.
      auto inside = torch::zeros({H, W}, torch::kBool);
      inside.index_put_({torch::indexing::Slice(p.y0, p.y1), torch::indexing::Slice(p.x0, p.x1)},
                        true);
      const auto expect = torch::where(inside, x.flip(0), x);
      EXPECT_TRUE(torch::equal(mx, expect));
      EXPECT_NEAR(p.lam, 1.0 - double((p.y1 - p.y0) * (p.x1 - p.x0)) / (H * W), 1e-12);
    } else {
      ++mixups;
      EXPECT_TRUE(torch::allclose(mx, x * p.lam + x.flip(0) * (1 - p.lam), 1e-6, 1e-7));
    }
  }
  EXPECT_GT(mixups, 10);
  EXPECT_GT(cutmixes, 10);
  // mix_prob 0 and no alphas leave the batch alone.
  Rng rng(1, RngStream::kMix, {0});
  EXPECT_FALSE(sample_mix(rng, 0.8, 1.0, 0.0, 0.5, H, W).mixed);
  EXPECT_FALSE(sample_mix(rng, 0.0, 0.0, 1.0, 0.5, H, W).mixed);
}

namespace {

/// A supervised tiny teacher and a label store of it on a Fashion-MNIST subset. ctest runs
/// every test in its own process, so they are made once into a cache in the build tree
/// (built in a private directory, then renamed into place: concurrent tests never see a
/// half-made one; both are deterministic, so whichever rename wins is the same).
struct DistillFixture {
  TempDir dir;  ///< the students' runs
  std::string teacher, store;
  static constexpr size_t kImages = 1500;
  static constexpr int kCrops = 8;

  DistillFixture() {
    namespace fs = std::filesystem;
    // Keyed on this test program's bytes: any change to the code that makes the teacher or
    // the labels makes a new cache (older ones are left for `make clean`).
    const fs::path cache =
        fs::path(FKD_BINARY_DIR) / "tests" / ("cache-distill-" + hash_file_hex("/proc/self/exe"));
    teacher = (cache / "teacher" / "checkpoint.pt").string();
    store = (cache / "labels").string();
    if (fs::exists(cache / "complete")) return;
    TrainConfig t;
    t.model = "tiny";
    t.limit_train = kImages;
    t.limit_val = 500;
    t.epochs = 4;
    t.batch_size = 64;
    t.lr = 0.05;
    t.threads = 2;
    t.workers = 1;
    t.seed = 1;
    t.label_smoothing = 0;  // a teacher on hard labels, as the demo's
    t.out = dir.file("cache/teacher");
    train(t);
    LabelConfig l;
    l.teacher = dir.file("cache/teacher/checkpoint.pt");
    l.limit = kImages;
    l.crops = kCrops;
    l.crop.kind = CropKind::kPadded;  // RandomCrop(28, 4) + flip, as the teacher trained
    l.threads = 2;
    l.out = dir.file("cache/labels");
    generate_labels(l);
    fkd::test::write_file(dir.file("cache/complete"), "");
    fs::create_directories(cache.parent_path());
    std::error_code ec;
    fs::rename(dir.file("cache"), cache, ec);  // fails harmlessly if another test won
    if (ec && !fs::exists(cache / "complete")) throw std::runtime_error("cannot cache fixture");
  }

  TrainConfig student(const std::string& name) const {
    TrainConfig c;
    c.model = "tiny";
    c.limit_train = kImages;
    c.limit_val = 500;
    c.batch_size = 64;
    c.lr = 0.05;
    c.threads = 2;
    c.workers = 2;
    c.seed = 4;
    c.out = dir.file(name);
    return c;
  }
};

DistillFixture& fixture() {
  static DistillFixture f;
  return f;
}

}  // namespace

TEST(Fkd, ShortRunLearnsFromTheStore) {
  const auto& fx = fixture();
  TrainConfig c = fx.student("fkd");
  c.labels = fx.store;
  c.num_crops = 2;
  c.epochs = 8;  // four passes of 2 crops per image
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 4u);
  // Chance is 10%; the student of a ~70% teacher gets well above it.
  EXPECT_GT(r.history.back().top1, 40.0);  // reaches ~49% here
  EXPECT_LT(r.history.back().train_loss, r.history.front().train_loss);
}

TEST(Fkd, EpochAccountingOnePassIsNumCropsEpochs) {
  const auto& fx = fixture();
  TrainConfig c = fx.student("acct");
  c.labels = fx.store;
  c.num_crops = 4;
  c.epochs = 6;  // a pass of 4 epochs, then a partial pass counted as 2
  c.limit_val = 200;
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 2u);
  EXPECT_EQ(r.history[0].epoch, 4);
  EXPECT_EQ(r.history[0].epochs_covered, 4);
  EXPECT_EQ(r.history[1].epoch, 6);
  EXPECT_EQ(r.history[1].epochs_covered, 2);
  // The cosine schedule spans both passes (counted in steps): it ends near zero and the
  // first pass ends where 4 of 8 effective epochs' worth of steps put it (cos at half).
  const double steps_per_pass = std::ceil(double(fx.kImages) / (64.0 / 4));
  EXPECT_NEAR(r.history[0].lr,
              lr_at(0.05, int64_t(steps_per_pass) - 1, 0, int64_t(2 * steps_per_pass)), 1e-9);
  EXPECT_LT(r.history[1].lr, 1e-3);
}

TEST(Fkd, StoreOfAnotherDatasetIsRefused) {
  const auto& fx = fixture();
  TrainConfig c = fx.student("mismatch");
  c.labels = fx.store;
  c.limit_train = 1000;  // the store labels 1500 images
  c.epochs = 4;
  try {
    train(c);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(fx.store), std::string::npos) << msg;
    EXPECT_NE(msg.find("1500 images"), std::string::npos) << msg;
  }
  EXPECT_FALSE(std::filesystem::exists(fx.dir.file("mismatch/checkpoint.pt")));
  // Without --limit-train, training takes the store's subset.
  c.limit_train = 0;
  c.num_crops = 1;
  c.epochs = 1;
  c.limit_val = 100;
  c.out = fx.dir.file("store-subset");
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 1u);
  EXPECT_EQ(read_checkpoint_meta(r.checkpoint).config.limit_train, fx.kImages);
}

namespace {

/// A copy of the fixture's store in `dir`, with one byte flipped in the payload of the
/// records of `images` (blocks follow each other in image order, each starting "FKDB").
std::string damaged_copy(const std::string& store, const std::string& dir,
                         const std::vector<uint64_t>& images) {
  namespace fs = std::filesystem;
  fs::copy(store, dir, fs::copy_options::recursive);
  const std::string shard = dir + "/" + shard_file_name(0, 1);
  std::string bytes = fkd::test::read_file(shard);
  std::vector<size_t> blocks;
  for (size_t at = bytes.find("FKDB"); at != std::string::npos; at = bytes.find("FKDB", at + 1))
    blocks.push_back(at);
  for (uint64_t i : images) bytes[blocks.at(i) + 40] ^= 0x5a;  // 8 bytes into the payload
  fkd::test::write_file(shard, bytes);
  return shard;
}

}  // namespace

TEST(Fkd, DamagedRecordsStopTrainingUnlessSkipped) {
  const auto& fx = fixture();
  const std::string store = fx.dir.file("damaged");
  const std::string shard = damaged_copy(fx.store, store, {3, 7});
  TrainConfig c = fx.student("on-damaged");
  c.labels = store;
  c.num_crops = 2;
  c.epochs = 2;
  c.limit_val = 100;
  // Store damage is not bad data: the run stops, naming the shard, the image and the offset.
  try {
    train(c);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(shard), std::string::npos) << msg;
    EXPECT_TRUE(std::regex_search(msg, std::regex("image [37]:"))) << msg;
    EXPECT_NE(msg.find("offset"), std::string::npos) << msg;
    EXPECT_NE(msg.find("fkd label repair"), std::string::npos) << msg;
  }
  EXPECT_FALSE(std::filesystem::exists(c.out + "/checkpoint.pt"));
  // Asked to, it trains without those two images and says which they were.
  c.skip_damaged_labels = true;
  c.out = fx.dir.file("skipping-damaged");
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 1u);
  EXPECT_EQ(r.bad_samples, 2u);
}

TEST(Fkd, EditedDatasetLimitKeyDoesNotMisleadTraining) {
  // dataset_limit in manifest.json is informational; the store's num_images says which
  // subset it labels. An edited dataset_limit once gave "made for (limit 700) but training
  // reads (limit 700)".
  const auto& fx = fixture();
  const std::string store = fx.dir.file("edited-limit");
  std::filesystem::copy(fx.store, store, std::filesystem::copy_options::recursive);
  std::string text = fkd::test::read_file(store + "/manifest.json");
  const std::string key = "\"dataset_limit\": " + std::to_string(fx.kImages);
  ASSERT_NE(text.find(key), std::string::npos) << text;
  text.replace(text.find(key), key.size(), "\"dataset_limit\": 700");
  fkd::test::write_file(store + "/manifest.json", text);
  TrainConfig c = fx.student("edited-limit-run");
  c.labels = store;
  c.limit_train = 0;
  c.num_crops = 2;
  c.epochs = 2;
  c.limit_val = 100;
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 1u);
  EXPECT_EQ(read_checkpoint_meta(r.checkpoint).config.limit_train, fx.kImages);
}

TEST(Fkd, ResumeEqualsUninterruptedRun) {
  const auto& fx = fixture();
  TrainConfig a = fx.student("whole");
  a.labels = fx.store;
  a.num_crops = 2;
  a.epochs = 4;
  a.threads = 1;
  a.limit_val = 100;
  a.mixup = 0.2;
  a.cutmix = 1.0;
  const TrainResult whole = train(a);
  TrainConfig b = a;
  b.out = fx.dir.file("parts");
  b.stop_after = 1;
  train(b);
  b.resume = true;
  b.stop_after = 0;
  const TrainResult parts = train(b);
  ASSERT_EQ(parts.history.size(), whole.history.size());
  EXPECT_DOUBLE_EQ(parts.history.back().top1, whole.history.back().top1);
  EXPECT_DOUBLE_EQ(parts.history.back().train_loss, whole.history.back().train_loss);
}

TEST(Kd, OnlineDistillationRunsTheTeacher) {
  const auto& fx = fixture();
  TrainConfig c = fx.student("kd");
  c.teacher = fx.teacher;
  c.epochs = 3;
  c.hard_weight = 0.3;
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 3u);
  EXPECT_GT(r.history.back().top1, 40.0);  // chance is 10%
  // A teacher with the wrong number of classes is refused before training.
  TrainConfig bad = fx.student("kd-bad");
  bad.teacher = fx.dir.file("missing.pt");
  EXPECT_THROW(train(bad), Error);
}

TEST(Distill, LabelsThenTrains) {
  const auto& fx = fixture();
  DistillConfig d;
  d.label.teacher = fx.teacher;
  d.label.crops = 0;                    // as many as the epochs use
  d.label.crop.kind = CropKind::kAuto;  // 28 px: RandomCrop with padding
  d.train = fx.student("unused");
  d.train.limit_train = 1000;
  d.train.limit_val = 200;
  d.train.epochs = 4;
  d.train.num_crops = 2;
  d.out = fx.dir.file("distill");
  const TrainResult r = run_distill(d);
  ASSERT_EQ(r.history.size(), 2u);
  const Manifest m = read_manifest(fx.dir.file("distill/labels"));
  EXPECT_EQ(m.crops_per_image, 4u);
  EXPECT_EQ(m.num_images, 1000u);
  EXPECT_EQ(m.crop.kind, CropKind::kPadded);
  EXPECT_TRUE(std::filesystem::exists(fx.dir.file("distill/student/checkpoint.pt")));
  EXPECT_GT(r.history.back().top1, 30.0);
}

TEST(Distill, WhatTrainingNeedsIsCheckedBeforeLabeling) {
  TempDir d;
  const std::string data = d.file("data"), teacher = d.file("t.pt");
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {data}).status, 0);
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "3", "3"}).status, 0);
  std::filesystem::remove_all(data + "/val");
  DistillConfig c;
  c.label.teacher = teacher;
  c.label.crops = 0;
  c.train.data = data;
  c.train.model = "tiny";
  c.train.crop.size = 28;
  c.train.epochs = 2;
  c.train.threads = 1;
  c.out = d.file("out");
  // No val split: refused before labeling, not after.
  try {
    run_distill(c);
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("missing split folder 'val'"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(d.file("out/labels/manifest.json")));
  // A batch that does not split into whole images, likewise.
  std::filesystem::create_directories(data + "/val");
  std::filesystem::copy(data + "/train", data + "/val", std::filesystem::copy_options::recursive);
  c.train.batch_size = 10;
  c.train.num_crops = 4;
  EXPECT_THROW(run_distill(c), ConfigError);
  EXPECT_FALSE(std::filesystem::exists(d.file("out/labels/manifest.json")));
}

TEST(Demo, StaleStageIsMovedAsideAndLaterStagesRedone) {
  TempDir d;
  const std::filesystem::path teacher = d.file("teacher"), labels = d.file("labels");
  for (const auto& dir : {teacher, labels}) {
    std::filesystem::create_directories(dir);
    fkd::test::write_file((dir / "work").string(), "old " + dir.filename().string());
  }
  bool redo = false;
  int calls = 0;
  // A stage whose directory holds reusable work runs once and redoes nothing.
  EXPECT_EQ(run_demo_stage(teacher, redo, [&] { return ++calls; }), 1);
  EXPECT_FALSE(redo);
  EXPECT_TRUE(std::filesystem::exists(teacher / "work"));
  // Work made with other options: moved to .old (kept), the stage runs again, later ones too.
  calls = 0;
  const int r = run_demo_stage(teacher, redo, [&] {
    if (++calls == 1) throw WorkMismatch("option 'lr' differs");
    std::filesystem::create_directories(teacher);
    fkd::test::write_file((teacher / "work").string(), "new");
    return calls;
  });
  EXPECT_EQ(r, 2);
  EXPECT_TRUE(redo);
  EXPECT_EQ(fkd::test::read_file(d.file("teacher.old/work")), "old teacher");
  EXPECT_EQ(fkd::test::read_file((teacher / "work").string()), "new");
  // The next stage builds on the redone one: its old work is moved aside before it runs.
  bool saw_old = true;
  run_demo_stage(labels, redo, [&] {
    saw_old = std::filesystem::exists(labels / "work");
    return 0;
  });
  EXPECT_FALSE(saw_old);
  EXPECT_EQ(fkd::test::read_file(d.file("labels.old/work")), "old labels");
  // Any other error is not a reason to discard work.
  bool keep = false;
  EXPECT_THROW(run_demo_stage(teacher, keep, [&]() -> int { throw ConfigError("bad option"); }),
               ConfigError);
  EXPECT_TRUE(std::filesystem::exists(teacher / "work"));
}
