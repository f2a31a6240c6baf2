#include "export/calibration.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/loader.h"
#include "fkd/store.h"
#include "fkd/train_input.h"
#include "train/device.h"

namespace fkd::edge {
namespace {

/// The first `count` rows of a shuffled epoch 0 of `loader`: a seeded sample of the set.
/// Rows go to `out` [count, C, H, W] as the model's input; each row's origin to `samples`.
void take_rows(Loader& loader, size_t count, bool raw_pixels, const Dataset& ds, torch::Tensor& out,
               nlohmann::json& samples) {
  loader.start_epoch(0);
  Batch b;
  size_t filled = 0;
  while (filled < count && loader.next(b)) {
    const size_t take = std::min(size_t(b.n), count - filled);
    torch::Tensor x = raw_pixels
                          ? batch_pixels(b, torch::kCPU).permute({0, 3, 1, 2}).to(torch::kFloat32)
                          : batch_images(b, torch::kCPU, /*channels_last=*/false);
    out.narrow(0, int64_t(filled), int64_t(take)).copy_(x.narrow(0, 0, int64_t(take)));
    for (size_t i = 0; i < take; ++i) {
      nlohmann::json s = {{"index", b.sample[i]}, {"name", ds.item_name(b.sample[i])}};
      if (!b.plans.empty()) {
        const CropPlan& p = b.plans[i];
        s["crop"] = p.id;
        s["box"] = {p.box.left, p.box.top, p.box.width, p.box.height};
        s["flip"] = p.flip;
      }
      samples.push_back(s);
    }
    filled += take;
  }
  FKD_CHECK(filled == count, DataError,
            "--calibration {}: the training split gave only {} readable images", count, filled);
}

/// Floats as the decimals that read back as them ("0.286", not "0.28600001335144043").
std::vector<double> short_decimals(const std::vector<float>& v) {
  std::vector<double> out;
  for (float f : v) out.push_back(std::stod(fmt::format("{}", f)));
  return out;
}

}  // namespace

CalibrationSet draw_calibration(const CalibrationRequest& r) {
  TrainConfig cfg = r.config;
  const bool from_store = !r.labels.empty();
  if (from_store) {
    cfg.labels = r.labels;
    cfg.mode = TrainMode::kFkd;
    cfg.num_crops = 1;
    cfg.seed = r.seed;
    // The images the store labels (all, or its --limit subset), whatever the run trained on.
    cfg.limit_train = store_subset_size(r.labels);
  }
  std::shared_ptr<const Dataset> ds = open_train_set(cfg);
  FKD_CHECK(r.count <= ds->size(), ConfigError,
            "--calibration {}: the training split of {} holds only {} images", r.count, cfg.data,
            ds->size());
  LoaderOptions lo;
  lo.batch_size = std::min<size_t>(64, std::max<size_t>(1, r.count));
  lo.shuffle = true;
  lo.seed = r.seed;
  lo.workers = r.workers;
  lo.uint8_nhwc = r.raw_pixels;
  std::unique_ptr<Loader> loader;
  std::string transform;
  if (from_store) {
    auto store = std::make_shared<StoreReader>(r.labels);
    loader =
        std::make_unique<Loader>(ds, train_transform(cfg), store_crop_source(cfg, *ds, store), lo);
    transform = fmt::format("the store's crops, resized to {} px", cfg.crop.size);
  } else {
    loader = std::make_unique<Loader>(ds, eval_transform(cfg), lo);
    transform = cfg.eval_resize > 0
                    ? fmt::format("Resize({}) + CenterCrop({})", cfg.eval_resize, cfg.crop.size)
                    : fmt::format("CenterCrop({})", cfg.crop.size);
  }
  CalibrationSet set;
  set.inputs =
      torch::empty({int64_t(r.count), int64_t(ds->channels()), cfg.crop.size, cfg.crop.size});
  nlohmann::json samples = nlohmann::json::array();
  if (r.count > 0) take_rows(*loader, r.count, r.raw_pixels, *ds, set.inputs, samples);

  nlohmann::json j = {
      {"format", "fkd-calibration"},
      {"version", 1},
      {"dtype", "float32"},
      {"byte_order", "little"},
      {"layout", "NCHW"},
      {"shape", set.inputs.sizes().vec()},
      {"values", r.raw_pixels ? "raw pixels in [0, 255]" : "(pixel / 255 - mean) / std"},
      {"mean", short_decimals(cfg.mean)},
      {"std", short_decimals(cfg.std)},
      {"source", from_store ? "label-store" : "train-split"},
      {"store", r.labels},
      {"data", cfg.data},
      {"transform", transform},
      {"seed", r.seed},
      {"samples", samples}};
  set.json = j.dump(1);
  set.source = from_store ? fmt::format("{} crops of label store {}", r.count, r.labels)
                          : fmt::format("{} images of the training split of {} ({})", r.count,
                                        cfg.data, transform);
  return set;
}

std::string calibration_json(const CalibrationSet& set, const std::string& tensor_file) {
  nlohmann::json j = nlohmann::json::parse(set.json);
  j["file"] = tensor_file;
  return j.dump(1) + "\n";
}

}  // namespace fkd::edge
