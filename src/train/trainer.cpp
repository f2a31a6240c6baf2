// `fkd train`: the loop that teachers and students share. train() opens the data, builds the
// crop source of the mode, starts or resumes the run, then runs passes; each pass trains,
// evaluates, checkpoints and logs.
#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "amp.h"
#include "checkpoint.h"
#include "device.h"
#include "dist/dist.h"
#include "dist/gradient_sync.h"
#include "dist/sync_bn.h"
#include "ema.h"
#include "evaluation.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/launch.h"
#include "fkd/models.h"
#include "fkd/progress.h"
#include "fkd/replay.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "fkd/train_input.h"
#include "input.h"
#include "objective.h"
#include "optimizer.h"
#include "schedule.h"
#include "teachers.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {

/// "1 epoch", "2 epochs"; `plural` where adding an s is wrong.
std::string count_of(int64_t n, const char* one, const char* plural = nullptr) {
  return n == 1   ? fmt::format("1 {}", one)
         : plural ? fmt::format("{} {}", n, plural)
                  : fmt::format("{} {}s", n, one);
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

/// A store labels one subset of the dataset: without --limit-train, train on that subset
/// (check_store_matches refuses any other).
void adopt_store_subset(TrainConfig& cfg) {
  const bool fkd = cfg.mode == TrainMode::kFkd || cfg.mode == TrainMode::kAuto;
  if (cfg.labels.empty() || cfg.limit_train != 0 || !fkd) return;
  const size_t subset = store_subset_size(cfg.labels);
  if (subset == 0) return;
  cfg.limit_train = subset;
  fmt::print(
      "labels {}: made for a subset of {} training images (fkd label --limit); "
      "training on that subset (--limit-train {})\n",
      cfg.labels, subset, subset);
}

/// The lock file of a run directory while a run holds it (DirectoryLock).
constexpr const char* kRunLockName = "train.lock";

/// The fields of a TrainConfig that say how a run executes, not what it computes.
constexpr const char* kExecutionKeys[] = {"threads",      "workers",     "device",
                                          "out",          "strict_data", "channels_last",
                                          "dist_timeout", "input_format"};

/// On resume, every field that defines the run must match the checkpoint's; only how it
/// executes (threads, workers, device, output) may change.
void check_resume_compatible(const TrainConfig& now, const TrainConfig& saved,
                             const std::string& path) {
  auto a = nlohmann::json::parse(config_to_json(now));
  auto b = nlohmann::json::parse(config_to_json(saved));
  for (const char* k : kExecutionKeys) {
    a.erase(k);
    b.erase(k);
  }
  for (auto it = a.begin(); it != a.end(); ++it) {
    FKD_CHECK(b.contains(it.key()) && b[it.key()] == it.value(), WorkMismatch,
              "--resume: option '{}' is {} but the run in {} used {}; use the same options "
              "or a new --out{}",
              it.key(), it.value().dump(), path, b.contains(it.key()) ? b[it.key()].dump() : "?",
              it.key() == "epochs" ? " (--extend-epochs continues a run to more epochs)" : "");
  }
}

/// Where the crops come from: the stored crops of a label store (FKD), or random crops.
std::shared_ptr<const CropSource> make_crop_source(const TrainConfig& cfg, const Dataset& train_set,
                                                   const PassPlan& plan) {
  if (cfg.mode != TrainMode::kFkd) {
    return std::make_shared<RandomCropSource>(train_transform(cfg), cfg.seed);
  }
  auto store = std::make_shared<StoreReader>(cfg.labels);
  const Manifest& mf = store->manifest();
  const int m = cfg.num_crops;
  fmt::print("labels {}: {} per image by {}, {}; {} per image per pass, {}{}\n", cfg.labels,
             count_of(mf.crops_per_image, "crop"), mf.teacher, describe_labels(mf),
             count_of(m, "crop"), count_of(plan.passes(), "pass", "passes"),
             uint64_t(plan.crops_used()) > mf.crops_per_image
                 ? fmt::format(" (stored crops are reused after {} epochs)", mf.crops_per_image)
                 : "");
  return store_crop_source(cfg, train_set, store);
}

/// --resume with nothing to resume is refused before any work (unless resume_or_start).
void check_resume_target(const TrainConfig& cfg) {
  FKD_CHECK(!cfg.extend_epochs || cfg.resume, ConfigError,
            "--extend-epochs continues a run: it goes with --resume");
  if (!cfg.resume || cfg.resume_or_start) return;
  const fs::path ckpt = fs::path(cfg.out) / "checkpoint.pt";
  std::error_code ec;
  FKD_CHECK(fs::exists(ckpt, ec), ConfigError,
            "--resume: {} holds no run to resume ({}); check --out, or start a new run without "
            "--resume (--resume-or-start does either)",
            cfg.out, fs::exists(cfg.out, ec) ? "no checkpoint.pt" : "no such directory");
}

/// --extend-epochs: a larger --epochs than the run's, from the end of a whole pass.
void check_extension(const TrainConfig& cfg, const CheckpointMeta& saved, const std::string& path) {
  const TrainConfig& was = saved.config;
  if (!cfg.extend_epochs || cfg.epochs == was.epochs) {
    FKD_CHECK(!cfg.extend_epochs, ConfigError,
              "--extend-epochs: --epochs {} is the run's own count in {}; give the larger "
              "count to continue to",
              cfg.epochs, path);
    return;
  }
  FKD_CHECK(cfg.epochs > was.epochs, ConfigError,
            "--extend-epochs: --epochs {} is fewer than the {} of the run in {}; a run can only "
            "be extended",
            cfg.epochs, was.epochs, path);
  // A last, partial FKD pass has counted fewer epochs than it used crops: passes after it
  // would not line up with the effective epochs.
  const PassPlan plan{was.epochs, was.num_crops};
  FKD_CHECK(saved.epochs_done < was.epochs || plan.epochs_in(plan.passes() - 1) == was.num_crops,
            ConfigError,
            "--extend-epochs: the run in {} ended on a partial pass ({} epochs at --num-crops {}); "
            "only a run whose --epochs is a multiple of --num-crops can be extended once finished",
            path, was.epochs, was.num_crops);
}

/// The checkpoint a --resume run continues from (nullopt for a new run), checked against
/// the run: the same options (but a larger --epochs with --extend-epochs) and classes.
std::optional<CheckpointFile> open_resumed(const TrainConfig& cfg, const Dataset& train_set,
                                           const std::string& ckpt_path) {
  if (!cfg.resume || !fs::exists(ckpt_path)) return std::nullopt;
  std::optional<CheckpointFile> saved = open_checkpoint(ckpt_path);
  check_extension(cfg, saved->meta, ckpt_path);
  TrainConfig same = cfg;
  if (cfg.extend_epochs) same.epochs = saved->meta.config.epochs;
  check_resume_compatible(same, saved->meta.config, ckpt_path);
  FKD_CHECK(saved->meta.classes == train_set.classes(), WorkMismatch,
            "--resume: the classes of {} differ from those in {}", cfg.data, ckpt_path);
  return saved;
}

/// The student: a zoo model, or the model of a TorchScript file. A resumed run continues the
/// copy of the file its checkpoint carries, and refuses a file that changed since.
std::shared_ptr<Net> make_student(const TrainConfig& cfg, int num_classes,
                                  std::optional<CheckpointFile>& saved) {
  if (!is_model_file(cfg.model)) return make_model(cfg.model, cfg.channels, num_classes);
  std::optional<std::vector<uint8_t>> archive;
  if (saved) {
    archive = checkpoint_student_archive(*saved);
    FKD_CHECK(archive.has_value(), FormatError,
              "{}: a run of {} but no copy of it in the checkpoint", saved->path, cfg.model);
    FKD_CHECK(!fs::exists(cfg.model) || read_whole_file(cfg.model) == *archive, WorkMismatch,
              "--resume: {} changed since the run in {} started from it; restore it, or train "
              "it with a new --out",
              cfg.model, saved->path);
  } else {
    archive = read_whole_file(cfg.model);
  }
  auto net = load_scripted_model(std::move(*archive), cfg.model, cfg.channels, num_classes);
  check_student_fits(net, cfg, num_classes);
  return net;
}

/// Starts the run in cfg.out, or resumes it from its checkpoint: restores the model, the
/// optimizer, the RNG, the weights' EMA and the loss scaler, and rewrites metrics.jsonl to
/// the checkpoint's history.
CheckpointMeta start_or_resume(const TrainConfig& cfg, const Dataset& train_set, Net& net,
                               torch::optim::Optimizer& optimizer, LossScaler& scaler,
                               ModelEma* ema, std::optional<CheckpointFile>& saved,
                               const std::string& ckpt_path, const std::string& metrics_path,
                               bool leader) {
  CheckpointMeta meta;
  meta.model = cfg.model;
  meta.in_channels = cfg.channels;
  meta.num_classes = int(train_set.classes().size());
  meta.classes = train_set.classes();
  meta.config = cfg;
  if (saved) {
    restore_model(*saved, net);
    restore_training_state(*saved, optimizer);
    if (ema) ema->load(checkpoint_ema(*saved), ckpt_path);
    if (const torch::Tensor s = checkpoint_scaler(*saved); s.defined() && scaler.enabled()) {
      scaler.load_state(s);
    }
    meta.epochs_done = saved->meta.epochs_done;
    meta.step = saved->meta.step;
    meta.history = saved->meta.history;
    fmt::print("resuming {} after epoch {}/{}\n", ckpt_path, meta.epochs_done, cfg.epochs);
  } else {
    FKD_CHECK(!fs::exists(ckpt_path) || cfg.resume, ConfigError,
              "{} already holds a run; pass --resume to continue it or choose a new --out",
              cfg.out);
  }
  if (leader) write_metrics_file(metrics_path, meta.history);  // drops unfinished epochs' lines
  return meta;
}

/// For fault tests: FKD_TEST_RANK_FAULT="kill:R:S" (or "stop:R:S") makes rank R send itself
/// SIGKILL (SIGSTOP) when it has finished step S, a controlled point of a data-parallel run.
void test_fault_after_step(const Distributed& dist, int64_t step) {
  static const auto fault = [] {
    std::array<int64_t, 3> f{-1, -1, -1};  // signal, rank, step
    const char* v = std::getenv("FKD_TEST_RANK_FAULT");
    char kind[8] = {0};
    long long r = -1, s = -1;
    if (v && std::sscanf(v, "%7[a-z]:%lld:%lld", kind, &r, &s) == 3) {
      f = {std::strcmp(kind, "stop") == 0 ? SIGSTOP : SIGKILL, r, s};
    }
    return f;
  }();
  if (fault[1] == dist.rank() && fault[2] == step) ::raise(int(fault[0]));
}

/// For tests of other front ends' loaders: FKD_TEST_DUMP_BATCHES=DIR writes every training
/// batch as DIR/pass-P-batch-B.bin, its images [n, c, h, w] float32, soft labels
/// [n, soft_classes] float32 and targets [n] int64, raw native-endian, one after the other.
void dump_batch_for_tests(const Batch& b, const torch::Tensor& x, int pass) {
  static const char* dir = std::getenv("FKD_TEST_DUMP_BATCHES");
  if (!dir) return;
  std::string bytes;
  const auto put = [&bytes](const void* p, size_t n) {
    bytes.append(static_cast<const char*>(p), n);
  };
  // The images as the model gets them (float32 NCHW), whatever --input-format made them.
  const torch::Tensor images = x.to(torch::kCPU).contiguous();
  put(images.data_ptr(), sizeof(float) * size_t(images.numel()));
  put(b.soft.data(), sizeof(float) * b.soft.size());
  put(b.targets.data(), sizeof(int64_t) * b.targets.size());
  write_file_durably(fmt::format("{}/pass-{}-batch-{}.bin", dir, pass, b.index), bytes);
}

/// What one pass over the training images measured.
struct PassStats {
  double loss = 0, top1 = 0;  ///< means over the pass's samples (top-1 in percent)
  size_t seen = 0;            ///< samples trained on
  double lr = 0;              ///< learning rate of the last step
  double seconds = 0;         ///< wall time
  int64_t skipped = 0;        ///< steps the loss scaler skipped (non-finite gradients)
  double data_seconds = 0;    ///< waiting for batches
};

/// Everything a pass needs, built once per run.
struct Trainer {
  const TrainConfig& cfg;
  const torch::Device& device;
  Net& net;
  torch::optim::Optimizer& optimizer;
  const Objective& objective;
  Loader& loader;
  Loader& val_loader;
  int64_t warmup_steps, total_steps;
  Distributed& dist;
  GradientSync& grads;
  LossScaler& scaler;  ///< fp16 loss scaling (a pass-through otherwise)
  ModelEma* ema;       ///< the weights' EMA (--model-ema), else null

  /// Pass `pass` of `plan`: trains on it, then evaluates; its line of metrics.jsonl.
  EpochMetrics epoch(const PassPlan& plan, int pass, int64_t* step) {
    const auto t0 = std::chrono::steady_clock::now();
    const int first = plan.first_epoch(pass), covered = plan.epochs_in(pass);
    const std::string title =
        plan.crops == 1 ? fmt::format("epoch {}/{}", first + 1, cfg.epochs)
                        : fmt::format("epochs {}-{}/{}", first + 1, first + covered, cfg.epochs);
    const PassStats s = run_pass(pass, title, step);
    if (s.seen == 0) {
      // Every sample was skipped (a crop larger than every image, undecodable files): saving
      // this pass would record an untrained model as trained.
      const auto& bad = loader.bad_samples();
      fail<DataError>("{}: no training sample could be loaded, nothing was trained{}",
                      title.empty() ? "training" : title,
                      bad.empty() ? std::string() : "; the first: " + bad.front().error);
    }
    grads.sync_buffers();  // rank 0's BatchNorm statistics, as DistributedDataParallel
    net.eval();
    const EvalResult ev = evaluate("  eval");
    EvalResult ev_ema;
    if (ema) {
      const ModelEma::Swap swap(*ema, net);
      ev_ema = evaluate("  eval EMA");
    }
    EpochMetrics em;
    em.epoch = first + covered;
    em.epochs_covered = covered;
    em.train_loss = s.loss;
    em.train_top1 = s.top1;
    em.val_loss = ev.loss;
    em.top1 = ev.top1;
    em.top5 = ev.top5;
    em.lr = s.lr;
    em.samples_per_s = s.seconds > 0 ? double(s.seen) / s.seconds : 0;
    em.train_seconds = s.seconds;
    em.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    em.skipped_steps = s.skipped;
    em.data_seconds = s.data_seconds;
    if (ema) {
      em.ema_val_loss = ev_ema.loss;
      em.ema_top1 = ev_ema.top1;
      em.ema_top5 = ev_ema.top5;
    }
    return em;
  }

  /// The model as it is now on the val split (this rank's share), under the run's autocast.
  EvalResult evaluate(const char* title) {
    return run_evaluation(
        [&](const torch::Tensor& x) {
          const Autocast autocast(objective.amp(), device);
          return net.forward(x).to(torch::kFloat32);
        },
        val_loader, device, cfg.channels_last, title, &dist);
  }

  /// Trains on pass `pass` (its crops, `title` on the progress bar), advancing *step.
  PassStats run_pass(int pass, const std::string& title, int64_t* step) {
    const auto t0 = std::chrono::steady_clock::now();
    net.train();
    DeviceFeed feed(loader, device, cfg.channels_last);
    feed.start_epoch(pass);
    const int64_t skipped_before = scaler.skipped_steps();
    const auto params = net.parameters();
    const int m = cfg.num_crops;
    Progress bar(title, loader.dataset().size() * size_t(m), m == 1 ? "img" : "crop");
    // loss sum, correct, samples: summed over the ranks at the end of the pass
    auto totals = torch::zeros({3}, torch::TensorOptions(device).dtype(torch::kDouble));
    PassStats s;
    s.lr = cfg.lr;
    DeviceBatch db;
    for (;;) {
      const auto wait0 = std::chrono::steady_clock::now();
      if (!feed.next(db)) break;
      s.data_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - wait0).count();
      const Batch& b = db.batch;
      dump_batch_for_tests(b, db.x, pass);
      // A rank whose slice of the batch is empty still takes the step with the others.
      if (b.n == 0 && !dist.active()) continue;
      s.lr = lr_at(cfg.lr, *step, warmup_steps, total_steps);
      set_lr(optimizer, s.lr);
      optimizer.zero_grad();
      if (b.n > 0) {
        const auto [loss, logits] = objective(b, db.x, db.y, db.soft, *step, net);
        // The gradient all-reduce averages over the ranks; weighting each rank's mean by its
        // share of the global batch makes that the global batch's mean.
        backward(
            scaler.scale(dist.active() ? loss * (double(b.n) * dist.world() / double(b.global_n))
                                       : loss),
            *step);
        totals[0] += loss.detach().to(torch::kDouble) * double(b.n);
        totals[1] += logits.detach().argmax(1).eq(db.y).sum().to(torch::kDouble);
        totals[2] += double(b.n);
      } else {
        backward(scaler.scale(empty_slice_loss(b)), *step);
      }
      // fp16: a step whose gradients overflowed is skipped (all ranks agree: the gradients
      // were all-reduced); otherwise a plain optimizer step.
      scaler.step(params, [&] { optimizer.step(); });
      ++*step;
      if (ema) ema->update(net, *step);
      test_fault_after_step(dist, *step);
      // A loss that is not finite has ruined the weights: stop before they are saved, as
      // timm does. On a GPU the check waits for the device, so it runs every few steps.
      if (device.is_cpu() || *step % kFiniteCheckSteps == 0) check_finite(totals, title, *step);
      bar.advance(uint64_t(dist.active() ? b.global_n : b.n));
    }
    bar.finish();
    check_finite(totals, title, *step);
    std::vector<torch::Tensor> sums{totals};
    dist.all_reduce_sum(sums, "summing the training metrics of " + title);
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.skipped = scaler.skipped_steps() - skipped_before;
    s.seen = size_t(totals[2].item<double>());
    if (s.seen) {
      s.loss = totals[0].item<double>() / double(s.seen);
      s.top1 = 100.0 * totals[1].item<double>() / double(s.seen);
    }
    return s;
  }

  /// The backward pass; in a data-parallel run the Reducer all-reduces the gradients bucket
  /// by bucket while it runs.
  void backward(const torch::Tensor& loss, int64_t step) {
    if (!dist.active()) return loss.backward();
    grads.prepare_backward();
    dist.run(fmt::format("the gradient all-reduce of step {}", step), [&] { loss.backward(); });
  }

  /// A loss of zero that reaches every parameter (and, with --sync-bn, every BatchNorm's
  /// collectives), for a rank with no sample in this step's slice.
  torch::Tensor empty_slice_loss(const Batch& b) {
    torch::Tensor loss = torch::zeros({}, torch::TensorOptions(device));
    if (cfg.sync_bn) {
      const auto x = torch::zeros({0, b.c, b.h, b.w}, torch::TensorOptions(device));
      loss = loss + net.forward(x).sum() * 0.0;
    }
    for (const auto& p : net.parameters()) loss = loss + p.sum() * 0.0;
    return loss;
  }

  static constexpr int64_t kFiniteCheckSteps = 32;

  void check_finite(const torch::Tensor& totals, const std::string& title, int64_t step) const {
    const double v = totals[0].item<double>();
    FKD_CHECK(std::isfinite(v), DataError,
              "{}, step {}: the training loss is {}; stopping before the weights are saved "
              "({} keeps the last finished epoch): lower --lr, add --warmup-epochs or check the "
              "data",
              title, step, v, (fs::path(cfg.out) / "checkpoint.pt").string());
  }
};

/// The val split of a resolved run, with the training split's classes.
std::shared_ptr<const Dataset> open_val_set(const TrainConfig& cfg, const Dataset& train_set) {
  DatasetOptions dopt;
  dopt.channels = cfg.channels;
  dopt.limit = cfg.limit_val;
  auto val_set = open_dataset(cfg.data, Split::kVal, dopt);
  FKD_CHECK(val_set->classes() == train_set.classes(), DataError,
            "{}: the val split's classes differ from the train split's", cfg.data);
  return val_set;
}

void report_skipped(const Loader& l, const char* split) {
  if (l.skipped() == 0) return;
  fmt::print(stderr, "warning: {} {} sample(s) could not be loaded and were skipped:\n",
             l.skipped(), split);
  for (const auto& s : l.bad_samples()) fmt::print(stderr, "  {}\n", s.error);
  if (l.skipped() > l.bad_samples().size()) {
    fmt::print(stderr, "  ... and {} more\n", l.skipped() - l.bad_samples().size());
  }
}

/// Every rank must run the same thing from the same point: the run's definition, its label
/// store and where it resumes. A difference is named at start, not found as a hang.
void check_ranks_agree(Distributed& dist, const TrainConfig& cfg, const CheckpointMeta& meta) {
  if (!dist.active()) return;
  validate_rank_split(cfg, dist.rank(), dist.world());
  auto run = nlohmann::json::parse(config_to_json(cfg));
  for (const char* k : kExecutionKeys) run.erase(k);
  dist.check_same("configuration", run.dump());
  if (cfg.mode == TrainMode::kFkd) {
    const std::vector<uint8_t> bytes =
        read_whole_file((fs::path(cfg.labels) / "manifest.json").string());
    const std::string manifest(bytes.begin(), bytes.end());
    dist.check_same("label store (hash of its manifest.json)",
                    fmt::format("{:016x}", std::hash<std::string>{}(manifest)));
  }
  dist.check_same("resume point", fmt::format("epoch {} step {}", meta.epochs_done, meta.step));
}

/// The training loader (this rank's slice of every batch) and the val loader (its slice of
/// the val split).
std::pair<std::unique_ptr<Loader>, std::unique_ptr<Loader>> make_loaders(
    const TrainConfig& cfg, std::shared_ptr<const Dataset> train_set,
    std::shared_ptr<const Dataset> val_set, std::shared_ptr<const CropSource> source,
    const Distributed& dist, const torch::Device& device) {
  LoaderOptions lopt = train_loader_options(cfg, dist.rank(), dist.world());
  lopt.uint8_nhwc = cfg.input_format == "uint8" || (cfg.input_format == "auto" && device.is_cuda());
  lopt.host_memory = pinned_host_memory(device);
  auto train_loader =
      std::make_unique<Loader>(std::move(train_set), train_transform(cfg), source, lopt);
  LoaderOptions vopt = lopt;
  vopt.batch_size = 256;
  vopt.shuffle = false;
  auto val_loader = std::make_unique<Loader>(std::move(val_set), eval_transform(cfg), vopt);
  return {std::move(train_loader), std::move(val_loader)};
}

/// train() on this rank of `dist` (alone when it is not active).
TrainResult train_rank(TrainConfig cfg, std::shared_ptr<const Dataset> train_set,
                       Distributed& dist) {
  const int threads = configure_threads(cfg.threads);
  const torch::Device device = rank_device(parse_device(cfg.device), dist.local_rank());
  std::vector<std::string> notes;
  resolve_config(cfg, *train_set, &notes);
  for (const std::string& n : notes) fmt::print("{}\n", n);
  auto val_set = open_val_set(cfg, *train_set);
  const int num_classes = int(train_set->classes().size());

  const PassPlan plan{cfg.epochs, cfg.num_crops};
  auto source = make_crop_source(cfg, *train_set, plan);
  const Objective objective(cfg, num_classes, device);

  // Rank 0 writes the run directory, and holds it: a second run on the same --out (or a
  // second --resume) stops here instead of overwriting this one's checkpoints.
  std::optional<DirectoryLock> out_lock;
  if (dist.leader()) {
    make_directories(cfg.out, "--out");
    out_lock.emplace(cfg.out, kRunLockName, "the run directory (--out)");
    // Only a holder of the lock writes these: any left now are from a run that was killed.
    if (const size_t n = remove_stale_temporaries(cfg.out, {"checkpoint.pt", "metrics.jsonl"})) {
      fmt::print("{}: removed {} temporary file(s) a killed run left\n", cfg.out, n);
    }
  }
  const std::string ckpt_path = (fs::path(cfg.out) / "checkpoint.pt").string();
  const std::string metrics_path = (fs::path(cfg.out) / "metrics.jsonl").string();
  std::optional<CheckpointFile> saved = open_resumed(cfg, *train_set, ckpt_path);
  if (saved && saved->meta.epochs_done >= cfg.epochs) {
    const CheckpointMeta& m = saved->meta;
    fmt::print(
        "{}: the run is finished ({}, top-1 {:.2f}%); nothing to train (--extend-epochs "
        "with a larger --epochs continues it)\n",
        ckpt_path, count_of(m.epochs_done, "epoch"),
        m.history.empty() ? 0.0 : m.history.back().top1);
    TrainResult done;
    done.history = m.history;
    done.checkpoint = ckpt_path;
    return done;
  }
  // An extended run: where its schedule stood, to say where it goes on.
  const int epochs_before = saved ? saved->meta.config.epochs : cfg.epochs;
  const double lr_before =
      saved && !saved->meta.history.empty() ? saved->meta.history.back().lr : 0.0;
  torch::manual_seed(cfg.seed);
  std::shared_ptr<Net> net = make_student(cfg, num_classes, saved);
  FKD_CHECK(!(cfg.sync_bn && dist.active() && scripted_archive(*net)), ConfigError,
            "--sync-bn: {} is a TorchScript student, whose BatchNorm layers fkd cannot make span "
            "the ranks; train it without --sync-bn (each rank normalizes its own slice)",
            cfg.model);
  place_model(*net, device, cfg.channels_last);
  auto optimizer = make_optimizer(cfg, *net);
  LossScaler scaler(objective.amp() == AmpMode::kFp16, device);
  std::unique_ptr<ModelEma> ema;
  if (cfg.model_ema > 0) {
    ModelEma::Options eo;
    eo.decay = cfg.model_ema;
    eo.warmup = cfg.model_ema_warmup;
    ema = std::make_unique<ModelEma>(*net, eo);
  }
  CheckpointMeta meta = start_or_resume(cfg, *train_set, *net, *optimizer, scaler, ema.get(), saved,
                                        ckpt_path, metrics_path, dist.leader());
  saved.reset();  // its tensors are copied into the model, the optimizer and the EMA
  check_ranks_agree(dist, cfg, meta);
  GradientSync grads(dist, *net);
  if (cfg.sync_bn && dist.active()) set_batch_norm_sync(*net, make_sync_batch_norm(dist));
  auto [train_loader, val_loader] = make_loaders(cfg, train_set, val_set, source, dist, device);

  const int64_t steps_per_pass = int64_t(train_loader->num_batches());
  Trainer trainer{cfg,
                  device,
                  *net,
                  *optimizer,
                  objective,
                  *train_loader,
                  *val_loader,
                  plan.steps_in(cfg.warmup_epochs, steps_per_pass),
                  steps_per_pass * plan.passes(),
                  dist,
                  grads,
                  scaler,
                  ema.get()};
  fmt::print(
      "train {} ({}) on {} ({} train / {} val images, {} classes, {}x{}x{}), {}, {}, {}, "
      "device {}{}{}\n",
      cfg.model, mode_name(cfg.mode), cfg.data, train_set->size(), val_set->size(), num_classes,
      cfg.channels, cfg.crop.size, cfg.crop.size, count_of(cfg.epochs, "epoch"),
      count_of(threads, "thread"), count_of(cfg.workers, "worker"), device.str(),
      dist.active()
          ? fmt::format(", {} ranks of {} samples{}", dist.world(),
                        cfg.batch_size / size_t(dist.world()), cfg.sync_bn ? ", SyncBatchNorm" : "")
          : "",
      objective.amp() == AmpMode::kOff ? "" : fmt::format(", amp {}", amp_name(objective.amp())));
  if (epochs_before != cfg.epochs) {
    fmt::print(
        "extending the run from {} to {} epochs: the cosine schedule now ends at epoch {}, so "
        "the learning rate goes on at {:.4g} (it had decayed to {:.4g})\n",
        epochs_before, cfg.epochs, cfg.epochs,
        lr_at(cfg.lr, meta.step, trainer.warmup_steps, trainer.total_steps), lr_before);
  }
  std::fflush(stdout);

  int passes_this_call = 0;
  for (int pass = plan.pass_after(meta.epochs_done); pass < plan.passes(); ++pass) {
    const EpochMetrics em = trainer.epoch(plan, pass, &meta.step);
    meta.epochs_done = em.epoch;
    meta.history.push_back(em);
    if (dist.leader()) {
      CheckpointExtras extras;
      const torch::Tensor scaler_state = scaler.enabled() ? scaler.state() : torch::Tensor();
      if (ema) extras.ema = &ema->tensors();
      if (scaler.enabled()) extras.scaler = &scaler_state;
      save_checkpoint(ckpt_path, meta, *net, optimizer.get(), extras);
      write_metrics_file(metrics_path, meta.history);
    }
    fmt::print(
        "epoch {:>3}/{}  loss {:.4f}  train {:.2f}%  val loss {:.4f}  top1 {:.2f}%  "
        "top5 {:.2f}%{}  lr {:.4g}  {:.0f} {}/s  {}{}\n",
        em.epoch, cfg.epochs, em.train_loss, em.train_top1, em.val_loss, em.top1, em.top5,
        ema ? fmt::format("  EMA top1 {:.2f}%", em.ema_top1) : "", em.lr, em.samples_per_s,
        plan.crops == 1 ? "img" : "crop", format_duration(em.seconds),
        em.skipped_steps ? fmt::format("  ({} fp16 steps skipped)", em.skipped_steps) : "");
    std::fflush(stdout);
    if (cfg.stop_after > 0 && ++passes_this_call >= cfg.stop_after) break;
  }
  // No rank leaves before rank 0 has written the last checkpoint.
  dist.barrier("the end of training");

  TrainResult result;
  result.history = meta.history;
  result.checkpoint = ckpt_path;
  result.bad_samples = train_loader->skipped() + val_loader->skipped();
  report_skipped(*train_loader, "train");
  report_skipped(*val_loader, "val");
  return result;
}

}  // namespace

TrainResult train(TrainConfig cfg) {
  validate_config(cfg);
  check_resume_target(cfg);  // before the data is read: a mistyped --out is named at once
  adopt_store_subset(cfg);
  return train(cfg, open_train_set(cfg));
}

TrainResult train(TrainConfig cfg, std::shared_ptr<const Dataset> train_set) {
  validate_config(cfg);
  const DistEnv env = dist_env_from_environment();
  Distributed dist(env, cfg.dist_timeout, rank_device(parse_device(cfg.device), env.local_rank));
  return train(std::move(cfg), std::move(train_set), dist);
}

TrainResult train(TrainConfig cfg, std::shared_ptr<const Dataset> train_set, Distributed& dist) {
  try {
    check_resume_target(cfg);
    return train_rank(std::move(cfg), std::move(train_set), dist);
  } catch (const std::exception& e) {
    dist.record_failure(one_line(e.what()));
    throw;
  }
}

}  // namespace fkd
