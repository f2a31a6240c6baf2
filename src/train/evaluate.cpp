// `fkd eval` and `fkd export`, and the evaluation pass training runs after every epoch.
#include <fmt/core.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <map>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "checkpoint.h"
#include "device.h"
#include "dist/dist.h"
#include "evaluation.h"
#include "export/onnx_model.h"
#include "fkd/dataset.h"
#include "fkd/edge.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/models.h"
#include "fkd/progress.h"
#include "fkd/train.h"
#include "input.h"
#include "teachers.h"

namespace fkd {

TensorSink::TensorSink(std::string path, std::string layout)
    : path_(std::move(path)), layout_(std::move(layout)) {}

void TensorSink::add(const Batch& b, const torch::Tensor& t) {
  if (!on()) return;
  parts_.push_back(t.detach().to(torch::kCPU, torch::kFloat32).contiguous());
  for (int i = 0; i < b.n; ++i) {
    samples_.push_back(b.sample[size_t(i)]);
    labels_.push_back(b.targets[size_t(i)]);
  }
}

void TensorSink::write() const {
  if (!on()) return;
  const torch::Tensor all = parts_.empty() ? torch::empty({0}) : torch::cat(parts_).contiguous();
  write_file_durably(
      path_, std::string_view(static_cast<const char*>(all.data_ptr()), size_t(all.nbytes())));
  const nlohmann::json j = {{"format", "fkd-tensors"},
                            {"version", 1},
                            {"file", std::filesystem::path(path_).filename().string()},
                            {"dtype", "float32"},
                            {"byte_order", "little"},
                            {"layout", layout_},
                            {"shape", all.sizes().vec()},
                            {"samples", samples_},
                            {"labels", labels_}};
  write_file_durably(path_ + ".json", j.dump() + "\n");
}

EvalResult run_evaluation(const std::function<torch::Tensor(const torch::Tensor&)>& forward,
                          Loader& loader, const torch::Device& device, bool channels_last,
                          const std::string& label, Distributed* dist,
                          const std::function<void(const Batch&, const torch::Tensor& x,
                                                   const torch::Tensor& logits)>& each) {
  torch::NoGradGuard no_grad;
  loader.start_epoch(0);
  Progress bar(label, loader.dataset().size(), "img");
  // loss sum, top-1 hits, top-5 hits, samples
  torch::Tensor totals = torch::zeros({4}, torch::TensorOptions(device).dtype(torch::kDouble));
  Batch b;
  while (loader.next(b)) {
    if (b.n == 0) continue;
    const auto x = batch_images(b, device, channels_last);
    const auto y = batch_targets(b, device);
    const auto logits = forward(x).to(torch::kFloat32);
    if (each) each(b, x, logits);
    totals[0] +=
        torch::nn::functional::cross_entropy(
            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
            .to(torch::kDouble);
    const int64_t k = std::min<int64_t>(5, logits.size(1));
    const auto pred = std::get<1>(logits.topk(k, /*dim=*/1));
    const auto hit = pred.eq(y.unsqueeze(1));
    // Top-1 is the first largest logit, as argmax everywhere: int8 logits tie often.
    totals[1] += logits.argmax(1).eq(y).sum().to(torch::kDouble);
    totals[2] += hit.any(1).sum().to(torch::kDouble);
    totals[3] += double(b.n);
    bar.advance(uint64_t(b.global_n));
  }
  bar.finish();
  if (dist) {
    std::vector<torch::Tensor> sums{totals};
    dist->all_reduce_sum(sums, "summing the evaluation counts");
  }
  const auto t = totals.to(torch::kCPU);
  const double n = t[3].item<double>();
  EvalResult r;
  r.samples = size_t(n);
  r.bad_samples = loader.skipped();
  if (n > 0) {
    r.loss = t[0].item<double>() / n;
    r.top1 = 100.0 * t[1].item<double>() / n;
    r.top5 = 100.0 * t[2].item<double>() / n;
  }
  return r;
}

EvalResult evaluate_file(const std::string& model_path, const EvalOptions& opts) {
  configure_threads(opts.threads);
  const torch::Device device = parse_device(opts.device);
  FKD_CHECK(opts.split == "val" || opts.split == "train", ConfigError,
            "--split '{}': expected val or train", opts.split);
  FKD_CHECK(opts.batch_size >= 1, ConfigError, "--batch-size {}: expected at least 1",
            opts.batch_size);
  const Split split = opts.split == "train" ? Split::kTrain : Split::kVal;

  // A checkpoint brings its model and the transform it trained with; a TorchScript model
  // brings neither transform nor classes.
  std::shared_ptr<Net> net;
  std::unique_ptr<Teacher> scripted;
  std::optional<CheckpointFile> ckpt = try_open_checkpoint(model_path);
  if (ckpt) {
    net = checkpoint_model(*ckpt);
  } else {
    scripted = load_torchscript_teacher(model_path, device, {/*optimize=*/true});
  }
  const InputOverrides over = eval_overrides(opts);
  DatasetOptions dopt;
  dopt.channels = opts.channels ? opts.channels : ckpt ? ckpt->meta.config.channels : 0;
  dopt.limit = opts.limit;
  auto ds = open_dataset(opts.data, split, dopt);
  const TrainConfig cfg = model_input(ckpt ? &ckpt->meta.config : nullptr, over, opts.data, *ds);
  if (net) {
    FKD_CHECK(ckpt->meta.classes == ds->classes(), DataError,
              "{}: its {} classes differ from the {} classes of {}", model_path,
              ckpt->meta.classes.size(), ds->classes().size(), opts.data);
    place_model(*net, device, opts.channels_last);
    net->eval();
  } else {
    check_teacher_classes(*scripted, model_path, device, cfg.channels, cfg.crop.size,
                          int(ds->classes().size()), opts.data, "model");
  }

  LoaderOptions lopt;
  lopt.batch_size = opts.batch_size;
  lopt.shuffle = false;
  lopt.workers = opts.workers;
  Loader loader(ds, eval_transform(cfg), lopt);
  const int64_t num_classes = int64_t(ds->classes().size());
  auto forward = [&](const torch::Tensor& x) {
    torch::Tensor logits = net ? net->forward(x) : scripted->logits(x);
    FKD_CHECK(logits.dim() == 2 && logits.size(1) == num_classes, DataError,
              "{}: the model outputs {} but {} has {} classes", model_path,
              c10::str(logits.sizes()), opts.data, num_classes);
    return logits;
  };
  TensorSink inputs(opts.save_inputs, "NCHW"), logits(opts.save_logits, "NC");
  std::function<void(const Batch&, const torch::Tensor&, const torch::Tensor&)> each;
  if (inputs.on() || logits.on())
    each = [&](const Batch& b, const torch::Tensor& x, const torch::Tensor& y) {
      inputs.add(b, x);
      logits.add(b, y);
    };
  const EvalResult r = run_evaluation(forward, loader, device, opts.channels_last && net != nullptr,
                                      "eval", nullptr, each);
  inputs.write();
  logits.write();
  return r;
}

namespace {
/// A float as the shortest decimal that reads back as it (0.286, not 0.28600001335144043).
double shortest(float f) { return std::stod(fmt::format("{}", f)); }
std::vector<double> shortest(const std::vector<float>& v) {
  std::vector<double> out;
  for (float f : v) out.push_back(shortest(f));
  return out;
}
}  // namespace

std::string export_metadata_json(const ExportMetadata& m) {
  const CropSampler& c = m.train_crop;
  nlohmann::json crop = {
      {"sampler", c.kind == CropKind::kPadded ? "random_crop" : "random_resized_crop"},
      {"size", c.size},
      {"flip", shortest(c.flip)}};
  if (c.kind == CropKind::kPadded) {
    crop["padding"] = c.padding;
  } else {
    crop["scale"] = {shortest(c.scale[0]), shortest(c.scale[1])};
    crop["ratio"] = {shortest(c.ratio[0]), shortest(c.ratio[1])};
  }
  const nlohmann::json j = {
      {"format", "fkd-export"},
      {"version", 1},
      {"export", m.format},
      {"model", m.model},
      {"weights", m.ema ? "ema" : "model"},
      {"channels", m.channels},
      {"input_size", m.input_size},
      {"mean", shortest(m.mean)},
      {"std", shortest(m.std)},
      {"interpolation", m.interpolation},
      {"eval", {{"resize", m.eval_resize}, {"center_crop", m.input_size}}},
      {"train_crop", crop},
      {"classes", m.classes},
  };
  return j.dump(2) + "\n";
}

std::string describe_export(const ExportMetadata& m) {
  const auto floats = [](const std::vector<float>& v) {
    std::string s;
    for (float x : v) s += fmt::format("{}{:g}", s.empty() ? "" : ", ", x);
    return "[" + s + "]";
  };
  const size_t n = m.classes.size();
  const std::string classes =
      n <= 3 ? fmt::format("{}", fmt::join(m.classes, ", "))
             : fmt::format("{}, {}, ..., {}", m.classes[0], m.classes[1], m.classes[n - 1]);
  const std::string resize =
      m.eval_resize > 0 ? fmt::format("shorter side resized to {}, then ", m.eval_resize) : "";
  return fmt::format(
      "{} takes {}x{}x{} input: pixels / 255, mean {}, std {}; {}center crop {} ({}); "
      "trained on {}; {} classes ({}); in fkd.json",
      m.model, m.channels, m.input_size, m.input_size, floats(m.mean), floats(m.std), resize,
      m.input_size, m.interpolation, describe_crops(m.train_crop), n, classes);
}

ExportMetadata export_model(const std::string& checkpoint, const std::string& out,
                            const std::string& format, bool ema) {
  FKD_CHECK(format == "torchscript" || format == "state_dict", ConfigError,
            "--format '{}': expected torchscript or state_dict", format);
  CheckpointFile f = open_checkpoint(checkpoint);
  const TrainConfig& cfg = f.meta.config;
  ExportMetadata meta;
  meta.format = format;
  meta.model = f.meta.model;
  meta.ema = ema;
  meta.channels = f.meta.in_channels;
  meta.input_size = cfg.crop.size;
  meta.mean = cfg.mean;
  meta.std = cfg.std;
  meta.interpolation = cfg.interp;
  meta.eval_resize = cfg.eval_resize;
  meta.train_crop = cfg.crop;
  meta.classes = f.meta.classes;
  const std::map<std::string, std::string> extra = {{"fkd.json", export_metadata_json(meta)}};
  auto net = checkpoint_model(f);
  if (ema) {
    const auto avg = checkpoint_ema(f);
    FKD_CHECK(!avg.empty(), ConfigError,
              "--ema: {} holds no weight average (train with --model-ema DECAY)", checkpoint);
    load_state_dict(*net, avg, checkpoint);
  }
  net->eval();
  if (format == "torchscript") {
    export_torchscript(*net, out, extra);
  } else {
    save_state_dict_pickle(*net, out, extra);
  }
  return meta;
}

}  // namespace fkd
