// `fkd eval MODEL.onnx`: an exported model on a dataset split, with the transform its
// fkd.input metadata records, computed by fkd's own evaluator (onnx_model.h).
#include <torch/torch.h>

#include "export/onnx_model.h"
#include "fkd/dataset.h"
#include "fkd/edge.h"
#include "fkd/error.h"
#include "fkd/train.h"
#include "train/device.h"
#include "train/evaluation.h"
#include "train/input.h"

namespace fkd {
namespace {

/// The input transform a file records, as a config's input fields.
TrainConfig recorded_input(const edge::OnnxInputSpec& s) {
  TrainConfig c;
  c.channels = s.channels;
  c.crop.size = s.size;
  c.eval_resize = s.eval_resize;
  c.interp = s.interp;
  c.mean = s.mean;
  c.std = s.std;
  return c;
}

}  // namespace

EvalResult evaluate_onnx_file(const std::string& path, const EvalOptions& opts) {
  configure_threads(opts.threads);
  FKD_CHECK(parse_device(opts.device).is_cpu(), ConfigError,
            "--device {}: ONNX models are evaluated on the CPU", opts.device);
  FKD_CHECK(opts.split == "val" || opts.split == "train", ConfigError,
            "--split '{}': expected val or train", opts.split);
  FKD_CHECK(opts.batch_size >= 1, ConfigError, "--batch-size {}: expected at least 1",
            opts.batch_size);
  const auto model = edge::OnnxModel::open(path);
  const edge::OnnxInputSpec spec = model->input_spec();
  const TrainConfig recorded = recorded_input(spec);

  const InputOverrides over = eval_overrides(opts);
  DatasetOptions dopt;
  dopt.channels = opts.channels ? opts.channels : spec.channels;
  dopt.limit = opts.limit;
  auto ds = open_dataset(opts.data, opts.split == "train" ? Split::kTrain : Split::kVal, dopt);
  TrainConfig cfg = model_input(&recorded, over, opts.data, *ds);
  FKD_CHECK(spec.classes == ds->classes(), DataError,
            "{}: its {} classes differ from the {} classes of {}", path, spec.classes.size(),
            ds->classes().size(), opts.data);
  // A model that normalizes inside takes pixels: the loader gives pixel / 255, made whole
  // again below.
  if (spec.raw_pixels) {
    cfg.mean.assign(size_t(cfg.channels), 0.0f);
    cfg.std.assign(size_t(cfg.channels), 1.0f);
  }
  auto model_x = [&](const torch::Tensor& x) { return spec.raw_pixels ? (x * 255.0f).round() : x; };

  LoaderOptions lopt;
  lopt.batch_size = opts.batch_size;
  lopt.shuffle = false;
  lopt.workers = opts.workers;
  Loader loader(ds, eval_transform(cfg), lopt);
  const int64_t num_classes = int64_t(ds->classes().size());
  auto forward = [&](const torch::Tensor& x) {
    torch::Tensor logits = model->forward(model_x(x));
    FKD_CHECK(logits.dim() == 2 && logits.size(1) == num_classes, DataError,
              "{}: the model outputs {} but {} has {} classes", path, c10::str(logits.sizes()),
              opts.data, num_classes);
    return logits;
  };
  TensorSink inputs(opts.save_inputs, "NCHW"), logits(opts.save_logits, "NC");
  auto each = [&](const Batch& b, const torch::Tensor& x, const torch::Tensor& y) {
    inputs.add(b, model_x(x));
    logits.add(b, y);
  };
  const EvalResult r =
      run_evaluation(forward, loader, torch::kCPU, /*channels_last=*/false, "eval", nullptr, each);
  inputs.write();
  logits.write();
  return r;
}

}  // namespace fkd
