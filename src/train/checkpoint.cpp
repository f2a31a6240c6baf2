#include "checkpoint.h"

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "fkd/error.h"
#include "fkd/file_io.h"

namespace fkd {

namespace {

nlohmann::json metrics_json(const EpochMetrics& m) {
  nlohmann::json j = {{"epoch", m.epoch},
                      {"train_loss", m.train_loss},
                      {"train_top1", m.train_top1},
                      {"val_loss", m.val_loss},
                      {"top1", m.top1},
                      {"top5", m.top5},
                      {"lr", m.lr},
                      {"samples_per_s", m.samples_per_s},
                      {"seconds", m.seconds},
                      {"train_seconds", m.train_seconds},
                      {"epochs_covered", m.epochs_covered},
                      {"skipped_steps", m.skipped_steps},
                      {"data_seconds", m.data_seconds}};
  if (!std::isnan(m.ema_top1)) {
    j["ema_val_loss"] = m.ema_val_loss;
    j["ema_top1"] = m.ema_top1;
    j["ema_top5"] = m.ema_top5;
  }
  return j;
}

EpochMetrics metrics_from(const nlohmann::json& j) {
  EpochMetrics m;
  j.at("epoch").get_to(m.epoch);
  j.at("train_loss").get_to(m.train_loss);
  j.at("train_top1").get_to(m.train_top1);
  j.at("val_loss").get_to(m.val_loss);
  j.at("top1").get_to(m.top1);
  j.at("top5").get_to(m.top5);
  j.at("lr").get_to(m.lr);
  j.at("samples_per_s").get_to(m.samples_per_s);
  j.at("seconds").get_to(m.seconds);
  m.train_seconds = j.value("train_seconds", 0.0);
  m.epochs_covered = j.value("epochs_covered", 1);
  m.skipped_steps = j.value("skipped_steps", int64_t(0));
  m.data_seconds = j.value("data_seconds", 0.0);
  if (j.contains("ema_top1")) {
    j.at("ema_val_loss").get_to(m.ema_val_loss);
    j.at("ema_top1").get_to(m.ema_top1);
    j.at("ema_top5").get_to(m.ema_top5);
  }
  return m;
}

CheckpointMeta parse_meta(const std::string& text, const std::string& path) {
  try {
    const auto j = nlohmann::json::parse(text);
    FKD_CHECK(j.value("format", "") == "fkd-checkpoint", FormatError,
              "{}: not an fkd checkpoint (format field is '{}')", path, j.value("format", ""));
    const int version = j.at("version").get<int>();
    FKD_CHECK(version >= 1 && version <= kCheckpointVersion, FormatError,
              "{}: checkpoint version {} is newer than this fkd supports ({}); upgrade fkd", path,
              version, kCheckpointVersion);
    CheckpointMeta m;
    j.at("epochs_done").get_to(m.epochs_done);
    j.at("step").get_to(m.step);
    j.at("model").get_to(m.model);
    j.at("in_channels").get_to(m.in_channels);
    j.at("num_classes").get_to(m.num_classes);
    j.at("classes").get_to(m.classes);
    m.config = config_from_json(j.at("config").dump(), path);
    for (const auto& h : j.at("history")) m.history.push_back(metrics_from(h));
    return m;
  } catch (const nlohmann::json::exception& e) {
    fail<FormatError>("{}: bad checkpoint metadata: {}", path, e.what());
  }
}

}  // namespace

std::string metrics_to_json(const EpochMetrics& m) { return metrics_json(m).dump(); }

void save_checkpoint(const std::string& path, const CheckpointMeta& meta, Net& net,
                     torch::optim::Optimizer* optimizer, const CheckpointExtras& extras) {
  nlohmann::json j = {{"format", "fkd-checkpoint"},
                      {"version", kCheckpointVersion},
                      {"epochs_done", meta.epochs_done},
                      {"step", meta.step},
                      {"model", meta.model},
                      {"in_channels", meta.in_channels},
                      {"num_classes", meta.num_classes},
                      {"classes", meta.classes},
                      {"config", nlohmann::json::parse(config_to_json(meta.config))},
                      {"history", nlohmann::json::array()}};
  for (const auto& h : meta.history) j["history"].push_back(metrics_json(h));

  torch::serialize::OutputArchive ar;
  ar.write("meta", c10::IValue(j.dump()));
  torch::serialize::OutputArchive model_ar;
  net.save(model_ar);
  ar.write("model", model_ar);
  if (optimizer) {
    torch::serialize::OutputArchive opt_ar;
    optimizer->save(opt_ar);
    ar.write("optimizer", opt_ar);
  }
  ar.write("rng", at::detail::getDefaultCPUGenerator().get_state());
  if (extras.ema) {
    c10::Dict<std::string, at::Tensor> ema;
    for (const auto& [name, t] : *extras.ema) ema.insert(name, t);
    ar.write("ema", c10::IValue(ema));
  }
  if (extras.scaler) ar.write("amp_scaler", *extras.scaler);
  if (const std::vector<uint8_t>* archive = scripted_archive(net)) {
    // The run is self-contained: eval, export and --resume need no other file.
    ar.write("student", torch::from_blob(const_cast<uint8_t*>(archive->data()),
                                         {int64_t(archive->size())}, torch::kUInt8));
  }

  // torch writes through a callback that never fails, so that a full disk cannot make its
  // archive writer throw from a destructor (an abort); the error surfaces at commit().
  DurableFile file(path);
  try {
    ar.save_to([&file](const void* data, size_t size) { return file.write_deferred(data, size); });
  } catch (const c10::Error& e) {
    fail<IoError>("{}: cannot serialize the checkpoint: {}", path,
                  one_line(e.what_without_backtrace()));
  }
  file.commit();
}

void write_metrics_file(const std::string& path, const std::vector<EpochMetrics>& history) {
  std::string text;
  for (const auto& m : history) text += metrics_to_json(m) + "\n";
  write_file_durably(path, text);
}

std::optional<CheckpointFile> try_open_checkpoint(const std::string& path) {
  FKD_CHECK(std::filesystem::exists(path), IoError, "{}: no such file", path);
  // Neither a checkpoint nor a TorchScript file then: say why, not what the zip reader
  // stumbles on.
  if (const std::string damage = zip_damage(path); !damage.empty()) {
    fail<FormatError>("{}: {}", path, damage);
  }
  CheckpointFile f;
  f.path = path;
  try {
    f.archive.load_from(path);
  } catch (const c10::Error&) {
    return std::nullopt;
  }
  c10::IValue v;
  if (!f.archive.try_read("meta", v) || !v.isString()) return std::nullopt;
  f.meta = parse_meta(v.toStringRef(), path);
  return f;
}

CheckpointFile open_checkpoint(const std::string& path) {
  std::optional<CheckpointFile> f = try_open_checkpoint(path);
  FKD_CHECK(f.has_value(), FormatError,
            "{}: not an fkd checkpoint (no torch archive with fkd metadata)", path);
  return std::move(*f);
}

CheckpointMeta read_checkpoint_meta(const std::string& path) { return open_checkpoint(path).meta; }

void restore_model(CheckpointFile& f, Net& net) {
  try {
    torch::serialize::InputArchive model_ar;
    FKD_CHECK(f.archive.try_read("model", model_ar), FormatError, "{}: checkpoint has no model",
              f.path);
    net.load(model_ar);
  } catch (const c10::Error& e) {
    fail<FormatError>("{}: checkpoint does not match the model: {}", f.path,
                      e.what_without_backtrace());
  }
}

void restore_training_state(CheckpointFile& f, torch::optim::Optimizer& optimizer) {
  try {
    torch::serialize::InputArchive opt_ar;
    FKD_CHECK(f.archive.try_read("optimizer", opt_ar), FormatError,
              "{}: checkpoint has no optimizer state (weights only); cannot resume from it",
              f.path);
    optimizer.load(opt_ar);
    torch::Tensor state;
    if (f.archive.try_read("rng", state)) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle to the global one
      gen.set_state(state);
    }
  } catch (const c10::Error& e) {
    fail<FormatError>("{}: checkpoint's optimizer state does not match the run: {}", f.path,
                      e.what_without_backtrace());
  }
}

std::vector<std::pair<std::string, torch::Tensor>> checkpoint_ema(CheckpointFile& f) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  c10::IValue v;
  if (!f.archive.try_read("ema", v)) return out;
  FKD_CHECK(v.isGenericDict(), FormatError, "{}: the checkpoint's 'ema' is not a dict", f.path);
  for (const auto& e : v.toGenericDict()) {
    FKD_CHECK(e.key().isString() && e.value().isTensor(), FormatError,
              "{}: the checkpoint's 'ema' holds an entry that is not name -> tensor", f.path);
    out.emplace_back(e.key().toStringRef(), e.value().toTensor());
  }
  return out;
}

torch::Tensor checkpoint_scaler(CheckpointFile& f) {
  torch::Tensor t;
  if (!f.archive.try_read("amp_scaler", t)) return {};
  return t;
}

std::optional<std::vector<uint8_t>> checkpoint_student_archive(CheckpointFile& f) {
  torch::Tensor t;
  if (!f.archive.try_read("student", t)) return std::nullopt;
  FKD_CHECK(t.scalar_type() == torch::kUInt8 && t.dim() == 1, FormatError,
            "{}: the student archive is a {} tensor of {} dimensions, expected bytes", f.path,
            c10::toString(t.scalar_type()), t.dim());
  t = t.contiguous();
  const uint8_t* p = t.data_ptr<uint8_t>();
  return std::vector<uint8_t>(p, p + t.numel());
}

std::shared_ptr<Net> checkpoint_model(CheckpointFile& f) {
  std::optional<std::vector<uint8_t>> archive = checkpoint_student_archive(f);
  auto net = archive ? load_scripted_model(std::move(*archive), f.meta.model, f.meta.in_channels,
                                           f.meta.num_classes)
                     : make_model(f.meta.model, f.meta.in_channels, f.meta.num_classes);
  restore_model(f, *net);
  return net;
}

std::shared_ptr<Net> load_checkpoint(const std::string& path, CheckpointMeta* meta_out) {
  CheckpointFile f = open_checkpoint(path);
  auto net = checkpoint_model(f);
  if (meta_out) *meta_out = std::move(f.meta);
  return net;
}

}  // namespace fkd
