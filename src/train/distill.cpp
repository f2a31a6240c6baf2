#include "fkd/distill.h"

#include <filesystem>

#include <fmt/core.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/progress.h"

namespace fs = std::filesystem;

namespace fkd {

TrainResult run_distill(DistillConfig cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  LabelConfig& l = cfg.label;
  TrainConfig& t = cfg.train;
  FKD_CHECK(!l.teacher.empty(), ConfigError, "distill: --teacher is required");
  FKD_CHECK(t.num_crops >= 1, ConfigError, "--num-crops must be at least 1");
  FKD_CHECK(t.epochs >= 1, ConfigError, "--epochs must be at least 1");
  l.data = t.data;
  l.limit = t.limit_train;
  l.channels = t.channels;
  if (t.input_size) l.input_size = t.input_size;
  l.threads = t.threads;
  l.workers = t.workers;
  l.device = t.device;
  l.out = (fs::path(cfg.out) / "labels").string();
  // What training needs is checked before any time goes into labels: the student and its
  // options, and a val split to evaluate on.
  {
    TrainConfig check = t;
    check.mode = "fkd";
    check.labels = l.out;
    DatasetOptions dopt;
    dopt.channels = check.channels;
    dopt.limit = check.limit_train;
    const auto train_set = open_dataset(check.data, Split::kTrain, dopt);
    resolve_config(check, *train_set);
    dopt.channels = check.channels;
    dopt.limit = check.limit_val;
    open_dataset(check.data, Split::kVal, dopt);
  }
  // Enough crops that no stored crop is used twice in the run.
  if (l.crops == 0) l.crops = (t.epochs + t.num_crops - 1) / t.num_crops * t.num_crops;
  fmt::print("== 1/2 label: {} crops per image of {} with {}\n", l.crops, t.data, l.teacher);
  std::fflush(stdout);
  const LabelResult lr = generate_labels(l);
  FKD_CHECK(lr.complete, ConfigError,
            "{}: other shards of the store are still missing; label them, then train with "
            "fkd train --labels {}",
            l.out, l.out);

  t.mode = "fkd";
  t.labels = l.out;
  t.teacher.clear();
  t.out = (fs::path(cfg.out) / "student").string();
  t.resume = true;
  fmt::print("== 2/2 train {} from {} ({} epochs, {} crops per image per pass)\n", t.model,
             l.out, t.epochs, t.num_crops);
  std::fflush(stdout);
  TrainResult r = train(t);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r.history.empty()) {
    fmt::print("student {}: top-1 {:.2f}%, top-5 {:.2f}% after {} epochs; {} in all\n"
               "checkpoint: {}\n",
               t.model, r.history.back().top1, r.history.back().top5, r.history.back().epoch,
               format_duration(secs), r.checkpoint);
  }
  return r;
}

}  // namespace fkd
