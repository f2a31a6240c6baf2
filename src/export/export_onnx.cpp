// `fkd export CKPT OUT.onnx`: checkpoint -> frozen TorchScript -> ONNX (float32), the
// calibration set, and the int8 QDQ twin; every file checked before any is written.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>

#include <torch/csrc/jit/api/module.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "export/calibration.h"
#include "export/graph_walk.h"
#include "export/onnx_build.h"
#include "export/onnx_runner.h"
#include "export/quantize.h"
#include "fkd/edge.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "models/zoo_internal.h"
#include "train/checkpoint.h"

namespace fkd {
namespace {

/// --int8 without --calibration draws this many tensors.
constexpr size_t kDefaultCalibration = 512;

void validate(const OnnxExportOptions& o) {
  FKD_CHECK(o.method == "minmax" || o.method == "percentile", ConfigError,
            "--calibration-method '{}': expected minmax or percentile", o.method);
  FKD_CHECK(o.percentile > 50 && o.percentile <= 100, ConfigError,
            "--percentile {}: expected a share above 50 and at most 100", o.percentile);
  FKD_CHECK(!o.batch.empty(), ConfigError, "--batch: expected a number or a name");
  FKD_CHECK(!o.per_tensor_weights || o.int8, ConfigError,
            "--per-tensor-weights: applies to --int8 exports only");
}

/// The static batch of --batch N (0 for a named batch dimension).
int64_t static_batch(const std::string& batch) {
  if (batch.find_first_not_of("0123456789") != std::string::npos) return 0;
  const int64_t n = std::stoll(batch.substr(0, 9));
  FKD_CHECK(n >= 1 && n <= 65536, ConfigError, "--batch {}: expected 1 to 65536 or a name", batch);
  return n;
}

/// "student.onnx" -> "student".
std::string stem_of(const std::string& out) {
  const std::string ext = ".onnx";
  return out.size() > ext.size() && out.compare(out.size() - ext.size(), ext.size(), ext) == 0
             ? out.substr(0, out.size() - ext.size())
             : out;
}

/// The model's own logits on `x` (the exported model's input), as fkd evaluates it.
torch::Tensor reference_logits(Net& net, const torch::Tensor& x, const edge::OnnxInputSpec& in) {
  torch::NoGradGuard no_grad;
  torch::Tensor v = x;
  if (in.raw_pixels) {
    const int64_t c = int64_t(in.mean.size());
    v = (x / 255.0f - torch::tensor(in.mean).reshape({1, c, 1, 1})) /
        torch::tensor(in.std).reshape({1, c, 1, 1});
  }
  return net.forward(v);
}

/// max |a - b| / max |b|.
double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-12);
  return (a - b).abs().max().item<double>() / scale;
}

edge::OnnxInputSpec input_spec(const CheckpointMeta& meta, const TrainConfig& cfg, bool raw) {
  edge::OnnxInputSpec s;
  s.channels = meta.in_channels;
  s.size = cfg.crop.size;
  s.eval_resize = cfg.eval_resize;
  s.interp = cfg.interp;
  s.mean = cfg.mean;
  s.std = cfg.std;
  s.raw_pixels = raw;
  s.classes = meta.classes;
  return s;
}

void describe_model(onnx::ModelProto& m, const OnnxExportOptions& o, const CheckpointMeta& meta,
                    const edge::OnnxInputSpec& spec) {
  m.set_producer_name("fkd");
  m.set_producer_version(FKD_VERSION_STRING);
  m.set_doc_string(fmt::format("{} from {}: [N, {}, {}, {}] {} -> [N, {}] logits", meta.model,
                               o.checkpoint, spec.channels, spec.size, spec.size,
                               spec.raw_pixels ? "raw pixels in [0, 255]" : "normalized images",
                               meta.classes.size()));
  edge::set_metadata(m, "fkd.input", edge::input_spec_json(spec));
  edge::set_metadata(m, "fkd.model", meta.model);
}

std::string quantization_json(const edge::QuantPlan& plan, const std::string& calibration) {
  nlohmann::json j = {{"scheme",
                       "int8 QDQ: activations asymmetric per tensor, weights symmetric "
                       "in [-127, 127], bias int32 at input scale x weight scale"},
                      {"weights", plan.per_channel ? "per output channel" : "per tensor"},
                      {"method", plan.method},
                      {"calibration", plan.calibration},
                      {"calibration_source", calibration}};
  if (plan.method == "percentile") j["percentile"] = plan.percentile;
  return j.dump();
}

/// Every output file, written together: all are written to temporary files first, then
/// renamed, so a failure (a full disk) leaves none of them changed.
class OutputSet {
 public:
  void add(const std::string& path, std::string bytes) {
    files_.push_back({path, std::move(bytes)});
  }
  std::vector<std::string> commit() {
    std::vector<std::unique_ptr<DurableFile>> open;
    for (const auto& [path, bytes] : files_) {
      open.push_back(std::make_unique<DurableFile>(path));
      open.back()->write(bytes.data(), bytes.size());
    }
    std::vector<std::string> written;
    for (auto& f : open) {
      f->commit();
      written.push_back(f->path());
    }
    return written;
  }

 private:
  std::vector<std::pair<std::string, std::string>> files_;
};

}  // namespace

bool is_onnx_path(const std::string& path) {
  const std::string ext = ".onnx";
  return path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0;
}

OnnxExportResult export_onnx(const OnnxExportOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  validate(o);
  const int64_t batch = static_batch(o.batch);
  configure_threads(o.threads);
  torch::NoGradGuard no_grad;

  CheckpointFile f = open_checkpoint(o.checkpoint);
  std::shared_ptr<Net> net = checkpoint_model(f);
  if (o.ema) {
    const auto avg = checkpoint_ema(f);
    FKD_CHECK(!avg.empty(), ConfigError,
              "--ema: {} holds no weight average (train with --model-ema DECAY)", o.checkpoint);
    load_state_dict(*net, avg, o.checkpoint);
  }
  net->eval();
  TrainConfig cfg = f.meta.config;
  if (!o.data.empty()) cfg.data = o.data;
  const edge::OnnxInputSpec spec = input_spec(f.meta, cfg, o.normalize_inside);
  const int64_t side = cfg.crop.size;
  FKD_CHECK(side > 0 && spec.channels > 0, FormatError,
            "{}: the checkpoint records no input size or channels", o.checkpoint);

  OnnxExportResult r;
  const size_t count = o.calibration ? o.calibration : o.int8 ? kDefaultCalibration : 0;
  edge::CalibrationSet calib;
  if (count > 0) {
    edge::CalibrationRequest req{cfg, count, o.labels, o.seed, o.normalize_inside, o.workers};
    calib = edge::draw_calibration(req);
    r.calibration = count;
    r.calibration_source = calib.source;
  }

  // The walk's example: a fixed random input of the export's shape.
  const std::vector<int64_t> shape{batch > 0 ? batch : 2, spec.channels, side, side};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  torch::Tensor example =
      o.normalize_inside ? torch::rand(shape, gen) * 255.0f : torch::randn(shape, gen);
  torch::jit::Module scripted = script_module_copy(*net);
  torch::jit::Module frozen;
  try {
    frozen = torch::jit::freeze(scripted);
  } catch (const std::exception& e) {
    fail<ConfigError>("{}: the model cannot be frozen for export: {}", o.checkpoint,
                      torch_failure_line(e));
  }
  edge::WalkOptions wo;
  wo.input_shape = shape;
  wo.batch_name = batch > 0 ? "" : o.batch;
  if (o.normalize_inside) {
    wo.mean = cfg.mean;
    wo.std = cfg.std;
  }
  edge::WalkResult walk = edge::walk_graph(frozen, example, wo);
  r.ops = walk.ops.size();
  describe_model(walk.model, o, f.meta, spec);

  // The file computes what the model computes: checked on the calibration inputs (or the
  // example) with fkd's own evaluator before anything is written.
  const torch::Tensor check =
      count > 0 ? calib.inputs.narrow(0, 0, int64_t(std::min<size_t>(count, 256))) : example;
  auto fp32 = edge::make_onnx_model(walk.model, o.out);
  r.max_relative_error = relative_error(fp32->forward(check), reference_logits(*net, check, spec));
  FKD_CHECK(r.max_relative_error < 1e-3, Error,
            "ONNX export: the converted model's logits differ from the model's by {:.3g} "
            "(relative); please report this model",
            r.max_relative_error);

  OutputSet files;
  const std::string stem = stem_of(o.out);
  if (count > 0) {
    const std::string tensors = stem + ".calibration.f32";
    const torch::Tensor c = calib.inputs.contiguous();
    files.add(tensors, std::string(static_cast<const char*>(c.data_ptr()), c.nbytes()));
    files.add(stem + ".calibration.json",
              edge::calibration_json(calib, std::filesystem::path(tensors).filename().string()));
  }
  files.add(o.out, edge::serialize_model(walk.model, o.out));
  if (o.int8) {
    const std::string int8_path = stem + ".int8.onnx";
    const edge::QuantLayout layout = edge::quant_layout(walk.model, walk.ops);
    std::set<std::string> names;
    for (const auto& p : layout.points)
      if (!layout.same_as.count(p)) names.insert(p);
    auto ranges =
        edge::calibrate_ranges(*fp32, wo.input_name, calib.inputs, names, o.method, o.percentile);
    // Pixels are bytes: scale 1, zero point -128 holds every one exactly.
    if (o.normalize_inside) ranges[wo.input_name] = {0.0f, 255.0f};
    edge::QuantPlan plan =
        edge::make_quant_plan(walk.model, walk.ops, layout, ranges, !o.per_tensor_weights);
    plan.method = o.method;
    plan.percentile = o.percentile;
    plan.calibration = count;
    onnx::ModelProto qdq = edge::write_qdq(walk.model, walk.ops, layout, plan);
    edge::set_metadata(qdq, "fkd.quantization", quantization_json(plan, calib.source));
    edge::check_model(qdq, int8_path);
    auto int8 = edge::make_onnx_model(qdq, int8_path);
    FKD_CHECK(int8->integer_layers() == plan.layers.size(), Error,
              "internal: {} of the {} int8 layers of {} run in integers", int8->integer_layers(),
              plan.layers.size(), int8_path);
    int8->forward(check);  // computes without error before it is written
    files.add(int8_path, edge::serialize_model(qdq, int8_path));
  }
  r.files = files.commit();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace fkd
