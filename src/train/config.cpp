#include <thread>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/image.h"
#include "fkd/models.h"
#include "fkd/train.h"
#include "fkd/transforms.h"

namespace fkd {

namespace {
constexpr float kFashionMnistMean = 0.2860f, kFashionMnistStd = 0.3530f;
const float kImageNetMean[3] = {0.485f, 0.456f, 0.406f};
const float kImageNetStd[3] = {0.229f, 0.224f, 0.225f};
}  // namespace

void resolve_config(TrainConfig& cfg, const Dataset& train_set) {
  if (cfg.channels == 0) cfg.channels = train_set.channels();
  FKD_CHECK(cfg.channels == 1 || cfg.channels == 3, ConfigError, "--channels must be 1 or 3");
  const bool idx = train_set.item_name(0).find("-idx3-ubyte") != std::string::npos;
  if (cfg.input_size == 0) cfg.input_size = idx ? train_set.load(0).height : 224;
  FKD_CHECK(cfg.input_size >= 8 && cfg.input_size <= 4096, ConfigError,
            "--input-size {} out of range [8, 4096]", cfg.input_size);
  if (cfg.aug == "auto") cfg.aug = cfg.input_size <= 64 ? "crop" : "rrc";
  parse_crop_kind(cfg.aug);  // validates
  parse_interp(cfg.interp);
  if (cfg.eval_resize == 0) {
    cfg.eval_resize = cfg.input_size <= 64 ? cfg.input_size : int(cfg.input_size / 0.875);
  }
  if (cfg.mean.empty() || cfg.std.empty()) {
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
  FKD_CHECK(int(cfg.mean.size()) == cfg.channels && int(cfg.std.size()) == cfg.channels,
            ConfigError, "--mean and --std need {} values (one per channel)", cfg.channels);
  for (float s : cfg.std) FKD_CHECK(s > 0, ConfigError, "--std values must be positive");
  FKD_CHECK(cfg.scale[0] > 0 && cfg.scale[0] <= cfg.scale[1] && cfg.scale[1] <= 1, ConfigError,
            "--scale must satisfy 0 < min <= max <= 1, got {} {}", cfg.scale[0], cfg.scale[1]);
  FKD_CHECK(cfg.ratio[0] > 0 && cfg.ratio[0] <= cfg.ratio[1], ConfigError,
            "--ratio must satisfy 0 < min <= max, got {} {}", cfg.ratio[0], cfg.ratio[1]);
  FKD_CHECK(cfg.flip >= 0 && cfg.flip <= 1, ConfigError, "--flip must be in [0, 1]");
  FKD_CHECK(cfg.optimizer == "sgd" || cfg.optimizer == "adamw", ConfigError,
            "--optimizer must be sgd or adamw, got '{}'", cfg.optimizer);
  FKD_CHECK(cfg.epochs >= 1, ConfigError, "--epochs must be at least 1");
  FKD_CHECK(cfg.batch_size >= 1, ConfigError, "--batch-size must be at least 1");
  FKD_CHECK(cfg.lr > 0, ConfigError, "--lr must be positive");
  FKD_CHECK(cfg.warmup_epochs >= 0 && cfg.warmup_epochs < cfg.epochs, ConfigError,
            "--warmup-epochs must be in [0, epochs)");
  FKD_CHECK(cfg.label_smoothing >= 0 && cfg.label_smoothing < 1, ConfigError,
            "--label-smoothing must be in [0, 1)");
  FKD_CHECK(cfg.workers >= 0, ConfigError, "--workers must be >= 0");
  if (cfg.mode == "auto") {
    FKD_CHECK(cfg.labels.empty() || cfg.teacher.empty(), ConfigError,
              "give --labels (FKD) or --teacher (online KD), not both");
    cfg.mode = !cfg.labels.empty() ? "fkd" : !cfg.teacher.empty() ? "kd" : "supervised";
  }
  FKD_CHECK(cfg.mode == "supervised" || cfg.mode == "fkd" || cfg.mode == "kd", ConfigError,
            "--mode must be supervised, fkd or kd, got '{}'", cfg.mode);
  FKD_CHECK(cfg.mode != "fkd" || !cfg.labels.empty(), ConfigError,
            "--mode fkd needs --labels STORE (made by fkd label)");
  FKD_CHECK(cfg.mode != "kd" || !cfg.teacher.empty(), ConfigError,
            "--mode kd needs --teacher (a TorchScript file or a checkpoint.pt)");
  if (cfg.mode != "fkd") cfg.num_crops = 1;
  FKD_CHECK(cfg.num_crops >= 1, ConfigError, "--num-crops must be at least 1");
  FKD_CHECK(cfg.batch_size % size_t(cfg.num_crops) == 0, ConfigError,
            "--batch-size {} must be a multiple of --num-crops {}", cfg.batch_size,
            cfg.num_crops);
  FKD_CHECK(cfg.temperature > 0, ConfigError, "--temperature must be positive");
  FKD_CHECK(cfg.hard_weight >= 0 && cfg.hard_weight <= 1, ConfigError,
            "--hard-weight must be in [0, 1]");
  FKD_CHECK(cfg.mixup >= 0 && cfg.cutmix >= 0, ConfigError,
            "--mixup and --cutmix alphas must be >= 0");
  FKD_CHECK(cfg.mix_prob >= 0 && cfg.mix_prob <= 1 && cfg.switch_prob >= 0 &&
                cfg.switch_prob <= 1,
            ConfigError, "--mix-prob and --switch-prob must be in [0, 1]");
  const auto names = model_names();
  FKD_CHECK(std::find(names.begin(), names.end(), cfg.model) != names.end(), ConfigError,
            "unknown model '{}'; known: {}", cfg.model, fmt::join(names, ", "));
}

namespace {
nlohmann::json to_json(const TrainConfig& c) {
  return {
      {"data", c.data}, {"channels", c.channels}, {"limit_train", c.limit_train},
      {"limit_val", c.limit_val}, {"aug", c.aug}, {"input_size", c.input_size},
      {"scale", {c.scale[0], c.scale[1]}}, {"ratio", {c.ratio[0], c.ratio[1]}},
      {"padding", c.padding}, {"flip", c.flip}, {"interp", c.interp}, {"mean", c.mean},
      {"std", c.std}, {"eval_resize", c.eval_resize}, {"model", c.model},
      {"optimizer", c.optimizer}, {"lr", c.lr}, {"momentum", c.momentum},
      {"nesterov", c.nesterov}, {"weight_decay", c.weight_decay}, {"epochs", c.epochs},
      {"warmup_epochs", c.warmup_epochs}, {"label_smoothing", c.label_smoothing},
      {"batch_size", c.batch_size}, {"seed", c.seed}, {"threads", c.threads},
      {"workers", c.workers}, {"device", c.device}, {"channels_last", c.channels_last},
      {"strict_data", c.strict_data}, {"out", c.out}, {"mode", c.mode}, {"labels", c.labels},
      {"num_crops", c.num_crops}, {"teacher", c.teacher}, {"temperature", c.temperature},
      {"hard_weight", c.hard_weight}, {"mixup", c.mixup}, {"cutmix", c.cutmix},
      {"mix_prob", c.mix_prob}, {"switch_prob", c.switch_prob},
  };
}
}  // namespace

std::string config_to_json(const TrainConfig& cfg) { return to_json(cfg).dump(); }

TrainConfig config_from_json(const std::string& text, const std::string& source) {
  try {
    const auto j = nlohmann::json::parse(text);
    TrainConfig c;
    j.at("data").get_to(c.data);
    j.at("channels").get_to(c.channels);
    j.at("limit_train").get_to(c.limit_train);
    j.at("limit_val").get_to(c.limit_val);
    j.at("aug").get_to(c.aug);
    j.at("input_size").get_to(c.input_size);
    for (int k = 0; k < 2; ++k) {
      c.scale[k] = j.at("scale").at(size_t(k)).get<float>();
      c.ratio[k] = j.at("ratio").at(size_t(k)).get<float>();
    }
    j.at("padding").get_to(c.padding);
    j.at("flip").get_to(c.flip);
    j.at("interp").get_to(c.interp);
    j.at("mean").get_to(c.mean);
    j.at("std").get_to(c.std);
    j.at("eval_resize").get_to(c.eval_resize);
    j.at("model").get_to(c.model);
    j.at("optimizer").get_to(c.optimizer);
    j.at("lr").get_to(c.lr);
    j.at("momentum").get_to(c.momentum);
    j.at("nesterov").get_to(c.nesterov);
    j.at("weight_decay").get_to(c.weight_decay);
    j.at("epochs").get_to(c.epochs);
    j.at("warmup_epochs").get_to(c.warmup_epochs);
    j.at("label_smoothing").get_to(c.label_smoothing);
    j.at("batch_size").get_to(c.batch_size);
    j.at("seed").get_to(c.seed);
    j.at("threads").get_to(c.threads);
    j.at("workers").get_to(c.workers);
    j.at("device").get_to(c.device);
    j.at("strict_data").get_to(c.strict_data);
    j.at("channels_last").get_to(c.channels_last);
    j.at("out").get_to(c.out);
    // Distillation fields (absent in supervised checkpoints of format 1: defaults).
    c.mode = j.value("mode", std::string("supervised"));
    c.labels = j.value("labels", std::string());
    c.num_crops = j.value("num_crops", 1);
    c.teacher = j.value("teacher", std::string());
    c.temperature = j.value("temperature", 1.0);
    c.hard_weight = j.value("hard_weight", 0.0);
    c.mixup = j.value("mixup", 0.0);
    c.cutmix = j.value("cutmix", 0.0);
    c.mix_prob = j.value("mix_prob", 1.0);
    c.switch_prob = j.value("switch_prob", 0.5);
    return c;
  } catch (const nlohmann::json::exception& e) {
    fail<FormatError>("{}: bad run configuration: {}", source, e.what());
  }
}

}  // namespace fkd
