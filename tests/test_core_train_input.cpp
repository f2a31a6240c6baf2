// The training input a run resolves from its data (fkd/train_input.h), which fkd train and the
// Python module share.
#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/train_input.h"
#include "testutil.h"

namespace fkd {
namespace {

using test::TempDir;

/// An IDX dataset of 30x30 images, 12 train and 3 val, 3 classes, in `dir`.
TrainConfig idx_config(const TempDir& dir) {
  test::write_idx_split(dir.path(), "train", 12, 30, 30, 3);
  test::write_idx_split(dir.path(), "t10k", 3, 30, 30, 3);
  TrainConfig c;
  c.data = dir.path();
  return c;
}

TEST(TrainInput, ResolvesAutoFieldsFromTheData) {
  TempDir dir;
  TrainConfig c = idx_config(dir);
  auto ds = open_train_set(c);
  ASSERT_EQ(ds->size(), 12u);
  resolve_input(c, *ds);
  EXPECT_EQ(c.channels, 1);
  EXPECT_EQ(c.crop.size, 30);                 // an IDX image's side
  EXPECT_EQ(c.crop.kind, CropKind::kPadded);  // small images all of the input size
  EXPECT_EQ(c.eval_resize, 30);               // no resize below 64 px
  ASSERT_EQ(c.mean.size(), 1u);               // not Fashion-MNIST: ImageNet's, averaged
  EXPECT_NEAR(c.mean[0], (0.485f + 0.456f + 0.406f) / 3, 1e-6);
  EXPECT_NEAR(c.std[0], (0.229f + 0.224f + 0.225f) / 3, 1e-6);
  const TrainTransform t = train_transform(c);
  EXPECT_EQ(t.crop.size, 30);
  EXPECT_FLOAT_EQ(t.norm.mean[0], c.mean[0]);
  EXPECT_EQ(eval_transform(c).resize, 30);
}

TEST(TrainInput, KeepsWhatIsGivenAndAppliesTheLimit) {
  TempDir dir;
  TrainConfig c = idx_config(dir);
  c.limit_train = 4;
  c.channels = 3;
  c.crop.size = 24;
  c.mean = {0.5f, 0.5f, 0.5f};
  c.std = {0.25f, 0.25f, 0.25f};
  auto ds = open_train_set(c);
  EXPECT_EQ(ds->size(), 4u);
  EXPECT_EQ(ds->channels(), 3);
  resolve_input(c, *ds);
  EXPECT_EQ(c.crop.size, 24);
  EXPECT_EQ(c.crop.kind, CropKind::kRandomResized);  // the images are not of the input size
  EXPECT_EQ(c.mean, (std::vector<float>{0.5f, 0.5f, 0.5f}));

  TrainConfig bad = idx_config(dir);
  bad.mean = {0.5f, 0.5f, 0.5f};
  bad.std = {0.25f, 0.25f, 0.25f};
  EXPECT_EQ(test::error_message<ConfigError>([&] { resolve_input(bad, *open_train_set(bad)); }),
            "--mean and --std need 1 values (one per channel)");
}

TEST(TrainInput, LoaderOptionsComeFromTheRun) {
  TrainConfig c;
  c.batch_size = 48;
  c.seed = 9;
  c.workers = 3;
  c.strict_data = true;
  const LoaderOptions o = train_loader_options(c, 1, 2);
  EXPECT_EQ(o.batch_size, 48u);
  EXPECT_EQ(o.seed, 9u);
  EXPECT_EQ(o.workers, 3);
  EXPECT_TRUE(o.strict);
  EXPECT_TRUE(o.shuffle);
  EXPECT_EQ(o.rank, 1);
  EXPECT_EQ(o.world, 2);
}

TEST(TrainInput, AStoreWithoutManifestNamesNoSubset) {
  TempDir dir;
  EXPECT_EQ(store_subset_size(dir.path()), 0u);
  EXPECT_EQ(store_subset_size(dir.file("missing")), 0u);
}

}  // namespace
}  // namespace fkd
