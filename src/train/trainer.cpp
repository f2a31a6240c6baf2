#include <filesystem>
#include <fstream>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "checkpoint.h"
#include "soft_loss.h"
#include "fkd/error.h"
#include "fkd/models.h"
#include "fkd/progress.h"
#include "fkd/replay.h"
#include "fkd/rng.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "session.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {

/// "1 epoch", "2 epochs"; `plural` where adding an s is wrong.
std::string count_of(int64_t n, const char* one, const char* plural = nullptr) {
  return n == 1 ? fmt::format("1 {}", one)
                : plural ? fmt::format("{} {}", n, plural) : fmt::format("{} {}s", n, one);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& cfg, Net& net) {
  if (cfg.optimizer == "adamw") {
    return std::make_unique<torch::optim::AdamW>(
        net.parameters(), torch::optim::AdamWOptions(cfg.lr).weight_decay(cfg.weight_decay));
  }
  return std::make_unique<torch::optim::SGD>(net.parameters(),
                                             torch::optim::SGDOptions(cfg.lr)
                                                 .momentum(cfg.momentum)
                                                 .nesterov(cfg.nesterov)
                                                 .weight_decay(cfg.weight_decay));
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

/// On resume, every field that defines the run must match the checkpoint's; only how it
/// executes (threads, workers, device, output) may change.
void check_resume_compatible(const TrainConfig& now, const TrainConfig& saved,
                             const std::string& path) {
  auto a = nlohmann::json::parse(config_to_json(now));
  auto b = nlohmann::json::parse(config_to_json(saved));
  for (const char* k : {"threads", "workers", "device", "out", "strict_data", "channels_last"}) {
    a.erase(k);
    b.erase(k);
  }
  for (auto it = a.begin(); it != a.end(); ++it) {
    FKD_CHECK(b.contains(it.key()) && b[it.key()] == it.value(), WorkMismatch,
              "--resume: option '{}' is {} but the run in {} used {}; use the same options "
              "or a new --out",
              it.key(), it.value().dump(), path, b.contains(it.key()) ? b[it.key()].dump() : "?");
  }
}

void write_metrics_file(const std::string& path, const std::vector<EpochMetrics>& history) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    for (const auto& m : history) f << metrics_to_json(m) << "\n";
    FKD_CHECK(f.good(), IoError, "{}: cannot write", tmp);
  }
  FKD_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, IoError, "{}: cannot rename", tmp);
}

}  // namespace

TrainResult train(TrainConfig cfg) {
  const int threads = configure_threads(cfg.threads);
  const torch::Device device = parse_device(cfg.device);

  // A store labels one subset of the dataset: without --limit-train, train on that subset
  // (check_store_matches below refuses any other).
  if (!cfg.labels.empty() && cfg.limit_train == 0 && (cfg.mode == "fkd" || cfg.mode == "auto") &&
      fs::exists(fs::path(cfg.labels) / "manifest.json")) {
    const uint64_t store_limit = read_manifest(cfg.labels).dataset_limit;
    if (store_limit > 0) {
      cfg.limit_train = size_t(store_limit);
      fmt::print("labels {}: made for a subset of {} training images (fkd label --limit); "
                 "training on that subset (--limit-train {})\n",
                 cfg.labels, store_limit, store_limit);
    }
  }

  DatasetOptions dopt;
  dopt.channels = cfg.channels;
  dopt.limit = cfg.limit_train;
  auto train_set = open_dataset(cfg.data, Split::kTrain, dopt);
  resolve_config(cfg, *train_set);
  dopt.channels = cfg.channels;
  dopt.limit = cfg.limit_val;
  auto val_set = open_dataset(cfg.data, Split::kVal, dopt);
  FKD_CHECK(val_set->classes() == train_set->classes(), DataError,
            "{}: the val split's classes differ from the train split's", cfg.data);

  const std::string ckpt_path = (fs::path(cfg.out) / "checkpoint.pt").string();
  const std::string metrics_path = (fs::path(cfg.out) / "metrics.jsonl").string();
  const int num_classes = int(train_set->classes().size());

  // Where the targets come from: the labels (supervised), a label store (FKD), a teacher (KD).
  const int m = cfg.num_crops;
  const TrainTransform tt = train_transform(cfg);
  std::shared_ptr<const CropSource> source;
  if (cfg.mode == "fkd") {
    auto store = std::make_shared<StoreReader>(cfg.labels);
    const Manifest& mf = store->manifest();
    check_store_matches(mf, cfg.labels, *train_set, cfg.data, cfg.limit_train);
    source = std::make_shared<StoreCropSource>(store, m, cfg.seed);
    const int passes = (cfg.epochs + m - 1) / m;
    fmt::print("labels {}: {} per image by {}, {} top-{} {}; {} per image per pass, {}{}\n",
               cfg.labels, count_of(mf.crops_per_image, "crop"), mf.teacher,
               label_type_name(mf.label_type), mf.k, precision_name(mf.precision),
               count_of(m, "crop"), count_of(passes, "pass", "passes"),
               uint64_t(passes) * uint64_t(m) > mf.crops_per_image
                   ? fmt::format(" (stored crops are reused after {} epochs)", mf.crops_per_image)
                   : "");
  } else {
    source = std::make_shared<RandomCropSource>(tt, cfg.seed);
  }
  std::unique_ptr<Teacher> teacher;
  torch::Tensor renorm_scale, renorm_shift;  // student-normalized input -> teacher-normalized
  if (cfg.mode == "kd") {
    TrainConfig tcfg;
    bool ckpt = false;
    teacher = open_teacher(cfg.teacher, device, /*optimize=*/true, &tcfg, &ckpt);
    check_teacher_classes(*teacher, cfg.teacher, device, cfg.channels, cfg.input_size,
                          num_classes, cfg.data);
    if (ckpt && (tcfg.mean != cfg.mean || tcfg.std != cfg.std)) {
      FKD_CHECK(tcfg.mean.size() == cfg.mean.size(), ConfigError,
                "teacher {} takes {} input channels, the student {}", cfg.teacher,
                tcfg.mean.size(), cfg.mean.size());
      std::vector<float> scale, shift;
      for (size_t c = 0; c < cfg.mean.size(); ++c) {
        scale.push_back(cfg.std[c] / tcfg.std[c]);
        shift.push_back((cfg.mean[c] - tcfg.mean[c]) / tcfg.std[c]);
      }
      const int64_t nc = int64_t(scale.size());
      renorm_scale = torch::tensor(scale).view({1, nc, 1, 1}).to(device);
      renorm_shift = torch::tensor(shift).view({1, nc, 1, 1}).to(device);
    }
  }

  fs::create_directories(cfg.out);

  torch::manual_seed(cfg.seed);
  std::shared_ptr<Net> net = make_model(cfg.model, cfg.channels, num_classes);
  place_model(*net, device, cfg.channels_last);
  auto optimizer = make_optimizer(cfg, *net);

  CheckpointMeta meta;
  meta.model = cfg.model;
  meta.in_channels = cfg.channels;
  meta.num_classes = num_classes;
  meta.classes = train_set->classes();
  meta.config = cfg;
  if (cfg.resume && fs::exists(ckpt_path)) {
    CheckpointMeta saved = read_checkpoint_meta(ckpt_path);
    check_resume_compatible(cfg, saved.config, ckpt_path);
    FKD_CHECK(saved.classes == meta.classes, WorkMismatch,
              "--resume: the classes of {} differ from those in {}", cfg.data, ckpt_path);
    load_checkpoint_into(ckpt_path, *net, optimizer.get(), /*restore_rng=*/true);
    meta.epochs_done = saved.epochs_done;
    meta.step = saved.step;
    meta.history = saved.history;
    write_metrics_file(metrics_path, meta.history);  // drop lines of unfinished epochs
    fmt::print("resuming {} after epoch {}/{}\n", ckpt_path, meta.epochs_done, cfg.epochs);
  } else {
    FKD_CHECK(!fs::exists(ckpt_path) || cfg.resume, ConfigError,
              "{} already holds a run; pass --resume to continue it or choose a new --out",
              cfg.out);
    write_metrics_file(metrics_path, {});
  }

  LoaderOptions lopt;
  lopt.batch_size = cfg.batch_size;
  lopt.seed = cfg.seed;
  lopt.workers = cfg.workers;
  lopt.strict = cfg.strict_data;
  Loader train_loader(train_set, tt, source, lopt);
  LoaderOptions vopt = lopt;
  vopt.batch_size = 256;
  vopt.shuffle = false;
  Loader val_loader(val_set, eval_transform(cfg), vopt);

  // One pass over the images yields m crops of each: it counts as m epochs (the last pass
  // may count fewer), and the schedule runs in these effective epochs.
  const int passes = (cfg.epochs + m - 1) / m;
  const int64_t steps_per_pass = int64_t(train_loader.num_batches());
  const int64_t total_steps = steps_per_pass * passes;
  const int64_t warmup_steps = int64_t(cfg.warmup_epochs * double(steps_per_pass) / m);
  fmt::print("train {} ({}) on {} ({} train / {} val images, {} classes, {}x{}x{}), {}, {}, {}, "
             "device {}\n",
             cfg.model, cfg.mode, cfg.data, train_set->size(), val_set->size(), num_classes,
             cfg.channels, cfg.input_size, cfg.input_size, count_of(cfg.epochs, "epoch"),
             count_of(threads, "thread"), count_of(cfg.workers, "worker"), device.str());
  std::fflush(stdout);

  const bool soft = cfg.mode != "supervised";
  const bool mixing = cfg.mixup > 0 || cfg.cutmix > 0;
  TrainResult result;
  std::ofstream metrics(metrics_path, std::ios::app);
  int passes_this_call = 0;
  for (int pass = (meta.epochs_done + m - 1) / m; pass < passes; ++pass) {
    const int first_epoch = pass * m;  // 0-based effective epoch at the start of the pass
    const int covered = std::min(m, cfg.epochs - first_epoch);
    const auto t0 = std::chrono::steady_clock::now();
    net->train();
    train_loader.start_epoch(pass);
    const std::string title =
        m == 1 ? fmt::format("epoch {}/{}", first_epoch + 1, cfg.epochs)
               : fmt::format("epochs {}-{}/{}", first_epoch + 1, first_epoch + covered,
                             cfg.epochs);
    Progress bar(title, train_set->size() * size_t(m), m == 1 ? "img" : "crop");
    auto loss_sum = torch::zeros({}, torch::TensorOptions(device).dtype(torch::kDouble));
    auto correct = torch::zeros({}, torch::TensorOptions(device).dtype(torch::kLong));
    size_t seen = 0;
    double lr = cfg.lr;
    Batch b;
    while (train_loader.next(b)) {
      if (b.n == 0) continue;
      lr = lr_at(cfg.lr, meta.step, warmup_steps, total_steps);
      set_lr(*optimizer, lr);
      auto x = batch_images(b, device, cfg.channels_last);
      const auto y = batch_targets(b, device);
      torch::Tensor logits, loss;
      if (!soft && !mixing) {
        logits = net->forward(x);
        loss = torch::nn::functional::cross_entropy(
            logits, y,
            torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(
                cfg.label_smoothing));
      } else {
        torch::Tensor q, hard;
        if (cfg.mode == "fkd") {
          q = torch::from_blob(b.soft.data(), {b.n, b.soft_classes}, torch::kFloat32).to(device);
        }
        if (!soft || cfg.hard_weight > 0) hard = one_hot_targets(y, num_classes, cfg.label_smoothing);
        if (mixing) {
          Rng rng(cfg.seed, RngStream::kMix, {uint64_t(meta.step)});
          const MixPlan plan = sample_mix(rng, cfg.mixup, cfg.cutmix, cfg.mix_prob,
                                          cfg.switch_prob, b.h, b.w);
          x = apply_mix(plan, x, {&q, &hard});
        }
        if (cfg.mode == "kd") {
          torch::NoGradGuard no_grad;
          const auto xt = renorm_scale.defined() ? x * renorm_scale + renorm_shift : x;
          q = torch::softmax(teacher->logits(xt).to(torch::kFloat32) / cfg.temperature, 1);
        }
        logits = net->forward(x);
        if (!soft) {
          loss = soft_cross_entropy(logits, hard, 1.0);
        } else {
          loss = soft_cross_entropy(logits, q, cfg.temperature);
          if (cfg.hard_weight > 0) {
            loss = loss * (1.0 - cfg.hard_weight) +
                   soft_cross_entropy(logits, hard, 1.0) * cfg.hard_weight;
          }
        }
      }
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      ++meta.step;
      loss_sum += loss.detach().to(torch::kDouble) * double(b.n);
      correct += logits.detach().argmax(1).eq(y).sum();
      seen += size_t(b.n);
      bar.advance(uint64_t(b.n));
    }
    bar.finish();
    const double train_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    net->eval();
    const EvalResult ev = run_evaluation([&](const torch::Tensor& x) { return net->forward(x); },
                                         val_loader, device, cfg.channels_last, "  eval");
    EpochMetrics em;
    em.epoch = first_epoch + covered;
    em.epochs_covered = covered;
    em.train_loss = seen ? loss_sum.item<double>() / double(seen) : 0;
    em.train_top1 = seen ? 100.0 * double(correct.item<int64_t>()) / double(seen) : 0;
    em.val_loss = ev.loss;
    em.top1 = ev.top1;
    em.top5 = ev.top5;
    em.lr = lr;
    em.samples_per_s = train_seconds > 0 ? double(seen) / train_seconds : 0;
    em.train_seconds = train_seconds;
    em.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    meta.epochs_done = em.epoch;
    meta.history.push_back(em);
    save_checkpoint(ckpt_path, meta, *net, optimizer.get());
    metrics << metrics_to_json(em) << "\n";
    metrics.flush();
    fmt::print("epoch {:>3}/{}  loss {:.4f}  train {:.2f}%  val loss {:.4f}  top1 {:.2f}%  "
               "top5 {:.2f}%  lr {:.4g}  {:.0f} {}/s  {}\n",
               em.epoch, cfg.epochs, em.train_loss, em.train_top1, em.val_loss, em.top1, em.top5,
               em.lr, em.samples_per_s, m == 1 ? "img" : "crop", format_duration(em.seconds));
    std::fflush(stdout);
    if (cfg.stop_after > 0 && ++passes_this_call >= cfg.stop_after) break;
  }

  result.history = meta.history;
  result.checkpoint = ckpt_path;
  result.bad_samples = train_loader.skipped() + val_loader.skipped();
  auto report_bad = [](const Loader& l, const char* split) {
    if (l.skipped() == 0) return;
    fmt::print(stderr, "warning: {} {} image(s) could not be read and were skipped:\n",
               l.skipped(), split);
    for (const auto& s : l.bad_samples()) fmt::print(stderr, "  {}\n", s.error);
    if (l.skipped() > l.bad_samples().size()) {
      fmt::print(stderr, "  ... and {} more\n", l.skipped() - l.bad_samples().size());
    }
  };
  report_bad(train_loader, "train");
  report_bad(val_loader, "val");
  return result;
}

}  // namespace fkd
