#include <fmt/core.h>

#include "checkpoint.h"
#include "fkd/error.h"
#include "fkd/models.h"
#include "fkd/train.h"
#include "session.h"

namespace fkd {

EvalResult evaluate_file(const std::string& model_path, const EvalOptions& opts) {
  configure_threads(opts.threads);
  const torch::Device device = parse_device(opts.device);
  FKD_CHECK(opts.split == "val" || opts.split == "train", ConfigError,
            "--split must be val or train, got '{}'", opts.split);
  const Split split = opts.split == "train" ? Split::kTrain : Split::kVal;

  // The transform: the checkpoint's own, or the dataset defaults for a TorchScript model,
  // with explicit options taking precedence.
  TrainConfig cfg;
  std::shared_ptr<Net> net;
  std::unique_ptr<Teacher> scripted;
  std::vector<std::string> classes;
  if (is_checkpoint(model_path)) {
    CheckpointMeta meta;
    net = load_checkpoint(model_path, &meta);
    cfg = meta.config;
    classes = meta.classes;
  } else {
    scripted = load_torchscript_teacher(model_path, device, /*optimize=*/true);
  }
  // A TorchScript model brings no transform: start from the dataset's defaults.
  if (scripted) cfg.model = model_names().front();  // only for resolve_config's checks
  cfg.data = opts.data;
  if (opts.channels) cfg.channels = opts.channels;
  if (opts.input_size) cfg.input_size = opts.input_size;
  if (opts.eval_resize) cfg.eval_resize = opts.eval_resize;
  if (!opts.mean.empty()) cfg.mean = opts.mean;
  if (!opts.std.empty()) cfg.std = opts.std;

  DatasetOptions dopt;
  dopt.channels = cfg.channels;
  dopt.limit = opts.limit;
  auto ds = open_dataset(opts.data, split, dopt);
  resolve_config(cfg, *ds);
  if (net) {
    FKD_CHECK(classes == ds->classes(), DataError,
              "{}: its {} classes differ from the {} classes of {}", model_path, classes.size(),
              ds->classes().size(), opts.data);
    place_model(*net, device, opts.channels_last);
    net->eval();
  }

  if (scripted) {
    check_teacher_classes(*scripted, model_path, device, cfg.channels, cfg.input_size,
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
  return run_evaluation(forward, loader, device, opts.channels_last && net != nullptr, "eval");
}

void export_model(const std::string& checkpoint, const std::string& out,
                  const std::string& format) {
  CheckpointMeta meta;
  auto net = load_checkpoint(checkpoint, &meta);
  net->eval();
  if (format == "torchscript") {
    export_torchscript(*net, out);
  } else if (format == "state_dict") {
    save_state_dict_pickle(*net, out);
  } else {
    fail<ConfigError>("--format must be torchscript or state_dict, got '{}'", format);
  }
}

}  // namespace fkd
