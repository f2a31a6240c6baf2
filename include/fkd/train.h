// Training and evaluation: the loop that teachers and students share.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fkd/transforms.h"

namespace fkd {

/// Where a run's targets come from.
enum class TrainMode : uint8_t {
  kAuto,        ///< kFkd with labels, kKd with a teacher, else kSupervised (resolve_config)
  kSupervised,  ///< the dataset's class labels
  kFkd,         ///< soft labels of stored crops, replayed from a label store
  kKd,          ///< online KD: a teacher labels every batch
};
/// "auto", "supervised", "fkd", "kd"
const char* mode_name(TrainMode m);
TrainMode parse_mode(const std::string& name);  ///< throws ConfigError

/// Everything that defines a training run. Saved in every checkpoint (as JSON) so that
/// --resume continues the same run and eval/export know what was trained.
struct TrainConfig {
  // --- data
  std::string data = "fashion-mnist";  ///< dataset spec (see open_dataset)
  int channels = 0;                    ///< 0 = dataset default, 1 or 3
  size_t limit_train = 0;              ///< use a deterministic subset of this many (0 = all)
  size_t limit_val = 0;                ///< likewise for the val split
  /// Training crops: kind (auto: RandomCrop for images of 64 px or less at the input size,
  /// else RandomResizedCrop),
  /// size (the model's input side; 0 = from the data), scale, ratio, padding, flip.
  CropSampler crop;
  std::string interp = "bilinear";  ///< bilinear | bicubic
  std::vector<float> mean;          ///< empty = auto (Fashion-MNIST or ImageNet statistics)
  std::vector<float> std;           ///< empty = auto
  int eval_resize = 0;              ///< eval Resize size; 0 = auto (input size / 0.875)
  // --- model
  /// A zoo name, or a TorchScript file of a torch.jit.script'ed model (is_model_file)
  std::string model = "resnet20";
  // --- optimization
  std::string optimizer = "sgd";  ///< sgd | adamw
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  /// Parameters of at most one dimension (norm weights, biases) get no weight decay (timm's
  /// filter_bias_and_bn).
  bool no_decay_norm_bias = false;
  int epochs = 15;
  double warmup_epochs = 0;      ///< linear warm-up, then cosine decay to 0 (per step)
  double label_smoothing = 0.1;  ///< hard-label cross-entropy (supervised, --hard-weight)
  size_t batch_size = 128;
  uint64_t seed = 0;
  // --- precision
  /// Mixed precision of the forward pass: "auto" (bf16 on a GPU that runs it natively, off
  /// on the CPU), "off", "bf16" or "fp16" (CUDA only; dynamic loss scaling). Soft-label
  /// losses are computed in float32 either way.
  std::string amp = "auto";
  double model_ema = 0;           ///< decay of an EMA of the weights (timm's --model-ema); 0 = off
  bool model_ema_warmup = false;  ///< timm's EMA decay warm-up: 1 - (1 + step)^(-2/3), capped
  // --- distillation
  TrainMode mode = TrainMode::kAuto;
  std::string labels;        ///< fkd: label store directory (fkd label)
  int num_crops = 4;         ///< fkd: crops per image per pass; one pass counts as this many epochs
  std::string teacher;       ///< kd: TorchScript file or checkpoint.pt of fkd train
  double temperature = 1;    ///< soft cross-entropy temperature T: -sum q log softmax(z/T)
  double hard_weight = 0;    ///< weight of hard-label cross-entropy mixed into the soft loss
  double mixup = 0;          ///< Mixup Beta(alpha, alpha); 0 = off
  double cutmix = 0;         ///< CutMix Beta(alpha, alpha); 0 = off
  double mix_prob = 1;       ///< probability that a batch is mixed (when an alpha is set)
  double switch_prob = 0.5;  ///< probability of CutMix rather than Mixup when both are set
  /// Data-parallel runs: BatchNorm normalizes with the statistics of the whole global batch
  /// (SyncBatchNorm) instead of each rank's slice.
  bool sync_bn = false;
  // --- execution
  int threads = 0;             ///< torch intra-op threads; 0 = all cores
  int workers = 1;             ///< data loader threads
  std::string device = "cpu";  ///< cpu | cuda | cuda:N
  bool channels_last = true;   ///< NHWC activations (faster convolutions with oneDNN/cuDNN)
  /// What the loader hands over: "float" (normalized float32 NCHW, made on the CPU),
  /// "uint8" (the crops' bytes, NHWC, normalized on the device: a quarter of the bytes to
  /// make and to copy) or "auto" (uint8 on a GPU, float on the CPU). The model sees the same
  /// values either way.
  std::string input_format = "auto";
  bool strict_data = false;  ///< a bad image aborts the run instead of being skipped
  /// A damaged label-store record skips its image (counted and reported) instead of
  /// stopping the run; `fkd label verify` lists them and `fkd label repair` remakes them.
  bool skip_damaged_labels = false;
  /// Data-parallel runs: seconds any rendezvous or collective may wait for the other ranks
  /// before the run stops naming the rank that failed.
  double dist_timeout = 600;
  std::string out = "runs/train";  ///< run directory: checkpoint.pt, metrics.jsonl
  /// Continue from out/checkpoint.pt: ConfigError when there is none (a mistyped --out must
  /// not start hours of training over), unless resume_or_start; a finished run trains nothing.
  bool resume = false;
  /// With resume: start the run when out holds no checkpoint yet (a job that may be started
  /// again from the top: fkd distill, the demo, --resume-or-start).
  bool resume_or_start = false;
  /// With resume: continue a run to a larger `epochs` than it was started with. The schedule
  /// is recomputed over the new count: warm-up unchanged, the cosine decay now ends at the new
  /// last epoch, so the learning rate goes on at that longer schedule's value for the steps
  /// taken (half the peak when 15 epochs become 30).
  bool extend_epochs = false;
  int stop_after = 0;  ///< stop (as if interrupted) after this many passes (FKD: a pass is
                       ///< num_crops epochs) of this invocation; 0 = run to the end
};

class Dataset;
class Distributed;

/// Checks every option that needs no data (ranges, names, combinations) and throws
/// ConfigError naming the flag. Fields left at auto (0, empty, kAuto) pass.
void validate_config(const TrainConfig& cfg);

/// Fills the auto fields of a config from its training set (channels; input size: a
/// Fashion-MNIST/IDX image's side, else the images' median shorter side capped at 224;
/// crop kind; eval resize; mean/std; mode) and validates it (validate_config plus the
/// resolved values). `notes`, when given, receives lines for the user: the input size
/// chosen and why, and a warning when the input size upscales the images more than 2x.
void resolve_config(TrainConfig& cfg, const Dataset& train_set,
                    std::vector<std::string>* notes = nullptr);

std::string config_to_json(const TrainConfig& cfg);
TrainConfig config_from_json(const std::string& json, const std::string& source);

/// Metrics of one epoch (one line of metrics.jsonl).
struct EpochMetrics {
  int epoch = 0;  ///< 1-based
  double train_loss = 0;
  double train_top1 = 0;  ///< percent, on augmented training samples
  double val_loss = 0;
  double top1 = 0;           ///< percent, val split
  double top5 = 0;           ///< percent, val split
  double lr = 0;             ///< learning rate at the end of the epoch
  double samples_per_s = 0;  ///< training samples per second
  double seconds = 0;        ///< wall time of the epoch (training + evaluation)
  double train_seconds = 0;  ///< wall time of training alone (no evaluation)
  /// Of train_seconds, the time the steps waited for the loader's next batch (and, on a GPU,
  /// for its copy): what the data pipeline did not hide behind the model's compute.
  double data_seconds = 0;
  /// Epochs this line covers: 1, or in FKD mode the num_crops epochs of one pass over the
  /// images (fewer for a last, partial pass). `epoch` is the last of them.
  int epochs_covered = 1;
  /// The model EMA's val loss, top-1 and top-5 (--model-ema; NaN without it).
  double ema_val_loss = std::nan(""), ema_top1 = std::nan(""), ema_top5 = std::nan("");
  int64_t skipped_steps = 0;  ///< fp16 steps skipped for non-finite gradients in the epoch
};

struct TrainResult {
  std::vector<EpochMetrics> history;  ///< every epoch of the run, resumed ones included
  std::string checkpoint;             ///< path of the last checkpoint
  size_t bad_samples = 0;             ///< images skipped because they failed to load
};

/// Runs (or resumes) training in the config's mode: supervised, FKD from a label store, or
/// online KD with a teacher. Writes out/checkpoint.pt and out/metrics.jsonl (one line per
/// epoch, FKD: per pass) after every epoch, each atomically.
TrainResult train(TrainConfig cfg);
/// train() on a training split already opened (with cfg.channels and cfg.limit_train
/// applied), so that a caller which opened it (fkd distill) does not scan it again.
TrainResult train(TrainConfig cfg, std::shared_ptr<const Dataset> train_set);
/// train() as one rank of a data-parallel run (fkd distill, which labels on the same ranks
/// first). The other overloads join the ranks named by the environment
/// (dist_env_from_environment); with one process they run alone.
TrainResult train(TrainConfig cfg, std::shared_ptr<const Dataset> train_set, Distributed& dist);

/// Top-1/top-5 of a model on a dataset split.
struct EvalResult {
  double loss = 0;
  double top1 = 0;  ///< percent
  double top5 = 0;  ///< percent
  size_t samples = 0;
  size_t bad_samples = 0;
};

struct EvalOptions {
  std::string data = "fashion-mnist";
  std::string split = "val";  ///< val | train
  size_t limit = 0;
  size_t batch_size = 256;
  int threads = 0;
  int workers = 1;
  std::string device = "cpu";
  bool channels_last = true;
  /// Transform overrides; 0/empty = take them from the checkpoint's config.
  int input_size = 0;
  int eval_resize = 0;
  std::vector<float> mean, std;
  int channels = 0;
  /// When set, the logits (float32 [N, classes]) / the model's inputs (float32 [N, C, H, W])
  /// in dataset order are written to these files, each with a JSON beside it (FILE.json:
  /// shape, labels); docs/edge.md.
  std::string save_logits, save_inputs;
};

/// Evaluates a checkpoint written by train() or a TorchScript model file (ONNX files:
/// evaluate_onnx_file, fkd/edge.h).
EvalResult evaluate_file(const std::string& model_path, const EvalOptions& opts);

/// What an exported model takes and gives: the input the run trained and evaluated it on.
/// Every export records it as the JSON file fkd.json of its archive (docs/checkpoint.md).
struct ExportMetadata {
  std::string format;                ///< "torchscript" or "state_dict"
  std::string model;                 ///< zoo name, or the TorchScript student's file
  bool ema = false;                  ///< the weights' EMA (--model-ema) rather than the weights
  int channels = 0;                  ///< input channels (1 gray, 3 RGB)
  int input_size = 0;                ///< side of the square input, pixels
  std::vector<float> mean, std;      ///< per channel, applied to pixels / 255: (x - mean) / std
  std::string interpolation;         ///< of every resize: bilinear or bicubic
  int eval_resize = 0;               ///< evaluation: the shorter side resized to this (0: not)...
  CropSampler train_crop;            ///< training: the crop recipe
  std::vector<std::string> classes;  ///< output k is classes[k]
};
/// fkd.json: the metadata as a JSON object (docs/checkpoint.md, "Exports").
std::string export_metadata_json(const ExportMetadata& m);
/// One line for people: the input it expects (size, channels, mean/std, resize and crop)
/// and its classes.
std::string describe_export(const ExportMetadata& m);

/// Writes a checkpoint's model as a TorchScript file ("torchscript") or a state-dict
/// pickle ("state_dict") that Python can load; with `ema`, the EMA of its weights
/// (--model-ema) instead of the weights. Either archive holds fkd.json (ExportMetadata),
/// which the result returns.
ExportMetadata export_model(const std::string& checkpoint, const std::string& out,
                            const std::string& format, bool ema = false);

/// Sets torch's intra-op threads (0 = all cores; in a distributed run, this node's cores
/// divided among its ranks) and returns the count in use.
int configure_threads(int threads);

}  // namespace fkd
