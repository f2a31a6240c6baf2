// Training configuration: option checks, resolution of the auto fields from the data, and
// the JSON form checkpoints keep.
#include <algorithm>
#include <thread>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "amp.h"
#include "fkd/dataset.h"
#include "fkd/enum_names.h"
#include "fkd/error.h"
#include "fkd/models.h"
#include "fkd/train.h"
#include "fkd/train_input.h"
#include "fkd/transforms.h"

namespace fkd {

namespace {
constexpr EnumNames<TrainMode, 4> kModes({{{TrainMode::kAuto, "auto"},
                                           {TrainMode::kSupervised, "supervised"},
                                           {TrainMode::kFkd, "fkd"},
                                           {TrainMode::kKd, "kd"}}});
}  // namespace

const char* mode_name(TrainMode m) { return kModes.name(m); }
TrainMode parse_mode(const std::string& name) { return kModes.parse(name, "--mode"); }

void validate_config(const TrainConfig& cfg) {
  validate_input_options(cfg);  // shared with the Python module
  const auto names = model_names();
  FKD_CHECK(
      std::find(names.begin(), names.end(), cfg.model) != names.end() || is_model_file(cfg.model),
      ConfigError, "--model '{}': unknown; known: {}, or a TorchScript file (.pt, .pth)", cfg.model,
      fmt::join(names, ", "));
  FKD_CHECK(cfg.optimizer == "sgd" || cfg.optimizer == "adamw", ConfigError,
            "--optimizer '{}': expected sgd or adamw", cfg.optimizer);
  FKD_CHECK(cfg.lr > 0, ConfigError, "--lr {}: expected a positive rate", cfg.lr);
  FKD_CHECK(cfg.momentum >= 0 && cfg.momentum < 1, ConfigError, "--momentum {}: expected 0 to 1",
            cfg.momentum);
  FKD_CHECK(cfg.weight_decay >= 0, ConfigError, "--weight-decay {}: expected >= 0",
            cfg.weight_decay);
  FKD_CHECK(cfg.epochs >= 1, ConfigError, "--epochs {}: expected at least 1", cfg.epochs);
  FKD_CHECK(cfg.warmup_epochs >= 0 && cfg.warmup_epochs < cfg.epochs, ConfigError,
            "--warmup-epochs {}: expected 0 to --epochs {} (exclusive)", cfg.warmup_epochs,
            cfg.epochs);
  FKD_CHECK(cfg.label_smoothing >= 0 && cfg.label_smoothing < 1, ConfigError,
            "--label-smoothing {}: expected 0 to 1 (exclusive)", cfg.label_smoothing);
  FKD_CHECK(cfg.mode != TrainMode::kAuto || cfg.labels.empty() || cfg.teacher.empty(), ConfigError,
            "give --labels (FKD) or --teacher (online KD), not both");
  FKD_CHECK(cfg.mode != TrainMode::kFkd || !cfg.labels.empty(), ConfigError,
            "--mode fkd needs --labels STORE (made by fkd label)");
  FKD_CHECK(cfg.mode != TrainMode::kKd || !cfg.teacher.empty(), ConfigError,
            "--mode kd needs --teacher (a TorchScript file or a checkpoint.pt)");
  FKD_CHECK(cfg.temperature > 0, ConfigError, "--temperature {}: expected a positive value",
            cfg.temperature);
  FKD_CHECK(cfg.hard_weight >= 0 && cfg.hard_weight <= 1, ConfigError,
            "--hard-weight {}: expected 0 to 1", cfg.hard_weight);
  FKD_CHECK(cfg.mixup >= 0, ConfigError, "--mixup {}: expected an alpha >= 0", cfg.mixup);
  FKD_CHECK(cfg.cutmix >= 0, ConfigError, "--cutmix {}: expected an alpha >= 0", cfg.cutmix);
  FKD_CHECK(cfg.mix_prob >= 0 && cfg.mix_prob <= 1, ConfigError, "--mix-prob {}: expected 0 to 1",
            cfg.mix_prob);
  FKD_CHECK(cfg.switch_prob >= 0 && cfg.switch_prob <= 1, ConfigError,
            "--switch-prob {}: expected 0 to 1", cfg.switch_prob);
  FKD_CHECK(cfg.threads >= 0, ConfigError, "--threads {}: expected >= 0 (0 = all cores)",
            cfg.threads);
  FKD_CHECK(cfg.dist_timeout > 0, ConfigError, "--dist-timeout {}: expected a positive value",
            cfg.dist_timeout);
  parse_amp(cfg.amp);  // throws naming the choices
  FKD_CHECK(cfg.model_ema == 0 || (cfg.model_ema > 0 && cfg.model_ema < 1), ConfigError,
            "--model-ema {}: expected a decay in (0, 1), such as 0.9998 (0 = off)", cfg.model_ema);
  FKD_CHECK(
      cfg.input_format == "auto" || cfg.input_format == "float" || cfg.input_format == "uint8",
      ConfigError, "--input-format '{}': expected auto, float or uint8", cfg.input_format);
  FKD_CHECK(cfg.stop_after >= 0, ConfigError, "--stop-after {}: expected at least 1",
            cfg.stop_after);
}

void resolve_config(TrainConfig& cfg, const Dataset& train_set, std::vector<std::string>* notes) {
  if (cfg.mode == TrainMode::kAuto) {
    FKD_CHECK(cfg.labels.empty() || cfg.teacher.empty(), ConfigError,
              "give --labels (FKD) or --teacher (online KD), not both");
    cfg.mode = !cfg.labels.empty()    ? TrainMode::kFkd
               : !cfg.teacher.empty() ? TrainMode::kKd
                                      : TrainMode::kSupervised;
  }
  if (cfg.mode != TrainMode::kFkd) cfg.num_crops = 1;
  validate_config(cfg);
  resolve_input(cfg, train_set, notes);
  validate_config(cfg);
}

namespace {
nlohmann::json to_json(const TrainConfig& c) {
  return {
      {"data", c.data},
      {"channels", c.channels},
      {"limit_train", c.limit_train},
      {"limit_val", c.limit_val},
      {"aug", crop_kind_name(c.crop.kind)},
      {"input_size", c.crop.size},
      {"scale", {c.crop.scale[0], c.crop.scale[1]}},
      {"ratio", {c.crop.ratio[0], c.crop.ratio[1]}},
      {"padding", c.crop.padding},
      {"flip", c.crop.flip},
      {"interp", c.interp},
      {"mean", c.mean},
      {"std", c.std},
      {"eval_resize", c.eval_resize},
      {"model", c.model},
      {"optimizer", c.optimizer},
      {"lr", c.lr},
      {"momentum", c.momentum},
      {"nesterov", c.nesterov},
      {"weight_decay", c.weight_decay},
      {"no_decay_norm_bias", c.no_decay_norm_bias},
      {"epochs", c.epochs},
      {"warmup_epochs", c.warmup_epochs},
      {"label_smoothing", c.label_smoothing},
      {"batch_size", c.batch_size},
      {"seed", c.seed},
      {"threads", c.threads},
      {"workers", c.workers},
      {"device", c.device},
      {"channels_last", c.channels_last},
      {"strict_data", c.strict_data},
      {"out", c.out},
      {"mode", mode_name(c.mode)},
      {"labels", c.labels},
      {"num_crops", c.num_crops},
      {"teacher", c.teacher},
      {"temperature", c.temperature},
      {"hard_weight", c.hard_weight},
      {"mixup", c.mixup},
      {"cutmix", c.cutmix},
      {"mix_prob", c.mix_prob},
      {"switch_prob", c.switch_prob},
      {"sync_bn", c.sync_bn},
      {"dist_timeout", c.dist_timeout},
      {"amp", c.amp},
      {"model_ema", c.model_ema},
      {"model_ema_warmup", c.model_ema_warmup},
      {"input_format", c.input_format},
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
    c.crop.kind = parse_crop_kind(j.at("aug").get<std::string>());
    j.at("input_size").get_to(c.crop.size);
    for (int k = 0; k < 2; ++k) {
      c.crop.scale[k] = j.at("scale").at(size_t(k)).get<float>();
      c.crop.ratio[k] = j.at("ratio").at(size_t(k)).get<float>();
    }
    j.at("padding").get_to(c.crop.padding);
    j.at("flip").get_to(c.crop.flip);
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
    c.no_decay_norm_bias = j.value("no_decay_norm_bias", false);
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
    c.mode = parse_mode(j.value("mode", std::string("supervised")));
    c.labels = j.value("labels", std::string());
    c.num_crops = j.value("num_crops", 1);
    c.teacher = j.value("teacher", std::string());
    c.temperature = j.value("temperature", 1.0);
    c.hard_weight = j.value("hard_weight", 0.0);
    c.mixup = j.value("mixup", 0.0);
    c.cutmix = j.value("cutmix", 0.0);
    c.mix_prob = j.value("mix_prob", 1.0);
    c.switch_prob = j.value("switch_prob", 0.5);
    c.sync_bn = j.value("sync_bn", false);
    c.dist_timeout = j.value("dist_timeout", 600.0);
    // Precision fields (absent before mixed precision: float32, no EMA).
    c.amp = j.value("amp", std::string("off"));
    c.model_ema = j.value("model_ema", 0.0);
    c.model_ema_warmup = j.value("model_ema_warmup", false);
    c.input_format = j.value("input_format", std::string("float"));
    return c;
  } catch (const nlohmann::json::exception& e) {
    fail<FormatError>("{}: bad run configuration: {}", source, e.what());
  } catch (const ConfigError& e) {
    fail<FormatError>("{}: bad run configuration: {}", source, e.what());
  }
}

}  // namespace fkd
