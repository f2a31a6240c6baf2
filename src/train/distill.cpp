// `fkd distill`: label with a teacher, then train a student from the labels, on one opening
// of the dataset.
#include "fkd/distill.h"

#include <chrono>
#include <filesystem>

#include <fmt/core.h>

#include "device.h"
#include "dist/dist.h"
#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/launch.h"
#include "fkd/models.h"
#include "fkd/progress.h"
#include "fkd/train.h"
#include "schedule.h"
#include "teachers.h"

namespace fs = std::filesystem;

namespace fkd {

TrainResult run_distill(DistillConfig cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  LabelConfig& l = cfg.label;
  TrainConfig& t = cfg.train;
  t.mode = TrainMode::kFkd;
  t.labels = (fs::path(cfg.out) / "labels").string();
  t.teacher.clear();
  t.out = (fs::path(cfg.out) / "student").string();
  t.resume = true;  // the same command continues, or starts, the student's run
  t.resume_or_start = true;
  l.data = t.data;
  l.limit = t.limit_train;
  // The images' input options are the teacher's and the student's.
  l.channels = t.channels;
  l.interp = t.interp;
  l.mean = t.mean;
  l.std = t.std;
  // --input-size is the teacher's and the student's.
  if (t.crop.size) l.crop.size = t.crop.size;
  t.crop.size = l.crop.size;
  l.threads = t.threads;
  l.workers = t.workers;
  l.device = t.device;
  l.amp = t.amp;
  l.out = t.labels;
  // Enough crops that no stored crop is used twice in the run.
  if (l.crops == 0) l.crops = PassPlan{t.epochs, t.num_crops}.crops_used();
  validate_config(t);
  validate_label_config(l);

  // What training needs is checked before any time goes into labels: the student and its
  // options, and a val split to evaluate on.
  DatasetOptions dopt;
  dopt.channels = t.channels;
  dopt.limit = t.limit_train;
  const std::shared_ptr<const Dataset> train_set = open_dataset(t.data, Split::kTrain, dopt);
  {
    TrainConfig check = t;
    resolve_config(check, *train_set);
    // A TorchScript student that does not fit the data is named now, not after labeling.
    if (is_model_file(t.model) && !fs::exists(fs::path(t.out) / "checkpoint.pt")) {
      const int classes = int(train_set->classes().size());
      check_student_fits(
          load_scripted_model(read_whole_file(t.model), t.model, check.channels, classes), check,
          classes);
    }
    dopt.channels = check.channels;
    dopt.limit = check.limit_val;
    open_dataset(check.data, Split::kVal, dopt);
  }
  // Every rank labels its shard of the images (RANK/WORLD_SIZE), waits for the others,
  // then trains on its slice of every batch.
  const DistEnv env = dist_env_from_environment();
  Distributed dist(env, t.dist_timeout, rank_device(parse_device(t.device), env.local_rank));
  make_directories(cfg.out, "--out");
  fmt::print("== 1/2 label: {} crops per image of {} with {}\n", l.crops, t.data, l.teacher);
  std::fflush(stdout);
  LabelResult lr;
  try {
    lr = generate_labels(l, train_set);
  } catch (const std::exception& e) {
    dist.record_failure(one_line(e.what()));
    throw;
  }
  if (dist.active()) {
    dist.wait_for_all("labeling");
  } else {
    FKD_CHECK(lr.complete, ConfigError,
              "{}: other shards of the store are still missing; label them, then train with "
              "fkd train --labels {}",
              l.out, l.out);
  }

  fmt::print("== 2/2 train {} from {} ({} epochs, {} crops per image per pass)\n", t.model, l.out,
             t.epochs, t.num_crops);
  std::fflush(stdout);
  TrainResult r = train(t, train_set, dist);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r.history.empty()) {
    fmt::print(
        "student {}: top-1 {:.2f}%, top-5 {:.2f}% after {} epochs; {} in all\n"
        "checkpoint: {}\n",
        t.model, r.history.back().top1, r.history.back().top5, r.history.back().epoch,
        format_duration(secs), r.checkpoint);
  }
  return r;
}

}  // namespace fkd
