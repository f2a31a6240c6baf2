#include "fkd/train_input.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/image.h"
#include "fkd/replay.h"
#include "fkd/store.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {
constexpr float kFashionMnistMean = 0.2860f, kFashionMnistStd = 0.3530f;
const float kImageNetMean[3] = {0.485f, 0.456f, 0.406f};
const float kImageNetStd[3] = {0.229f, 0.224f, 0.225f};
constexpr int kSizeSamples = 16;  ///< images decoded to find a dataset's typical size

bool is_idx(const Dataset& ds) { return ds.item_name(0).find("-idx3-ubyte") != std::string::npos; }

/// Shorter sides of up to kSizeSamples images spread over the dataset (those that fail to
/// decode are left out; all 0 when none decodes).
struct ImageSides {
  int median = 0, min = 0, max = 0;
};

ImageSides image_sides(const Dataset& ds) {
  if (is_idx(ds)) {
    const Image im = ds.load(0);
    const int side = std::min(im.height, im.width);
    return {side, side, side};
  }
  std::vector<int> sides;
  const size_t n = std::min<size_t>(ds.size(), kSizeSamples);
  for (size_t k = 0; k < n; ++k) {
    try {
      const Image im = ds.load(k * ds.size() / n);
      sides.push_back(std::min(im.height, im.width));
    } catch (const Error&) {  // reported when training reads it
    }
  }
  if (sides.empty()) return {};
  std::sort(sides.begin(), sides.end());
  return {sides[sides.size() / 2], sides.front(), sides.back()};
}

/// The input size when none is given, and the upscaling warning when one is. Returns the
/// sides of the images it looked at.
ImageSides resolve_input_size(TrainConfig& cfg, const Dataset& ds,
                              std::vector<std::string>* notes) {
  const ImageSides sides = image_sides(ds);
  const int side = sides.median;
  if (cfg.crop.size == 0) {
    if (is_idx(ds)) {
      cfg.crop.size = side;
    } else {
      cfg.crop.size = side > 0 ? std::min(side, kDefaultInputSize) : kDefaultInputSize;
      if (notes) {
        notes->push_back(
            side >= kDefaultInputSize
                ? fmt::format("input size {} px (auto: the ImageNet recipe's; --input-size to "
                              "change)",
                              cfg.crop.size)
                : fmt::format("input size {} px (auto: the images' median shorter side; "
                              "--input-size to change)",
                              cfg.crop.size));
      }
    }
  } else if (side > 0 && cfg.crop.size > 2 * side && notes) {
    notes->push_back(fmt::format(
        "warning: --input-size {} upscales {}'s images (median shorter side {} px) {:.1f}x: "
        "every crop costs {:.0f}x the pixels it holds; --input-size {} keeps them at their size",
        cfg.crop.size, cfg.data, side, double(cfg.crop.size) / side,
        double(cfg.crop.size) * cfg.crop.size / (double(side) * side), side));
  }
  return sides;
}

void resolve_normalization(TrainConfig& cfg) {
  if (!cfg.mean.empty() && !cfg.std.empty()) return;
  const bool fmnist = cfg.data == "fashion-mnist";
  std::vector<float> mean, std;
  for (int c = 0; c < cfg.channels; ++c) {
    if (fmnist) {
      mean.push_back(kFashionMnistMean);
      std.push_back(kFashionMnistStd);
    } else if (cfg.channels == 3) {
      mean.push_back(kImageNetMean[c]);
      std.push_back(kImageNetStd[c]);
    } else {
      mean.push_back((kImageNetMean[0] + kImageNetMean[1] + kImageNetMean[2]) / 3);
      std.push_back((kImageNetStd[0] + kImageNetStd[1] + kImageNetStd[2]) / 3);
    }
  }
  if (cfg.mean.empty()) cfg.mean = mean;
  if (cfg.std.empty()) cfg.std = std;
}

Normalize make_norm(const TrainConfig& cfg) {
  Normalize n;
  for (size_t c = 0; c < cfg.mean.size() && c < 3; ++c) {
    n.mean[c] = cfg.mean[c];
    n.std[c] = cfg.std[c];
  }
  return n;
}

}  // namespace

size_t store_subset_size(const std::string& store_dir) {
  if (!fs::exists(fs::path(store_dir) / "manifest.json")) return 0;
  // dataset_limit only says that a subset was labeled; num_images says how large it is.
  const Manifest m = read_manifest(store_dir);
  return m.dataset_limit == 0 ? 0 : size_t(m.num_images);
}

void validate_input_options(const TrainConfig& cfg) {
  FKD_CHECK(cfg.channels == 0 || cfg.channels == 1 || cfg.channels == 3, ConfigError,
            "--channels {}: expected 1 or 3 (0 = the dataset's)", cfg.channels);
  FKD_CHECK(cfg.crop.size == 0 || (cfg.crop.size >= 8 && cfg.crop.size <= 4096), ConfigError,
            "--input-size {}: expected 8 to 4096 (0 = auto)", cfg.crop.size);
  CropSampler sized = cfg.crop;
  if (sized.size == 0) sized.size = kDefaultInputSize;  // checked again once resolved
  const std::string crop_problem = crop_sampler_problem(sized);
  FKD_CHECK(crop_problem.empty(), ConfigError, "{}", crop_problem);
  parse_interp(cfg.interp);
  FKD_CHECK(cfg.eval_resize >= 0, ConfigError, "--resize {}: expected >= 0 (0 = auto)",
            cfg.eval_resize);
  FKD_CHECK(cfg.mean.size() == cfg.std.size() || cfg.mean.empty() || cfg.std.empty(), ConfigError,
            "--mean has {} values but --std {}", cfg.mean.size(), cfg.std.size());
  for (float m : cfg.mean) FKD_CHECK(std::isfinite(m), ConfigError, "--mean {}: not finite", m);
  for (float s : cfg.std) {
    FKD_CHECK(s > 0 && std::isfinite(s), ConfigError,
              "--std {}: values must be positive and finite", s);
  }
  FKD_CHECK(cfg.batch_size >= 1, ConfigError, "--batch-size {}: expected at least 1",
            cfg.batch_size);
  FKD_CHECK(cfg.num_crops >= 1, ConfigError, "--num-crops {}: expected at least 1", cfg.num_crops);
  FKD_CHECK(cfg.mode != TrainMode::kFkd || cfg.batch_size % size_t(cfg.num_crops) == 0, ConfigError,
            "--batch-size {} must be a multiple of --num-crops {}", cfg.batch_size, cfg.num_crops);
  FKD_CHECK(cfg.workers >= 0, ConfigError, "--workers {}: expected >= 0", cfg.workers);
}

void validate_rank_split(const TrainConfig& cfg, int rank, int world) {
  FKD_CHECK(world >= 1 && rank >= 0 && rank < world, ConfigError,
            "rank {} of a world of {}: expected 0 <= rank < world", rank, world);
  FKD_CHECK(cfg.batch_size % (size_t(cfg.num_crops) * size_t(world)) == 0, ConfigError,
            "--batch-size {} over {} ranks: each rank takes whole images ({} crops each), so the "
            "batch must be a multiple of {}",
            cfg.batch_size, world, cfg.num_crops, cfg.num_crops * world);
}

std::shared_ptr<Dataset> open_train_set(const TrainConfig& cfg) {
  DatasetOptions dopt;
  dopt.channels = cfg.channels;
  dopt.limit = cfg.limit_train;
  return open_dataset(cfg.data, Split::kTrain, dopt);
}

void resolve_input(TrainConfig& cfg, const Dataset& train_set, std::vector<std::string>* notes) {
  if (cfg.channels == 0) cfg.channels = train_set.channels();
  const ImageSides sides = resolve_input_size(cfg, train_set, notes);
  FKD_CHECK(cfg.crop.size >= 8 && cfg.crop.size <= 4096, ConfigError,
            "{}: input size {} px out of range [8, 4096]: set --input-size", cfg.data,
            cfg.crop.size);
  // Small images all of the input size (28-px Fashion-MNIST, 32-px CIFAR) get RandomCrop;
  // images of varied sizes get RandomResizedCrop.
  const bool at_size =
      sides.median == 0 || (sides.min == cfg.crop.size && sides.max == cfg.crop.size);
  cfg.crop.kind = resolve_crop_kind(cfg.crop, at_size);
  if (cfg.eval_resize == 0) {
    cfg.eval_resize = cfg.crop.size <= 64 ? cfg.crop.size : int(cfg.crop.size / 0.875);
  }
  resolve_normalization(cfg);
  FKD_CHECK(int(cfg.mean.size()) == cfg.channels && int(cfg.std.size()) == cfg.channels,
            ConfigError, "--mean and --std need {} values (one per channel)", cfg.channels);
}

TrainTransform train_transform(const TrainConfig& cfg) {
  TrainTransform t;
  t.crop = cfg.crop;
  t.interp = parse_interp(cfg.interp);
  t.norm = make_norm(cfg);
  return t;
}

EvalTransform eval_transform(const TrainConfig& cfg) {
  EvalTransform t;
  t.resize = cfg.eval_resize;
  t.size = cfg.crop.size;
  t.interp = parse_interp(cfg.interp);
  t.norm = make_norm(cfg);
  return t;
}

std::shared_ptr<const CropSource> store_crop_source(const TrainConfig& cfg,
                                                    const Dataset& train_set,
                                                    std::shared_ptr<const StoreReader> store) {
  check_store_matches(store->manifest(), cfg.labels, train_set, cfg.data, cfg.limit_train);
  return std::make_shared<StoreCropSource>(
      std::move(store), cfg.num_crops, cfg.seed,
      cfg.skip_damaged_labels ? DamagedRecords::kSkip : DamagedRecords::kStop);
}

LoaderOptions train_loader_options(const TrainConfig& cfg, int rank, int world) {
  LoaderOptions o;
  o.batch_size = cfg.batch_size;
  o.seed = cfg.seed;
  o.workers = cfg.workers;
  o.strict = cfg.strict_data;
  o.rank = rank;
  o.world = world;
  return o;
}

}  // namespace fkd
