// The fkd command line: subcommands parse flags into the library's option structs and call
// the library. Option groups that several subcommands share are declared once below, so
// their names, checks and help texts cannot drift apart.
#include "fkd/cli.h"

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <algorithm>
#include <charconv>
#include <csignal>
#include <filesystem>
#include <limits>
#include <optional>

#include <CLI/CLI.hpp>

#include "fkd/demo.h"
#include "fkd/distill.h"
#include "fkd/edge.h"
#include "fkd/error.h"
#include "fkd/inspect.h"
#include "fkd/label.h"
#include "fkd/launch.h"
#include "fkd/models.h"
#include "fkd/progress.h"
#include "fkd/reference_labels.h"
#include "fkd/store.h"
#include "fkd/train.h"

namespace fkd {

namespace {

// --- checks -------------------------------------------------------------------------------
// Our own validators: CLI11's print their bounds as long decimals.

CLI::Validator number_check(double lo, double hi, const std::string& expected) {
  return CLI::Validator(
      [lo, hi, expected](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return "expected a number, got '" + text + "'";
        return v >= lo && v <= hi ? "" : fmt::format("{}: expected {}", text, expected);
      },
      expected);
}
/// A whole number from lo to hi, checked on the text itself: CLI11 turns "-1" into an
/// unsigned flag's largest value and lets a number past the type's range wrap or fail with
/// a message that names no bound.
CLI::Validator count_check(uint64_t lo, uint64_t hi) {
  const std::string expected = fmt::format("{} to {}", lo, hi);
  return CLI::Validator(
      [lo, hi, expected](std::string& text) -> std::string {
        uint64_t v = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, v);
        const bool digits = !text.empty() && ptr == end && ec == std::errc();
        const bool too_big = ec == std::errc::result_out_of_range && ptr == end;
        if (!digits && !too_big) {
          return fmt::format("{}: expected a whole number from {}", text, expected);
        }
        return !too_big && v >= lo && v <= hi ? "" : fmt::format("{}: expected {}", text, expected);
      },
      expected);
}

// Upper bounds of the count flags: far above any real run, low enough that no product of
// them overflows or asks for memory no machine has.
constexpr uint64_t kMaxBatch = 65536;               ///< samples or crops per step/forward
constexpr uint64_t kMaxThreads = 1024;              ///< --threads, --workers
constexpr uint64_t kMaxEpochs = 100000;             ///< --epochs, --stop-after
constexpr uint64_t kMaxImages = 10'000'000'000ull;  ///< image counts and ids (limits)
constexpr uint64_t kMaxSide = 4096;                 ///< image sides in pixels
constexpr uint64_t kMaxTopk = 1u << 20;             ///< --topk
constexpr uint64_t kMaxRanks = 1024;                ///< --nproc-per-node
constexpr uint64_t kMaxCalibration = 100000;        ///< calibration tensors of fkd export
const CLI::Validator kSeed = count_check(0, std::numeric_limits<uint64_t>::max());
const CLI::Validator kThreadCount = count_check(0, kMaxThreads);
const CLI::Validator kImageCount = count_check(0, kMaxImages);
const CLI::Validator kBatch = count_check(1, kMaxBatch);

// Real-valued flags: bounded so that every value survives the float32 it ends up in (a
// learning rate of 1e300 once overflowed inside the optimizer, after training had started).
const CLI::Validator kRate = number_check(1e-300, 1000, "a positive number up to 1000");
const CLI::Validator kAlpha = number_check(0, 1000, "0 to 1000");
const CLI::Validator kTemperature = number_check(1e-3, 1000, "0.001 to 1000");
const CLI::Validator kRatio = number_check(1e-3, 1000, "0.001 to 1000");
const CLI::Validator kStd = number_check(1e-3, 1000, "0.001 to 1000");
const CLI::Validator kMean = number_check(0, 1, "0 to 1 (pixel values are 0 to 1)");
const CLI::Validator kEpochFraction = number_check(0, double(kMaxEpochs), "0 to 100000");
const CLI::Validator kTimeout = number_check(1e-3, 1e6, "0.001 to 1000000 seconds");
const CLI::Validator kUnit = number_check(0, 1, "0 to 1");

/// A word from a list; the option's callback may then parse it without failing.
CLI::Validator one_of(const std::vector<std::string>& words) {
  const std::string list = fmt::format("{}", fmt::join(words, ", "));
  return CLI::Validator(
      [words, list](std::string& text) -> std::string {
        for (const auto& w : words)
          if (w == text) return "";
        return fmt::format("'{}': expected one of {}", text, list);
      },
      "{" + fmt::format("{}", fmt::join(words, ",")) + "}");
}

/// --model/--student: a zoo name or a TorchScript file (its contents are read later: a run
/// that resumes needs no file, its checkpoint holds a copy).
CLI::Validator model_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (is_model_file(text)) return "";
        const auto names = model_names();
        if (std::find(names.begin(), names.end(), text) != names.end()) return "";
        return fmt::format("'{}': unknown model; known: {}, or a TorchScript file (.pt, .pth)",
                           text, fmt::join(names, ", "));
      },
      "");
}

/// CLI11's help with the defaults of switches shown: CLI11 writes "--x,--no-x{false}" (the
/// value --no-x sets, which reads as the default); this writes "--x,--no-x=true", the
/// default, as for any other option.
class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_option_name(const CLI::Option* opt, bool positional) const override {
    std::string name = CLI::Formatter::make_option_name(opt, positional);
    for (size_t open = name.find('{'); open != std::string::npos; open = name.find('{')) {
      name.erase(open, name.find('}', open) + 1 - open);
    }
    return name;
  }
  std::string make_option_opts(const CLI::Option* opt) const override {
    if (opt->get_type_size() == 0 && !opt->get_default_str().empty()) {
      return "=" + opt->get_default_str();
    }
    return CLI::Formatter::make_option_opts(opt);
  }
};

/// A switch --name/--no-name whose help shows its default (HelpFormatter).
CLI::Option* add_switch(CLI::App* app, const std::string& name, bool& value,
                        const std::string& help) {
  return app->add_flag(fmt::format("--{},!--no-{}", name, name), value, help)
      ->default_str(value ? "true" : "false");
}

// --- option groups -----------------------------------------------------------------------

void add_execution(CLI::App* app, int& threads, int& workers, std::string& device) {
  app->add_option("--threads", threads,
                  "Torch compute threads (0 = all cores, shared among this node's ranks)")
      ->check(kThreadCount)
      ->capture_default_str();
  app->add_option("--workers", workers, "Data loader threads (decode + augment)")
      ->check(kThreadCount)
      ->capture_default_str();
  app->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
}

/// The crop sampler of training and labeling: what defines every crop.
void add_crop_sampler(CLI::App* app, CropSampler& s, const std::string& size_help) {
  app->add_option_function<std::string>(
         "--aug", [&s](const std::string& name) { s.kind = parse_crop_kind(name); },
         "Crops: rrc (RandomResizedCrop), crop (RandomCrop with padding), none (the "
         "whole image), auto (crop for images of 64 px or less, else rrc; label: a "
         "checkpoint teacher's own)")
      ->check(one_of({"auto", "rrc", "crop", "none"}))
      ->default_str("auto");
  app->add_option("--input-size", s.size, size_help)->check(count_check(0, kMaxSide));
  app->add_option("--scale", s.scale, "RandomResizedCrop area range (min max)")->check(kUnit);
  app->add_option("--ratio", s.ratio, "RandomResizedCrop aspect range (min max)")->check(kRatio);
  app->add_option("--padding", s.padding, "RandomCrop zero padding (--aug crop)")
      ->check(count_check(0, kMaxSide))
      ->capture_default_str();
  app->add_option("--flip", s.flip, "Horizontal flip probability")
      ->check(kUnit)
      ->capture_default_str();
}

/// How stored labels are quantized.
void add_quantization(CLI::App* app, LabelConfig& c) {
  app->add_option("--label-type", c.label_type,
                  "hard, smoothing, marginal_smoothing, marginal_renorm or full")
      ->check(one_of({"hard", "smoothing", "marginal_smoothing", "marginal_renorm", "full"}))
      ->capture_default_str();
  app->add_option("--topk", c.topk,
                  fmt::format("k of the marginal label types (default {}, or the class count if "
                              "smaller)",
                              kDefaultTopk))
      ->check(count_check(1, kMaxTopk));
  app->add_option("--precision", c.precision, "Stored values: fp16, u8 or fp32")
      ->check(one_of({"fp16", "u8", "fp32"}))
      ->capture_default_str();
}

/// The soft loss of FKD and online KD.
void add_soft_loss(CLI::App* app, TrainConfig& c) {
  app->add_option("--temperature", c.temperature,
                  "Soft cross-entropy temperature T: -sum q log softmax(logits / T)")
      ->check(kTemperature)
      ->capture_default_str();
  app->add_option("--hard-weight", c.hard_weight,
                  "Weight of the hard-label cross-entropy mixed into the soft loss (0..1)")
      ->check(kUnit)
      ->capture_default_str();
  app->add_option("--mixup", c.mixup, "Mixup alpha (0 = off); mixes images and targets")
      ->check(kAlpha)
      ->capture_default_str();
  app->add_option("--cutmix", c.cutmix, "CutMix alpha (0 = off); mixes images and targets")
      ->check(kAlpha)
      ->capture_default_str();
  app->add_option("--mix-prob", c.mix_prob, "Probability that a batch is mixed")
      ->check(kUnit)
      ->capture_default_str();
  app->add_option("--switch-prob", c.switch_prob,
                  "Probability of CutMix rather than Mixup when both are on")
      ->check(kUnit)
      ->capture_default_str();
}

/// The student's optimization, shared by train and distill.
void add_optimization(CLI::App* app, TrainConfig& c) {
  app->add_option("--epochs", c.epochs, "Training epochs (FKD: effective epochs)")
      ->check(count_check(1, kMaxEpochs))
      ->capture_default_str();
  app->add_option("--batch-size,-b", c.batch_size, "Samples (crops) per step")
      ->check(kBatch)
      ->capture_default_str();
  app->add_option("--optimizer", c.optimizer, "sgd or adamw")
      ->check(one_of({"sgd", "adamw"}))
      ->capture_default_str();
  app->add_option("--lr", c.lr, "Peak learning rate (cosine decay to 0)")
      ->check(kRate)
      ->capture_default_str();
  app->add_option("--momentum", c.momentum, "SGD momentum")->check(kUnit)->capture_default_str();
  add_switch(app, "nesterov", c.nesterov, "Nesterov momentum (SGD)");
  app->add_option("--weight-decay,--wd", c.weight_decay, "Weight decay")
      ->check(kAlpha)
      ->capture_default_str();
  app->add_flag("--no-decay-norm-bias", c.no_decay_norm_bias,
                "No weight decay on parameters of at most one dimension (norm weights, biases), "
                "as timm's filter_bias_and_bn");
  app->add_option("--warmup-epochs", c.warmup_epochs, "Linear warm-up epochs")
      ->check(kEpochFraction)
      ->capture_default_str();
  app->add_option("--label-smoothing", c.label_smoothing,
                  "Label smoothing of hard-label cross-entropy")
      ->check(kUnit)
      ->capture_default_str();
  app->add_option("--seed", c.seed, "Seed of weights init, data order and augmentation")
      ->check(kSeed)
      ->capture_default_str();
  app->add_option("--limit-train", c.limit_train,
                  "Use only this many training images (FKD: default, the store's subset)")
      ->check(kImageCount)
      ->capture_default_str();
  app->add_option("--num-crops,-m", c.num_crops,
                  "FKD: stored crops per image per pass; a pass counts as this many epochs")
      ->check(count_check(1, kMaxCropsPerImage))
      ->capture_default_str();
}

constexpr const char* kScriptedStudentHelp =
    "; or a TorchScript file (.pt, .pth) of a torch.jit.script'ed model";

std::string zoo_help(const char* what) {
  return fmt::format("{}: {}", what, fmt::join(model_names(), ", "));
}

/// Options of data-parallel runs (several ranks: fkd launch, torchrun, srun).
void add_data_parallel(CLI::App* app, TrainConfig& c) {
  app->add_flag("--sync-bn", c.sync_bn,
                "Several ranks: BatchNorm uses the whole global batch's statistics (default: "
                "each rank's slice, as DistributedDataParallel)");
  app->add_option("--dist-timeout", c.dist_timeout,
                  "Several ranks: seconds to wait for a rank before stopping the run")
      ->check(kTimeout)
      ->capture_default_str();
}

/// Mixed precision and the weights' EMA, shared by train and distill.
void add_precision(CLI::App* app, TrainConfig& c) {
  app->add_option("--amp", c.amp,
                  "Mixed precision: auto (bf16 on a GPU that runs it natively, off on the CPU), "
                  "off, bf16 or fp16 (CUDA; dynamic loss scaling)")
      ->check(one_of({"auto", "off", "bf16", "fp16"}))
      ->capture_default_str();
  app->add_option("--model-ema", c.model_ema,
                  "Keep an EMA of the weights with this decay (timm's, e.g. 0.9998), evaluated "
                  "every epoch beside them; 0 = off")
      ->check(number_check(0, 1, "0 to 1"))
      ->capture_default_str();
  app->add_flag("--model-ema-warmup", c.model_ema_warmup,
                "Warm the EMA decay up as timm does: 1 - (1 + step)^(-2/3), up to --model-ema");
  app->add_option("--input-format", c.input_format,
                  "Batches the loader hands over: float (normalized on the CPU), uint8 "
                  "(normalized on the device; a quarter of the bytes) or auto (uint8 on a GPU)")
      ->check(one_of({"auto", "float", "uint8"}))
      ->capture_default_str();
}

/// How images become model input: resampling, normalization and channels (train, label;
/// distill, for teacher and student alike). `auto_source` says where unset ones come from.
void add_image_input(CLI::App* app, std::string& interp, std::vector<float>& mean,
                     std::vector<float>& std, int& channels, const std::string& auto_source) {
  app->add_option("--interpolation", interp, "bilinear or bicubic")
      ->check(one_of({"bilinear", "bicubic"}))
      ->capture_default_str();
  app->add_option("--mean", mean,
                  fmt::format("Normalization mean per channel (default: {})", auto_source))
      ->check(kMean);
  app->add_option("--std", std,
                  fmt::format("Normalization std per channel (default: {})", auto_source))
      ->check(kStd);
  app->add_option("--channels", channels,
                  fmt::format("Image channels: 1 or 3 (0 = {})", auto_source))
      ->check(one_of({"0", "1", "3"}))
      ->capture_default_str();
}

/// The run of a student after its data and recipe (train, distill): what it evaluates on,
/// how it computes and where an invocation stops.
void add_student_run(CLI::App* app, TrainConfig& c, const std::string& continue_with) {
  app->add_option("--limit-val", c.limit_val, "Use only this many val images")
      ->check(kImageCount)
      ->capture_default_str();
  add_switch(app, "channels-last", c.channels_last,
             "NHWC activations (usually faster convolutions)");
  app->add_flag("--strict-data", c.strict_data, "Abort on an unreadable image instead of skipping");
  app->add_option("--stop-after", c.stop_after,
                  fmt::format("Stop after this many passes of this invocation (a pass is one "
                              "epoch, FKD: --num-crops epochs); {}",
                              continue_with))
      ->check(count_check(1, kMaxEpochs));
}

// --- subcommands ---------------------------------------------------------------------------

void add_train(CLI::App& root, TrainConfig& c) {
  CLI::App* app = root.add_subcommand(
      "train",
      "Train a model: supervised, FKD from a label store (--labels), or online KD "
      "(--teacher)");
  app->add_option("--data", c.data,
                  "Dataset: fashion-mnist, an IDX folder, or an ImageFolder root with train/ "
                  "and val/")
      ->capture_default_str();
  app->add_option("--model", c.model, zoo_help("Zoo model") + kScriptedStudentHelp)
      ->check(model_check())
      ->capture_default_str();
  add_optimization(app, c);
  add_crop_sampler(app, c.crop,
                   "Model input side (0 = auto: the images' size up to 224, Fashion-MNIST 28)");
  add_image_input(app, c.interp, c.mean, c.std, c.channels, "the dataset's");
  app->add_option_function<std::string>(
         "--mode", [&c](const std::string& name) { c.mode = parse_mode(name); },
         "supervised, fkd or kd; auto = fkd with --labels, kd with --teacher, else "
         "supervised")
      ->check(one_of({"auto", "supervised", "fkd", "kd"}))
      ->default_str("auto");
  app->add_option("--labels,-l", c.labels, "FKD: label store made by fkd label");
  app->add_option("--teacher,-t", c.teacher,
                  "KD: teacher run on every batch (TorchScript file or checkpoint.pt)");
  add_soft_loss(app, c);
  add_precision(app, c);
  add_execution(app, c.threads, c.workers, c.device);
  add_student_run(app, c, "continue with --resume");
  app->add_flag("--skip-damaged-labels", c.skip_damaged_labels,
                "FKD: skip images whose label record is damaged instead of stopping (fkd label "
                "verify lists them, fkd label repair remakes them)");
  add_data_parallel(app, c);
  app->add_option("--out,-o", c.out, "Run directory (checkpoint.pt, metrics.jsonl)")
      ->capture_default_str();
  app->add_flag(
      "--resume", c.resume,
      "Continue the run in --out from its last checkpoint; refused when --out holds none, "
      "and a finished run trains nothing");
  app->add_flag_callback(
      "--resume-or-start",
      [&c] {
        c.resume = true;
        c.resume_or_start = true;
      },
      "Continue the run in --out if it has a checkpoint, else start it (a job that may be "
      "started again)");
  app->add_flag("--extend-epochs", c.extend_epochs,
                "With --resume: continue the run to a larger --epochs; the cosine schedule is "
                "recomputed to end at the new last epoch, so the learning rate goes on at that "
                "schedule's value for the steps taken (half the peak when 15 epochs become 30)");
  app->final_callback([&c] {
    if (c.extend_epochs && !c.resume) {
      throw CLI::ValidationError("--extend-epochs continues a run: it goes with --resume");
    }
  });
}

void add_eval(CLI::App& root, std::string& model, EvalOptions& o) {
  CLI::App* app =
      root.add_subcommand("eval", "Top-1/top-5 of a checkpoint, TorchScript or ONNX model");
  app->add_option("model", model,
                  "checkpoint.pt written by fkd train, a TorchScript file, or an .onnx file "
                  "written by fkd export (float32 or int8)")
      ->required();
  app->add_option("--data", o.data, "Dataset (as for train)")->capture_default_str();
  app->add_option("--split", o.split, "val or train")
      ->check(one_of({"val", "train"}))
      ->capture_default_str();
  app->add_option("--limit", o.limit, "Evaluate only this many images")->check(kImageCount);
  app->add_option("--batch-size,-b", o.batch_size, "Images per forward")
      ->check(kBatch)
      ->capture_default_str();
  app->add_option("--input-size", o.input_size, "Override the input side")
      ->check(count_check(0, kMaxSide));
  app->add_option("--resize", o.eval_resize, "Override the Resize before CenterCrop")
      ->check(count_check(0, 2 * kMaxSide));
  app->add_option("--mean", o.mean, "Override the normalization mean")->check(kMean);
  app->add_option("--std", o.std, "Override the normalization std")->check(kStd);
  app->add_option("--channels", o.channels, "Override image channels (1 or 3)")
      ->check(one_of({"0", "1", "3"}));
  app->add_option("--save-logits", o.save_logits,
                  "Write the logits, float32 [N, classes] in dataset order, to this file (and "
                  "its shape and labels to FILE.json)");
  app->add_option("--save-inputs", o.save_inputs,
                  "Write the model's inputs, float32 [N, C, H, W], to this file (and FILE.json), "
                  "to run the same images in another runtime");
  add_execution(app, o.threads, o.workers, o.device);
}

struct ExportArgs {
  std::string format;    ///< empty: onnx for an .onnx file, else torchscript
  std::string out_flag;  ///< -o/--out, the positional OUT's other spelling
  OnnxExportOptions onnx;
};

/// --format, or the one OUT's extension implies.
std::string export_format(const ExportArgs& a) {
  if (!a.format.empty()) return a.format;
  return is_onnx_path(a.onnx.out) ? "onnx" : "torchscript";
}

void add_export(CLI::App& root, ExportArgs& a) {
  OnnxExportOptions& o = a.onnx;
  CLI::App* app = root.add_subcommand(
      "export",
      "Write a trained model: TorchScript or a state dict for Python, ONNX (float32 and int8) "
      "for onnxruntime and edge toolchains (docs/edge.md)");
  app->add_option("checkpoint", o.checkpoint, "checkpoint.pt written by fkd train")->required();
  app->add_option("out", o.out, "Output file");
  // -o/--out is the positional's other spelling, not listed as an option of its own.
  app->add_option("-o,--out", a.out_flag)->group("");
  app->add_option("--format", a.format,
                  "torchscript (torch.jit.load), state_dict (torch.load + load_state_dict) or "
                  "onnx (default: onnx for an .onnx file, else torchscript)")
      ->check(one_of({"torchscript", "state_dict", "onnx"}));
  app->add_flag("--ema", o.ema, "Export the EMA of the weights (a run with --model-ema)");
  auto* g = app->add_option_group("ONNX", "ONNX export (--format onnx)");
  std::vector<CLI::Option*> onnx_only{
      g->add_option("--batch", o.batch, "Batch dimension: a number (static) or a name (symbolic)")
          ->capture_default_str(),
      g->add_flag("--normalize-inside", o.normalize_inside,
                  "The model takes raw pixels in [0, 255] and normalizes them itself"),
      g->add_option("--calibration", o.calibration,
                    "Write N calibration input tensors beside OUT (OUT.calibration.f32 + .json; "
                    "--int8 draws 512 unless told)")
          ->check(count_check(1, kMaxCalibration)),
      g->add_option("--labels", o.labels,
                    "Draw calibration crops from this label store (the crops the student "
                    "learned from); default: training images with the evaluation transform"),
      g->add_option("--data", o.data, "Dataset for calibration (default: the checkpoint's)"),
      g->add_option("--seed", o.seed, "Seed of the calibration draw")
          ->check(kSeed)
          ->capture_default_str(),
      g->add_flag("--int8", o.int8,
                  "Also write OUT's stem + .int8.onnx: int8 QDQ (opset 13), weights per "
                  "output channel, activations per tensor, ranges from the calibration set"),
      g->add_option("--calibration-method", o.method,
                    "int8 activation ranges: minmax (the default: the better int8 accuracy "
                    "measured on 4 of 5 students, bench/RESULTS.md) or percentile")
          ->check(one_of({"minmax", "percentile"}))
          ->capture_default_str(),
      g->add_option("--percentile", o.percentile,
                    "Percentile method: the share of values each range keeps, in percent")
          ->check(number_check(50.0001, 100, "above 50 and at most 100"))
          ->capture_default_str(),
      g->add_flag("--per-tensor-weights", o.per_tensor_weights,
                  "One weight scale per layer (parts like the K210 KPU) instead of per channel"),
      g->add_option("--threads", o.threads, "Torch threads (0 = all cores)")->check(kThreadCount),
      g->add_option("--workers", o.workers, "Image decoding threads for calibration")
          ->check(kThreadCount)};
  // One callback (CLI11's callback and final_callback are the same slot).
  app->callback([&a, onnx_only] {
    std::string& out = a.onnx.out;
    if (!out.empty() && !a.out_flag.empty()) {
      throw CLI::ValidationError("the output file is given twice (OUT and --out): give it once");
    }
    if (out.empty()) out = a.out_flag;
    if (out.empty()) {
      throw CLI::ValidationError("no output file: expected fkd export CHECKPOINT OUT");
    }
    if (export_format(a) == "onnx") {
      if (a.onnx.per_tensor_weights && !a.onnx.int8)
        throw CLI::ValidationError("--per-tensor-weights", "applies to --int8 exports only");
      return;
    }
    for (const CLI::Option* opt : onnx_only)
      if (opt->count() > 0)
        throw CLI::ValidationError(opt->get_name(), "applies to --format onnx only");
  });
}

void run_export(ExportArgs& a) {
  const std::string format = export_format(a);
  const OnnxExportOptions& o = a.onnx;
  if (format != "onnx") {
    const ExportMetadata meta = export_model(o.checkpoint, o.out, format, o.ema);
    fmt::print("wrote {} ({}{}): {}\n", o.out, format, o.ema ? ", weight EMA" : "",
               describe_export(meta));
    return;
  }
  const OnnxExportResult r = export_onnx(o);
  if (r.calibration) fmt::print("calibration: {}\n", r.calibration_source);
  for (const auto& f : r.files) fmt::print("wrote {}\n", f);
  fmt::print(
      "{} operators converted; float32 logits within {:.2g} (relative) of the model's; "
      "{:.1f} s\n",
      r.ops, r.max_relative_error, r.seconds);
}

/// `fkd label` and its store subcommands.
struct LabelArgs {
  LabelConfig label;
  std::string store, out;            ///< merge, verify: the store; merge: the output
  std::vector<std::string> members;  ///< ensemble
  bool mixed_amp = false;            ///< ensemble: members of different teacher precisions
  RepairConfig repair;
  std::string format;  ///< import, export: the foreign layout
  ReferenceImportConfig import;
  ReferenceExportConfig export_cfg;
  CLI::App *app = nullptr, *merge = nullptr, *ensemble = nullptr, *verify = nullptr,
           *repair_app = nullptr, *import_app = nullptr, *export_app = nullptr;
};

/// `fkd label import` / `export`: the reference implementation's per-image label files.
void add_label_interchange(CLI::App& app, LabelArgs& a) {
  ReferenceImportConfig& i = a.import;
  a.import_app = app.add_subcommand(
      "import", "Bring labels made elsewhere into a store (the reference's per-image files)");
  a.import_app->add_option("--format", a.format, "Layout of SRC: reference")
      ->required()
      ->check(one_of({"reference"}));
  a.import_app->add_option("src", i.src, "Folder of SRC/<class>/<stem>.tar files")->required();
  a.import_app->add_option("--data", i.data, "ImageFolder whose train split the files label")
      ->required();
  a.import_app->add_option("--out,-o", i.out, "Store directory")->required();
  a.import_app
      ->add_option("--label-type", i.label_type,
                   "hard, smoothing, marginal_smoothing, marginal_renorm or full (default: from "
                   "the files' shapes; [N, 2, k] is marginal_smoothing)")
      ->check(one_of({"hard", "smoothing", "marginal_smoothing", "marginal_renorm", "full"}));
  a.import_app
      ->add_option("--precision", i.precision,
                   "fp16, fp32 or u8 (default: fp16 for float16 files, else fp32: lossless)")
      ->check(one_of({"fp16", "fp32", "u8"}));
  a.import_app->add_option("--input-size", i.input_size, "Side the crops are resized to")
      ->check(count_check(1, kMaxSide))
      ->capture_default_str();
  a.import_app->add_option("--shards", i.shards, "Shard files of the store")
      ->check(count_check(1, 99999))
      ->capture_default_str();
  a.import_app->add_option("--threads", i.threads, "Reading threads (0 = all cores)")
      ->check(kThreadCount)
      ->capture_default_str();
  ReferenceExportConfig& e = a.export_cfg;
  a.export_app = app.add_subcommand(
      "export", "Write a store as another layout (the reference's per-image files)");
  a.export_app->add_option("--format", a.format, "Layout to write: reference")
      ->required()
      ->check(one_of({"reference"}));
  a.export_app->add_option("store", e.store, "Complete store directory")->required();
  a.export_app->add_option("--out,-o", e.out, "Folder for OUT/<class>/<stem>.tar")->required();
  a.export_app->add_option("--data", e.data, "The dataset (default: the one the store names)");
  a.export_app->add_flag("--fp16", e.fp16,
                         "float16 coords and labels, as the reference's --use_fp16");
}

void add_label(CLI::App& root, LabelArgs& a) {
  LabelConfig& c = a.label;
  a.app = root.add_subcommand(
      "label", "Generate soft labels: a teacher labels random crops of every image into a store");
  CLI::App* app = a.app;
  app->require_subcommand(0, 1);
  app->add_option("--teacher,-t", c.teacher,
                  "TorchScript file (torch.jit.trace/script output) or a checkpoint.pt");
  app->add_option("--data", c.data, "Dataset whose train split is labeled")->capture_default_str();
  app->add_option("--out,-o", c.out, "Store directory");
  app->add_option("--crops", c.crops, "Crops per image")
      ->check(count_check(1, kMaxCropsPerImage))
      ->capture_default_str();
  add_quantization(app, c);
  app->add_option("--temperature", c.temperature, "Softmax temperature")
      ->check(kTemperature)
      ->capture_default_str();
  add_crop_sampler(app, c.crop,
                   "Teacher input side (0 = a checkpoint teacher's, else from the images)");
  add_image_input(app, c.interp, c.mean, c.std, c.channels,
                  "a checkpoint teacher's, else the dataset's");
  app->add_option("--batch", c.batch, "Crops per teacher forward")
      ->check(kBatch)
      ->capture_default_str();
  app->add_option("--limit", c.limit,
                  "Label only a deterministic subset of this many images (training uses the "
                  "same subset)")
      ->check(kImageCount);
  app->add_option("--seed", c.seed, "Crop sampler seed")->check(kSeed)->capture_default_str();
  app->add_option("--shard", c.shard,
                  "This process's part, i/n (default: RANK/WORLD_SIZE from the environment)");
  app->add_option("--reference-crops", c.reference_crops,
                  "Label exactly the crops of this existing store (for ensembles)");
  add_switch(app, "optimize", c.optimize,
             "Freeze and optimize a TorchScript teacher for inference");
  app->add_option("--amp", c.amp,
                  "Teacher precision: auto (an existing store's; else bf16 where the CPU or GPU "
                  "runs it natively, else off), off, bf16 or fp16 (CUDA); labels are quantized "
                  "from float32 softmax; the store records it")
      ->check(one_of({"auto", "off", "bf16", "fp16"}))
      ->capture_default_str();
  add_execution(app, c.threads, c.workers, c.device);

  a.merge = app->add_subcommand(
      "merge", "Pack all shards of a store into one (an older format version is upgraded)");
  a.merge->add_option("store", a.store, "Complete store directory")->required();
  a.merge->add_option("--out,-o", a.out, "Output store directory")->required();
  a.ensemble =
      app->add_subcommand("ensemble", "Average the labels of stores made on the same crops");
  a.ensemble->add_option("stores", a.members, "Two or more store directories")
      ->required()
      ->expected(2, -1);
  a.ensemble->add_option("--out,-o", a.out, "Output store directory")->required();
  a.ensemble->add_flag("--mixed-amp", a.mixed_amp,
                       "Average stores whose teachers ran in different precisions (--amp)");
  a.verify = app->add_subcommand(
      "verify", "Check every shard and record of a store; list the damaged ones (exit 1 if any)");
  a.verify->add_option("store", a.store, "Store directory")->required();
  RepairConfig& r = a.repair;
  a.repair_app = app->add_subcommand(
      "repair", "Label again exactly the damaged records of a store (fkd label verify lists them)");
  a.repair_app->add_option("store", r.store, "Store directory")->required();
  a.repair_app->add_option("--teacher,-t", r.teacher, "The teacher the store was labeled with")
      ->required();
  a.repair_app->add_option("--data", r.data, "The dataset (default: the one the store names)");
  a.repair_app
      ->add_option("--batch", r.batch,
                   "Crops per teacher forward: the --batch the store was labeled with")
      ->check(kBatch)
      ->capture_default_str();
  add_switch(a.repair_app, "optimize", r.optimize,
             "Freeze and optimize a TorchScript teacher (as when labeling)");
  add_execution(a.repair_app, r.threads, r.workers, r.device);
  add_label_interchange(*app, a);
}

/// `fkd label verify`: every problem on a line of its own; true when the store is sound.
bool print_verification(const std::string& store) {
  // The bar starts with the work, so that its rate is over the time verification took.
  Progress bar("verify", read_manifest(store).num_images, "img");
  uint64_t shown = 0;
  const StoreVerification v = verify_store(store, [&](uint64_t done, uint64_t) {
    bar.advance(done - shown);
    shown = done;
  });
  bar.finish();
  for (const auto& s : v.shards) {
    fmt::print("{}: images [{}, {}) lost: {}\n", s.shard, s.image_begin, s.image_end, s.problem);
  }
  for (const auto& r : v.records) fmt::print("{}\n", r.problem);
  const uint64_t lost = v.damaged_images().size();
  if (!v.manifest_problem.empty()) {
    fmt::print("{}\n", v.manifest_problem);
  } else if (v.ok()) {
    fmt::print("{}: all {} records of {} verified\n", store, v.records_checked, v.images);
  } else {
    fmt::print(
        "{}: {} of {} images have damaged labels ({} damaged records, {} unreadable "
        "shards); fkd label repair {} --teacher T labels exactly those again\n",
        store, lost, v.images, v.records.size(), v.shards.size(), store);
  }
  return v.ok();
}

void add_inspect(CLI::App& root, InspectOptions& o) {
  CLI::App* app = root.add_subcommand("inspect", "Summarize a label store, or show one image");
  app->add_option("store", o.store, "Store directory")->required();
  app->add_option("--data", o.data, "Dataset the store labels (for agreement with the labels)");
  app->add_option("--image", o.image, "Print this image's crops and labels")
      ->check(count_check(0, kMaxImages));
  app->add_option("--render", o.render, "ID OUT.png: draw an image with its crops")->expected(2);
  app->add_option("--limit", o.limit, "Summarize only this many images (0 = all)")
      ->check(kImageCount)
      ->capture_default_str();
}

void add_distill(CLI::App& root, DistillConfig& d) {
  CLI::App* app = root.add_subcommand(
      "distill", "Label with a teacher, then train a student from the labels (FKD)");
  app->add_option("--teacher,-t", d.label.teacher,
                  "TorchScript file (torch.jit.trace/script output) or a checkpoint.pt")
      ->required();
  app->add_option("--data", d.train.data, "Dataset (as for train)")->capture_default_str();
  // The student is --model, as in train; --student (-s) is its other name.
  CLI::Option* model = app->add_option("--model", d.train.model,
                                       zoo_help("Student: zoo model") + kScriptedStudentHelp)
                           ->check(model_check())
                           ->capture_default_str();
  CLI::Option* student =
      app->add_option("--student,-s", d.train.model, "The same as --model")->check(model_check());
  app->final_callback([model, student] {
    if (model->count() && student->count()) {
      throw CLI::ValidationError("--model and --student both name the student: give one");
    }
  });
  add_optimization(app, d.train);
  app->add_option("--crops", d.label.crops,
                  "Crops labeled per image (0 = as many as the epochs use)")
      ->check(count_check(0, kMaxCropsPerImage))
      ->capture_default_str();
  add_quantization(app, d.label);
  add_crop_sampler(app, d.label.crop, "Input side of teacher and student (0 = auto, as for label)");
  add_image_input(app, d.train.interp, d.train.mean, d.train.std, d.train.channels,
                  "the dataset's; a checkpoint teacher keeps its own");
  app->add_option("--label-temperature", d.label.temperature,
                  "Softmax temperature of the stored labels")
      ->check(kTemperature)
      ->capture_default_str();
  add_soft_loss(app, d.train);
  add_precision(app, d.train);
  app->add_option("--out,-o", d.out, "Output directory (labels/, student/)")->capture_default_str();
  add_execution(app, d.train.threads, d.train.workers, d.train.device);
  add_student_run(app, d.train, "the same command continues");
  add_data_parallel(app, d.train);
}

void add_demo(CLI::App& root, DemoOptions& o) {
  CLI::App* app = root.add_subcommand("demo", "Run the Fashion-MNIST demo end to end");
  app->add_option("--out,-o", o.out, "Output directory")->capture_default_str();
  app->add_flag("--quick", o.quick, "A short version (a few minutes)");
  app->add_option("--seed", o.seed,
                  "Seed of the three students (other seeds reuse the teacher and labels)")
      ->check(kSeed)
      ->capture_default_str();
  add_execution(app, o.threads, o.workers, o.device);
}

/// `fkd launch`: everything after `--` is the fkd command line each rank runs, never parsed here.
void add_launch(CLI::App& root, LaunchOptions& o, std::vector<std::string>& command) {
  CLI::App* app = root.add_subcommand(
      "launch",
      "Run an fkd command as several processes (ranks) on this node, with torchrun's environment");
  app->add_option("--nproc-per-node", o.nproc_per_node, "Ranks to start on this node")
      ->required()
      ->check(count_check(1, kMaxRanks));
  app->add_option("--nnodes", o.nnodes, "Nodes of the job, each running its own fkd launch")
      ->check(count_check(1, 65536))
      ->capture_default_str();
  app->add_option("--node-rank", o.node_rank, "This node, 0 to nnodes-1")
      ->check(count_check(0, 65535))
      ->capture_default_str();
  app->add_option("--master-addr", o.master_addr, "Host of node 0, where rank 0 listens")
      ->capture_default_str();
  app->add_option("--master-port", o.master_port, "Rendezvous TCP port on that host")
      ->check(count_check(1, 65535))
      ->capture_default_str();
  app->add_option("--grace", o.grace_seconds,
                  "Seconds a rank gets to stop after SIGTERM before SIGKILL")
      ->check(number_check(0, 1e6, "0 to 1e6"))
      ->capture_default_str();
  app->add_option("command", command, "The fkd command each rank runs, after --");
  app->footer(
      "Example: fkd launch --nproc-per-node 2 -- train --data DIR --model resnet18 --out runs/x\n"
      "A rank that fails stops the others, and its exit status is fkd launch's (128 + N for\n"
      "signal N). SIGINT, SIGTERM and SIGHUP reach every rank; a second one kills them.");
  app->final_callback([&command] {
    if (command.empty()) {
      throw CLI::ValidationError(
          "no command to run: expected fkd launch --nproc-per-node N -- COMMAND...");
    }
  });
}

/// In a data-parallel run, ranks other than 0 print nothing but their errors (no output, no
/// progress): returns the prefix that names this rank in them ("" when alone).
std::string quiet_other_ranks() {
  const DistEnv env = dist_env_from_environment();
  if (!env.distributed()) return "";
  if (env.rank != 0) {
    std::fflush(stdout);
    if (!std::freopen("/dev/null", "w", stdout)) std::fclose(stdout);
    setenv("FKD_PROGRESS", "off", 1);
  }
  return fmt::format("rank {}: ", env.rank);
}

// --- running ---------------------------------------------------------------------------------

/// What a filesystem_error was doing ("cannot create directories"), without the "filesystem
/// error: " before it and the reason and paths after it.
std::string filesystem_operation(const std::filesystem::filesystem_error& e) {
  std::string what = e.what();
  const std::string prefix = "filesystem error: ";
  if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
  const std::string reason = ": " + e.code().message();
  if (const size_t at = what.find(reason); at != std::string::npos) what.resize(at);
  return what;
}

int run_label(LabelArgs& a) {
  if (a.merge->parsed()) {
    if (merge_store(a.store, a.out)) {
      fmt::print("merged {} into {}\n", a.store, a.out);
    } else {
      fmt::print("{}: already holds the merge of {}; nothing to do\n", a.out, a.store);
    }
  } else if (a.ensemble->parsed()) {
    if (ensemble_stores(a.members, a.out, a.mixed_amp)) {
      fmt::print("wrote the ensemble of {} stores to {}\n", a.members.size(), a.out);
    } else {
      fmt::print("{}: already holds the ensemble of these {} stores; nothing to do\n", a.out,
                 a.members.size());
    }
  } else if (a.verify->parsed()) {
    return print_verification(a.store) ? 0 : 1;
  } else if (a.import_app->parsed()) {
    const ReferenceImportResult r = import_reference_labels(a.import);
    if (r.ignored_count) {
      const size_t named = std::min<size_t>(r.ignored.size(), 3);
      fmt::print(stderr, "warning: {}: ignored {} file(s) that label no image of {}: {}{}\n",
                 a.import.src, r.ignored_count, a.import.data,
                 fmt::join(r.ignored.begin(), r.ignored.begin() + ptrdiff_t(named), ", "),
                 r.ignored.size() > named ? ", ..." : "");
    }
    if (r.shared_count) {
      fmt::print(stderr,
                 "warning: {}: {} image(s) share a label file with another image (the reference "
                 "names a file by the image name up to its first dot, so both got one file's "
                 "labels): {}{}\n",
                 a.import.src, r.shared_count, fmt::join(r.shared_files, "; "),
                 r.shared_count > r.shared_files.size() ? "; ..." : "");
    }
    fmt::print("{}: imported {} images ({} crops each) from {} in {:.2f} s, {:.0f} images/s\n",
               a.import.out, r.images, r.crops, a.import.src, r.seconds,
               r.seconds > 0 ? double(r.images) / r.seconds : 0.0);
  } else if (a.export_app->parsed()) {
    const ReferenceExportResult r = export_reference_labels(a.export_cfg);
    fmt::print("{}: wrote {} files ({} already there){}\n", a.export_cfg.out, r.written, r.skipped,
               r.moved_boxes
                   ? fmt::format("; float16 coords move {} crops by a pixel", r.moved_boxes)
                   : "");
  } else if (a.repair_app->parsed()) {
    const RepairResult r = repair_store(a.repair);
    if (!r.needed) {
      fmt::print("{}: no damaged records; nothing to repair\n", a.repair.store);
    } else {
      fmt::print("{}: labeled {} images again ({} shards whole); the store verifies\n",
                 a.repair.store, r.images, r.shards);
    }
  } else {
    const LabelResult r = generate_labels(a.label);
    fmt::print(
        "{}: labeled {} images ({} crops) in {:.1f} s, {:.0f} crops/s, teacher in {} busy "
        "{:.0f}% of the time{}\n",
        r.store, r.images, r.crops, r.seconds, r.seconds > 0 ? double(r.crops) / r.seconds : 0.0,
        amp_dtype_name(r.teacher_amp), r.seconds > 0 ? 100.0 * r.teacher_seconds / r.seconds : 0.0,
        r.complete ? "; the store is complete" : "; other shards are still missing");
  }
  return 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  // A file size limit (ulimit -f) is a full disk: without this, the kernel kills the process
  // with SIGXFSZ mid-write, leaving a temporary file and no word; ignored, the write fails
  // with EFBIG and the writer's error path removes its file and says so in one line.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"fkd: fast knowledge distillation for vision models"};
  app.formatter(std::make_shared<HelpFormatter>());  // before the subcommands, which copy it
  app.require_subcommand(1);
  app.set_version_flag("--version", "fkd " FKD_VERSION);

  TrainConfig train_cfg;
  add_train(app, train_cfg);
  std::string eval_model;
  EvalOptions eval_opts;
  add_eval(app, eval_model, eval_opts);
  ExportArgs export_args;
  add_export(app, export_args);
  LabelArgs label_args;
  add_label(app, label_args);
  InspectOptions inspect_opts;
  add_inspect(app, inspect_opts);
  DistillConfig distill_cfg;
  add_distill(app, distill_cfg);
  DemoOptions demo_opts;
  add_demo(app, demo_opts);
  LaunchOptions launch_opts;
  std::vector<std::string> launch_command;
  add_launch(app, launch_opts, launch_command);

  // A first word that names no subcommand: CLI11 would only say that one is required.
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands({})) names.push_back(sub->get_name());
  if (argc > 1 && argv[1][0] != '-' &&
      std::find(names.begin(), names.end(), argv[1]) == names.end()) {
    fmt::print(stderr, "fkd: error: unknown subcommand '{}': expected one of {} (see --help)\n",
               argv[1], fmt::join(names, ", "));
    return 2;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other error; usage errors exit 2, as argparse's do.
    fmt::print(stderr, "fkd: error: {} (see --help)\n", one_line(e.what()));
    return 2;
  }

  std::string who;  // "rank R: " before the errors of a rank of a data-parallel run
  try {
    if (app.got_subcommand("train") || app.got_subcommand("distill")) who = quiet_other_ranks();
    if (app.got_subcommand("train")) {
      train(train_cfg);
    } else if (app.got_subcommand("eval")) {
      const EvalResult r = is_onnx_path(eval_model) ? evaluate_onnx_file(eval_model, eval_opts)
                                                    : evaluate_file(eval_model, eval_opts);
      fmt::print("{}: {} images  top1 {:.2f}%  top5 {:.2f}%  loss {:.4f}\n", eval_model, r.samples,
                 r.top1, r.top5, r.loss);
      if (r.bad_samples) fmt::print(stderr, "warning: {} image(s) skipped\n", r.bad_samples);
    } else if (app.got_subcommand("export")) {
      run_export(export_args);
    } else if (label_args.app->parsed()) {
      return run_label(label_args);
    } else if (app.got_subcommand("inspect")) {
      run_inspect(inspect_opts);
    } else if (app.got_subcommand("distill")) {
      run_distill(distill_cfg);
    } else if (app.got_subcommand("demo")) {
      run_demo(demo_opts);
    } else if (app.got_subcommand("launch")) {
      return launch(launch_opts, self_executable(), launch_command);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "fkd: error: {}{}\n", who, one_line(e.what()));
    return 1;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "fkd: error: {}{}\n", who, one_line(e.what_without_backtrace()));
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // "PATH: what failed: reason", like fkd's own messages.
    if (e.path1().empty()) {  // the temporary directory's errors name no path
      fmt::print(stderr, "fkd: error: {}the temporary directory (TMPDIR={}): {}\n", who,
                 std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "unset: /tmp", e.code().message());
    } else {
      fmt::print(stderr, "fkd: error: {}{}: {}: {}\n", who, e.path1().string(),
                 filesystem_operation(e), e.code().message());
    }
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "fkd: error: {}{}\n", who, one_line(e.what()));
    return 1;
  }
  return 0;
}

}  // namespace fkd
