#include "fkd/cli.h"

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <fmt/ranges.h>

#include "fkd/demo.h"
#include "fkd/distill.h"
#include "fkd/error.h"
#include "fkd/inspect.h"
#include "fkd/label.h"
#include "fkd/store.h"
#include "fkd/models.h"
#include "fkd/train.h"

namespace fkd {

namespace {

const std::string kTopkHelp = fmt::format(
    "k of the marginal label types (default {}, or the class count if smaller)", kDefaultTopk);

void add_execution_flags(CLI::App* app, int& threads, int& workers, std::string& device) {
  app->add_option("--threads", threads, "Torch compute threads (0 = all cores)")
      ->capture_default_str();
  app->add_option("--workers", workers, "Data loader threads (decode + augment)")
      ->capture_default_str();
  app->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
}

/// The loss options shared by FKD and online KD.
void add_soft_loss_flags(CLI::App* app, TrainConfig& c) {
  app->add_option("--temperature", c.temperature,
                  "Soft cross-entropy temperature T: -sum q log softmax(logits / T)")
      ->capture_default_str();
  app->add_option("--hard-weight", c.hard_weight,
                  "Weight of the hard-label cross-entropy mixed into the soft loss (0..1)")
      ->capture_default_str();
  app->add_option("--mixup", c.mixup, "Mixup alpha (0 = off); mixes images and targets")
      ->capture_default_str();
  app->add_option("--cutmix", c.cutmix, "CutMix alpha (0 = off); mixes images and targets")
      ->capture_default_str();
  app->add_option("--mix-prob", c.mix_prob, "Probability that a batch is mixed")
      ->capture_default_str();
  app->add_option("--switch-prob", c.switch_prob,
                  "Probability of CutMix rather than Mixup when both are on")
      ->capture_default_str();
}

void add_distill_flags(CLI::App* app, TrainConfig& c) {
  app->add_option("--mode", c.mode,
                  "supervised, fkd or kd; auto = fkd with --labels, kd with --teacher, else "
                  "supervised")
      ->capture_default_str();
  app->add_option("--labels,-l", c.labels, "FKD: label store made by fkd label");
  app->add_option("--num-crops,-m", c.num_crops,
                  "FKD: stored crops per image per pass; a pass counts as this many epochs")
      ->capture_default_str();
  app->add_option("--teacher,-t", c.teacher,
                  "KD: teacher run on every batch (TorchScript file or checkpoint.pt)");
  add_soft_loss_flags(app, c);
}

void add_train(CLI::App& root, TrainConfig& c) {
  CLI::App* app = root.add_subcommand(
      "train", "Train a model: supervised, FKD from a label store (--labels), or online KD "
               "(--teacher)");
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
  app->add_option("--label-smoothing", c.label_smoothing, "Label smoothing of hard-label cross-entropy")
      ->capture_default_str();
  app->add_option("--seed", c.seed, "Seed of weights init, data order and augmentation")
      ->capture_default_str();
  app->add_option("--aug", c.aug,
                  "Training crop: rrc (RandomResizedCrop), crop (RandomCrop with padding), none, "
                  "auto (crop for inputs <= 64 px, else rrc)")
      ->capture_default_str();
  app->add_option("--input-size", c.input_size, "Model input side (0 = auto)")
      ->capture_default_str();
  app->add_option("--scale", c.scale, "RandomResizedCrop area range (min max)");
  app->add_option("--ratio", c.ratio, "RandomResizedCrop aspect range (min max)");
  app->add_option("--padding", c.padding, "RandomCrop padding (--aug crop)")
      ->capture_default_str();
  app->add_option("--flip", c.flip, "Horizontal flip probability")->capture_default_str();
  app->add_option("--interpolation", c.interp, "bilinear or bicubic")->capture_default_str();
  app->add_option("--mean", c.mean, "Normalization mean per channel (default: dataset's)");
  app->add_option("--std", c.std, "Normalization std per channel (default: dataset's)");
  app->add_option("--channels", c.channels, "Image channels: 1 or 3 (0 = dataset's)")
      ->capture_default_str();
  app->add_option("--limit-train", c.limit_train,
                  "Use only this many training images (FKD: default, the store's subset)")
      ->capture_default_str();
  app->add_option("--limit-val", c.limit_val, "Use only this many val images")
      ->capture_default_str();
  add_distill_flags(app, c);
  add_execution_flags(app, c.threads, c.workers, c.device);
  app->add_flag("--channels-last,!--no-channels-last", c.channels_last,
                "NHWC activations (usually faster convolutions)")
      ->capture_default_str();
  app->add_flag("--strict-data", c.strict_data, "Abort on an unreadable image instead of skipping");
  app->add_option("--out,-o", c.out, "Run directory (checkpoint.pt, metrics.jsonl)")
      ->capture_default_str();
  app->add_flag("--resume", c.resume, "Continue the run in --out from its last checkpoint");
  app->add_option("--stop-after", c.stop_after,
                  "Stop after this many epochs of this invocation (continue with --resume)");
}

void add_label(CLI::App& root, LabelConfig& c, CLI::App** merge, std::string& merge_in,
               std::string& merge_out, CLI::App** ensemble, std::vector<std::string>& ens_in,
               std::string& ens_out, CLI::App** label_app) {
  CLI::App* app = root.add_subcommand(
      "label", "Generate soft labels: a teacher labels random-resized crops into a store");
  *label_app = app;
  app->require_subcommand(0, 1);
  app->add_option("--teacher,-t", c.teacher,
                  "TorchScript file (torch.jit.trace/script output) or a checkpoint.pt");
  app->add_option("--data", c.data, "Dataset whose train split is labeled")->capture_default_str();
  app->add_option("--out,-o", c.out, "Store directory");
  app->add_option("--crops", c.crops, "Crops per image")->capture_default_str();
  app->add_option("--label-type", c.label_type,
                  "hard, smoothing, marginal_smoothing, marginal_renorm or full")
      ->capture_default_str();
  app->add_option("--topk", c.topk, kTopkHelp);
  app->add_option("--temperature", c.temperature, "Softmax temperature")->capture_default_str();
  app->add_option("--precision", c.precision, "Stored values: fp16, u8 or fp32")
      ->capture_default_str();
  app->add_option("--aug", c.aug,
                  "Crop sampler: rrc (RandomResizedCrop), crop (RandomCrop with padding), auto "
                  "(crop for inputs <= 64 px, else rrc)")
      ->capture_default_str();
  app->add_option("--padding", c.padding, "RandomCrop padding (--aug crop)")
      ->capture_default_str();
  app->add_option("--scale", c.scale, "RandomResizedCrop area range (min max)");
  app->add_option("--ratio", c.ratio, "RandomResizedCrop aspect range (min max)");
  app->add_option("--flip", c.flip, "Horizontal flip probability")->capture_default_str();
  app->add_option("--input-size", c.input_size, "Teacher input side (0 = auto)");
  app->add_option("--interpolation", c.interp, "bilinear or bicubic")->capture_default_str();
  app->add_option("--mean", c.mean, "Normalization mean per channel");
  app->add_option("--std", c.std, "Normalization std per channel");
  app->add_option("--channels", c.channels, "Image channels: 1 or 3 (0 = auto)");
  app->add_option("--batch", c.batch, "Crops per teacher forward")->capture_default_str();
  app->add_option("--limit", c.limit,
                  "Label only a deterministic subset of this many images (train with the same "
                  "--limit-train)");
  app->add_option("--seed", c.seed, "Crop sampler seed")->capture_default_str();
  app->add_option("--shard", c.shard,
                  "This process's part, i/n (default: RANK/WORLD_SIZE from the environment)");
  app->add_option("--reference-crops", c.reference_crops,
                  "Label exactly the crops of this existing store (for ensembles)");
  app->add_flag("--optimize,!--no-optimize", c.optimize,
                "Freeze and optimize a TorchScript teacher for inference")
      ->capture_default_str();
  add_execution_flags(app, c.threads, c.workers, c.device);

  *merge = app->add_subcommand(
      "merge", "Pack all shards of a store into one (an older format version is upgraded)");
  (*merge)->add_option("store", merge_in, "Complete store directory")->required();
  (*merge)->add_option("--out,-o", merge_out, "Output store directory")->required();
  *ensemble = app->add_subcommand("ensemble", "Average the labels of stores made on the same crops");
  (*ensemble)->add_option("stores", ens_in, "Two or more store directories")->required();
  (*ensemble)->add_option("--out,-o", ens_out, "Output store directory")->required();
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"fkd: fast knowledge distillation for vision models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fkd " FKD_VERSION);

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
  exp->add_option("out,-o,--out", export_out, "Output file")->required();
  exp->add_option("--format", export_format,
                  "torchscript (torch.jit.load) or state_dict (torch.load + load_state_dict)")
      ->capture_default_str();

  LabelConfig label_cfg;
  CLI::App *label_app = nullptr, *merge = nullptr, *ensemble = nullptr;
  std::string merge_in, merge_out, ens_out;
  std::vector<std::string> ens_in;
  add_label(app, label_cfg, &merge, merge_in, merge_out, &ensemble, ens_in, ens_out, &label_app);

  InspectOptions insp;
  CLI::App* inspect = app.add_subcommand("inspect", "Summarize a label store, or show one image");
  inspect->add_option("store", insp.store, "Store directory")->required();
  inspect->add_option("--data", insp.data,
                      "Dataset the store labels (for agreement with the ground truth)");
  inspect->add_option("--image", insp.image, "Print this image's crops and labels");
  inspect->add_option("--render", insp.render, "ID OUT.png: draw an image with its crops")
      ->expected(2);
  inspect->add_option("--limit", insp.limit, "Summarize only this many images (0 = all)")
      ->capture_default_str();

  DistillConfig dist;
  dist.train.model = "tiny";
  dist.label.crops = 0;
  dist.label.aug = "auto";
  CLI::App* distill = app.add_subcommand(
      "distill", "Label with a teacher, then train a student from the labels (FKD)");
  distill->add_option("--teacher,-t", dist.label.teacher,
                      "TorchScript file (torch.jit.trace/script output) or a checkpoint.pt")
      ->required();
  distill->add_option("--data", dist.train.data, "Dataset (as for train)")->capture_default_str();
  distill->add_option("--student,-s", dist.train.model,
                      "Student zoo model: " + fmt::format("{}", fmt::join(model_names(), ", ")))
      ->capture_default_str();
  distill->add_option("--epochs", dist.train.epochs, "Effective training epochs")
      ->capture_default_str();
  distill->add_option("--num-crops,-m", dist.train.num_crops,
                      "Crops per image per pass (a pass counts as this many epochs)")
      ->capture_default_str();
  distill->add_option("--crops", dist.label.crops,
                      "Crops labeled per image (0 = as many as the epochs use)")
      ->capture_default_str();
  distill->add_option("--label-type", dist.label.label_type,
                      "hard, smoothing, marginal_smoothing, marginal_renorm or full")
      ->capture_default_str();
  distill->add_option("--topk", dist.label.topk, kTopkHelp);
  distill->add_option("--precision", dist.label.precision, "Stored values: fp16, u8 or fp32")
      ->capture_default_str();
  distill->add_option("--aug", dist.label.aug,
                      "Crop sampler: rrc, crop (RandomCrop with padding) or auto (crop for "
                      "inputs <= 64 px)")
      ->capture_default_str();
  distill->add_option("--scale", dist.label.scale, "RandomResizedCrop area range (min max)");
  distill->add_option("--ratio", dist.label.ratio, "RandomResizedCrop aspect range (min max)");
  distill->add_option("--label-temperature", dist.label.temperature,
                      "Softmax temperature of the stored labels")
      ->capture_default_str();
  distill->add_option("--input-size", dist.train.input_size,
                      "Input side of teacher and student (0 = auto)");
  distill->add_option("--batch-size,-b", dist.train.batch_size, "Crops per step")
      ->capture_default_str();
  distill->add_option("--optimizer", dist.train.optimizer, "sgd or adamw")->capture_default_str();
  distill->add_option("--lr", dist.train.lr, "Peak learning rate")->capture_default_str();
  distill->add_option("--weight-decay,--wd", dist.train.weight_decay, "Weight decay")
      ->capture_default_str();
  distill->add_option("--limit-train", dist.train.limit_train,
                      "Use only this many training images")
      ->capture_default_str();
  distill->add_option("--seed", dist.train.seed, "Seed of the student's run")
      ->capture_default_str();
  add_soft_loss_flags(distill, dist.train);
  distill->add_option("--out,-o", dist.out, "Output directory (labels/, student/)")
      ->capture_default_str();
  add_execution_flags(distill, dist.train.threads, dist.train.workers, dist.train.device);

  DemoOptions demo_opts;
  CLI::App* demo = app.add_subcommand("demo", "Run the Fashion-MNIST demo end to end");
  demo->add_option("--out,-o", demo_opts.out, "Output directory")->capture_default_str();
  demo->add_flag("--quick", demo_opts.quick, "A short version (a few minutes)");
  demo->add_option("--seed", demo_opts.seed,
                   "Seed of the three students (other seeds reuse the teacher and labels)")
      ->capture_default_str();
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
    } else if (label_app->parsed()) {
      if (merge->parsed()) {
        merge_store(merge_in, merge_out);
        fmt::print("merged {} into {}\n", merge_in, merge_out);
      } else if (ensemble->parsed()) {
        ensemble_stores(ens_in, ens_out);
        fmt::print("wrote the ensemble of {} stores to {}\n", ens_in.size(), ens_out);
      } else {
        FKD_CHECK(!label_cfg.teacher.empty(), ConfigError, "label: --teacher is required");
        FKD_CHECK(!label_cfg.out.empty(), ConfigError, "label: --out is required");
        const LabelResult r = generate_labels(label_cfg);
        fmt::print("{}: labeled {} images ({} crops) in {:.1f} s, {:.0f} crops/s, teacher busy "
                   "{:.0f}% of the time{}\n",
                   r.store, r.images, r.crops, r.seconds,
                   r.seconds > 0 ? double(r.crops) / r.seconds : 0.0,
                   r.seconds > 0 ? 100.0 * r.teacher_seconds / r.seconds : 0.0,
                   r.complete ? "; the store is complete" : "; other shards are still missing");
      }
    } else if (app.got_subcommand("inspect")) {
      run_inspect(insp);
    } else if (app.got_subcommand("distill")) {
      run_distill(dist);
    } else if (app.got_subcommand("demo")) {
      run_demo(demo_opts);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "fkd: error: {}\n", one_line(e.what()));
    return 1;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "fkd: error: {}\n", one_line(e.what_without_backtrace()));
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "fkd: error: {}\n", one_line(e.what()));
    return 1;
  }
  return 0;
}

}  // namespace fkd
