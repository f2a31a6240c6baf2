#include "fkd/cli.h"

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <fmt/ranges.h>

#include "fkd/demo.h"
#include "fkd/error.h"
#include "fkd/models.h"
#include "fkd/train.h"

namespace fkd {

namespace {

/// The first line of a message: the CLI promises one line per error.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

void add_execution_flags(CLI::App* app, int& threads, int& workers, std::string& device) {
  app->add_option("--threads", threads, "Torch compute threads (0 = all cores)")
      ->capture_default_str();
  app->add_option("--workers", workers, "Data loader threads (decode + augment)")
      ->capture_default_str();
  app->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
}

void add_train(CLI::App& root, TrainConfig& c) {
  CLI::App* app = root.add_subcommand("train", "Train a model (supervised)");
  app->add_option("--data", c.data,
                  "Dataset: fashion-mnist, an IDX folder, or an ImageFolder root with train/ "
                  "and val/")
      ->capture_default_str();
  app->add_option("--model", c.model, "Zoo model: " + fmt::format("{}", fmt::join(model_names(), ", ")))
      ->capture_default_str();
  app->add_option("--epochs", c.epochs, "Training epochs")->capture_default_str();
  app->add_option("--batch-size,-b", c.batch_size, "Samples per step")->capture_default_str();
  app->add_option("--optimizer", c.optimizer, "sgd or adamw")->capture_default_str();
  app->add_option("--lr", c.lr, "Peak learning rate (cosine decay to 0)")->capture_default_str();
  app->add_option("--momentum", c.momentum, "SGD momentum")->capture_default_str();
  app->add_flag("--nesterov,!--no-nesterov", c.nesterov, "Nesterov momentum (SGD)")
      ->capture_default_str();
  app->add_option("--weight-decay,--wd", c.weight_decay, "Weight decay")->capture_default_str();
  app->add_option("--warmup-epochs", c.warmup_epochs, "Linear warm-up epochs")
      ->capture_default_str();
  app->add_option("--label-smoothing", c.label_smoothing, "Label smoothing")
      ->capture_default_str();
  app->add_option("--seed", c.seed, "Seed of weights init, data order and augmentation")
      ->capture_default_str();
  app->add_option("--aug", c.aug,
                  "Training crop: rrc (RandomResizedCrop), crop (RandomCrop with padding), none, "
                  "auto (crop for inputs <= 64 px, else rrc)")
      ->capture_default_str();
  app->add_option("--input-size", c.input_size, "Model input side (0 = auto)")
      ->capture_default_str();
  app->add_option("--scale", c.scale, "RandomResizedCrop area range (min max)")
      ->expected(2);
  app->add_option("--ratio", c.ratio, "RandomResizedCrop aspect range (min max)")
      ->expected(2);
  app->add_option("--padding", c.padding, "RandomCrop padding (--aug crop)")
      ->capture_default_str();
  app->add_option("--flip", c.flip, "Horizontal flip probability")->capture_default_str();
  app->add_option("--interpolation", c.interp, "bilinear or bicubic")->capture_default_str();
  app->add_option("--mean", c.mean, "Normalization mean per channel (default: dataset's)");
  app->add_option("--std", c.std, "Normalization std per channel (default: dataset's)");
  app->add_option("--channels", c.channels, "Image channels: 1 or 3 (0 = dataset's)")
      ->capture_default_str();
  app->add_option("--limit-train", c.limit_train, "Use only this many training images")
      ->capture_default_str();
  app->add_option("--limit-val", c.limit_val, "Use only this many val images")
      ->capture_default_str();
  add_execution_flags(app, c.threads, c.workers, c.device);
  app->add_flag("--strict-data", c.strict_data, "Abort on an unreadable image instead of skipping");
  app->add_option("--out,-o", c.out, "Run directory (checkpoint.pt, metrics.jsonl)")
      ->capture_default_str();
  app->add_flag("--resume", c.resume, "Continue the run in --out from its last checkpoint");
  app->add_option("--stop-after", c.stop_after,
                  "Stop after this many epochs of this invocation (continue with --resume)");
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"fkd: fast knowledge distillation for vision models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fkd 0.1.0");

  TrainConfig train_cfg;
  add_train(app, train_cfg);

  std::string eval_model;
  EvalOptions eval_opts;
  CLI::App* eval = app.add_subcommand("eval", "Top-1/top-5 of a checkpoint or TorchScript model");
  eval->add_option("model", eval_model, "checkpoint.pt written by fkd train, or a TorchScript file")
      ->required();
  eval->add_option("--data", eval_opts.data, "Dataset (as for train)")->capture_default_str();
  eval->add_option("--split", eval_opts.split, "val or train")->capture_default_str();
  eval->add_option("--limit", eval_opts.limit, "Evaluate only this many images");
  eval->add_option("--batch-size,-b", eval_opts.batch_size, "Images per forward")
      ->capture_default_str();
  eval->add_option("--input-size", eval_opts.input_size, "Override the input side");
  eval->add_option("--resize", eval_opts.eval_resize, "Override the Resize before CenterCrop");
  eval->add_option("--mean", eval_opts.mean, "Override the normalization mean");
  eval->add_option("--std", eval_opts.std, "Override the normalization std");
  eval->add_option("--channels", eval_opts.channels, "Override image channels (1 or 3)");
  add_execution_flags(eval, eval_opts.threads, eval_opts.workers, eval_opts.device);

  std::string export_ckpt, export_out, export_format = "torchscript";
  CLI::App* exp = app.add_subcommand(
      "export", "Write a trained model for Python: TorchScript (torch.jit.load) or a state dict");
  exp->add_option("checkpoint", export_ckpt, "checkpoint.pt written by fkd train")->required();
  exp->add_option("out", export_out, "Output file")->required();
  exp->add_option("--format", export_format,
                  "torchscript (torch.jit.load) or state_dict (torch.load + load_state_dict)")
      ->capture_default_str();

  DemoOptions demo_opts;
  CLI::App* demo = app.add_subcommand("demo", "Run the Fashion-MNIST demo end to end");
  demo->add_option("--out,-o", demo_opts.out, "Output directory")->capture_default_str();
  demo->add_flag("--quick", demo_opts.quick, "A short version (a few minutes)");
  add_execution_flags(demo, demo_opts.threads, demo_opts.workers, demo_opts.device);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (app.got_subcommand("train")) {
      train(train_cfg);
    } else if (app.got_subcommand("eval")) {
      const EvalResult r = evaluate_file(eval_model, eval_opts);
      fmt::print("{}: {} images  top1 {:.2f}%  top5 {:.2f}%  loss {:.4f}\n", eval_model,
                 r.samples, r.top1, r.top5, r.loss);
      if (r.bad_samples) fmt::print(stderr, "warning: {} image(s) skipped\n", r.bad_samples);
    } else if (app.got_subcommand("export")) {
      export_model(export_ckpt, export_out, export_format);
      fmt::print("wrote {} ({})\n", export_out, export_format);
    } else if (app.got_subcommand("demo")) {
      run_demo(demo_opts);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "fkd: error: {}\n", first_line(e.what()));
    return 1;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "fkd: error: {}\n", first_line(e.what_without_backtrace()));
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "fkd: error: {}\n", first_line(e.what()));
    return 1;
  }
  return 0;
}

}  // namespace fkd
