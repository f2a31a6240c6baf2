#include "fkd/demo.h"

#include <filesystem>

#include <fmt/core.h>
#include <fmt/format.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/label.h"
#include "fkd/plot.h"
#include "fkd/progress.h"
#include "fkd/train.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {

/// The demo's settings: a full one (about 14 minutes on 2 cores) and a quick one.
struct Recipe {
  size_t images;          ///< the students' training subset (labeled for FKD)
  size_t teacher_images;  ///< the teacher's training subset (contains the students')
  size_t val_images;      ///< test subset (0 = all 10,000)
  int teacher_epochs;
  int epochs;     ///< effective epochs of every student
  int num_crops;  ///< FKD crops per image per pass
};

Recipe recipe(bool quick) {
  // One crop per image per pass: in schedules this short, FKD's accuracy follows how often
  // each image is visited (bench/RESULTS.md); the teacher sees a superset of the images.
  // Distillation pays in proportion to the teacher's quality: the full demo's teacher sees
  // the whole training set twice (about 90% top-1).
  if (quick) return {2000, 6000, 2000, 2, 8, 1};
  return {4000, 60000, 5000, 2, 16, 1};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

DemoStudent summarize(const std::string& name, const TrainResult& r) {
  DemoStudent s;
  s.name = name;
  double train_s = 0;
  int epochs = 0;
  for (const EpochMetrics& m : r.history) {
    s.seconds += m.seconds;
    train_s += m.train_seconds;
    epochs += m.epochs_covered;
    s.curve_seconds.push_back(s.seconds);
    s.curve_top1.push_back(m.top1);
  }
  if (!r.history.empty()) s.top1 = r.history.back().top1;
  s.epoch_seconds = epochs ? train_s / epochs : 0;
  return s;
}

std::string results_table(const DemoResult& d) {
  const DemoStudent& plain = d.students[0];
  const DemoStudent& kd = d.students[1];
  std::string t =
      "| student (tiny) | test top-1 | wall time | s / epoch | speed vs plain | speed vs online KD "
      "|\n"
      "|----------------|-----------:|----------:|----------:|---------------:|-------------------:"
      "|\n";
  for (const DemoStudent& s : d.students) {
    t += fmt::format("| {:<14} | {:>9.2f}% | {:>9} | {:>9.1f} | {:>13.2f}x | {:>17.2f}x |\n",
                     s.name, s.top1, format_duration(s.seconds), s.epoch_seconds,
                     s.epoch_seconds > 0 ? plain.epoch_seconds / s.epoch_seconds : 0.0,
                     s.epoch_seconds > 0 ? kd.epoch_seconds / s.epoch_seconds : 0.0);
  }
  return t;
}

/// One run of the demo: its options, recipe and output folder.
struct DemoRun {
  const DemoOptions& opts;
  Recipe rc;
  fs::path out;
  std::string tag;  ///< "-seedN" for seeds other than 0: their students train beside seed 0's

  /// The common part of every training run of the demo.
  TrainConfig base(const std::string& model, const std::string& dir) const {
    TrainConfig c;
    c.data = "fashion-mnist";
    c.model = model;
    c.limit_train = rc.images;
    c.limit_val = rc.val_images;
    c.threads = opts.threads;
    c.workers = opts.workers;
    c.device = opts.device;
    c.out = (out / dir).string();
    c.resume = true;  // re-running the demo continues (or reuses) finished runs
    c.resume_or_start = true;
    return c;
  }
};

/// 1. The teacher.
TrainResult train_teacher(const DemoRun& run, bool& redo, DemoResult& d) {
  fmt::print("== 1/5 teacher: resnet20 on {} Fashion-MNIST images, {} epochs\n",
             run.rc.teacher_images, run.rc.teacher_epochs);
  std::fflush(stdout);
  TrainConfig tc = run.base("resnet20", "teacher");
  tc.limit_train = run.rc.teacher_images;
  tc.epochs = run.rc.teacher_epochs;
  // The teacher trains on hard labels, as in the setting measured in bench/RESULTS.md
  // (whether label smoothing helps or hurts a teacher's soft labels is debated).
  tc.label_smoothing = 0;
  const TrainResult teacher = run_demo_stage(tc.out, redo, [&] { return train(tc); });
  d.teacher_top1 = teacher.history.back().top1;
  d.teacher_seconds = 0;
  for (const auto& m : teacher.history) d.teacher_seconds += m.seconds;
  return teacher;
}

/// 2. Soft labels: as many crops per image as the students' epochs use. Returns the store
/// and sets `label_time` for the report.
std::string label_store(const DemoRun& run, const std::string& teacher, bool& redo, DemoResult& d,
                        std::string& label_time) {
  fmt::print("\n== 2/5 label: {} crops of each image with the teacher\n", run.rc.epochs);
  std::fflush(stdout);
  LabelConfig lc;
  lc.teacher = teacher;
  lc.data = "fashion-mnist";
  lc.limit = run.rc.images;
  lc.crops = run.rc.epochs;
  lc.crop.kind = CropKind::kPadded;  // the small-image recipe the plain and KD students use
  lc.threads = run.opts.threads;
  lc.workers = run.opts.workers;
  lc.device = run.opts.device;
  lc.out = (run.out / "labels").string();
  const auto t0 = std::chrono::steady_clock::now();
  const LabelResult lr = run_demo_stage(lc.out, redo, [&] { return generate_labels(lc); });
  d.label_seconds = lr.crops ? lr.seconds : seconds_since(t0);
  // A store an earlier demo finished is reused: this run did not time its labeling.
  label_time = lr.crops ? format_duration(d.label_seconds) : "done by an earlier run";
  return lc.out;
}

/// 3-5. The tiny student three ways, same effective epochs and seed.
void train_students(const DemoRun& run, const std::string& teacher, const std::string& store,
                    bool redo, DemoResult& d) {
  const char* names[] = {"plain", "online KD", "FKD"};
  for (int k = 0; k < 3; ++k) {
    fmt::print("\n== {}/5 student: tiny, {}, {} epochs\n", 3 + k, names[k], run.rc.epochs);
    std::fflush(stdout);
    const char* dir = k == 0 ? "student-plain" : k == 1 ? "student-kd" : "student-fkd";
    TrainConfig sc = run.base("tiny", dir + run.tag);
    sc.epochs = run.rc.epochs;
    sc.seed = run.opts.seed;
    if (k == 1) sc.teacher = teacher;
    if (k == 2) {
      sc.labels = store;
      sc.num_crops = run.rc.num_crops;
    }
    bool redo_student = redo;  // the students build on the teacher and labels, not on each other
    d.students.push_back(
        summarize(names[k], run_demo_stage(sc.out, redo_student, [&] { return train(sc); })));
  }
}

/// The plot of test top-1 against wall-clock time; returns its file name.
std::string write_plot(const DemoRun& run, const DemoResult& d) {
  std::vector<PlotSeries> plot;
  for (const DemoStudent& s : d.students) {
    PlotSeries p;
    p.name = s.name;
    p.x.push_back(0);
    p.y.push_back(10.0);  // chance, before training
    for (size_t i = 0; i < s.curve_seconds.size(); ++i) {
      p.x.push_back(s.curve_seconds[i]);
      p.y.push_back(s.curve_top1[i]);
    }
    plot.push_back(p);
  }
  PlotOptions po;
  po.title = "Tiny student on Fashion-MNIST: test top-1 against wall-clock time";
  po.x_label = "wall-clock seconds (training + evaluation)";
  po.y_label = "test top-1 (%)";
  const std::string svg = "accuracy" + run.tag + ".svg";
  write_file_durably((run.out / svg).string(), render_line_plot_svg(plot, po));
  return svg;
}

/// report.md: the setting, the table and the plot.
std::string write_report(const DemoRun& run, const DemoResult& d, const std::string& table,
                         const std::string& label_time, const std::string& svg, double total) {
  const Recipe& rc = run.rc;
  const DemoOptions& opts = run.opts;
  std::string md = fmt::format(
      "# fkd demo: distilling resnet20 into a tiny CNN on Fashion-MNIST\n\n"
      "Setting: {} training images, {} test images, the tiny student (93.5k parameters) "
      "trained {} effective epochs three ways with the same recipe and seed {}: plain "
      "(hard labels), online KD (the resnet20 teacher, frozen and optimized for inference, "
      "runs on every batch) and FKD (the teacher's soft labels of {} stored crops per image, "
      "{} per pass, no teacher). Threads: {}; loader workers: {}; device {}.\n\n"
      "Teacher: resnet20, {} epochs on {} images, {:.2f}% test top-1, {}. Labeling: {} for {} "
      "crops per "
      "image, done once and reused by every student trained from the store.\n\n{}\n"
      "![test top-1 against wall-clock time]({})\n\n"
      "Whole demo: {}.\n",
      rc.images, rc.val_images ? rc.val_images : 10000, rc.epochs, opts.seed, rc.epochs,
      rc.num_crops == 1 ? std::string("one crop of each image")
                        : fmt::format("{} crops of each image", rc.num_crops),
      opts.threads ? fmt::format("{}", opts.threads) : std::string("all cores"), opts.workers,
      opts.device, rc.teacher_epochs, rc.teacher_images, d.teacher_top1,
      format_duration(d.teacher_seconds), label_time, rc.epochs, table, svg,
      format_duration(total));
  const std::string path = (run.out / ("report" + run.tag + ".md")).string();
  write_file_durably(path, md);
  return path;
}

}  // namespace

DemoResult run_demo(const DemoOptions& opts) {
  const auto t_all = std::chrono::steady_clock::now();
  const DemoRun run{opts, recipe(opts.quick), fs::path(opts.out) / (opts.quick ? "quick" : "full"),
                    opts.seed ? fmt::format("-seed{}", opts.seed) : std::string()};
  make_directories(run.out.string(), "--out");
  DemoResult d;
  bool redo = false;  // a stage was started over: every later one is too
  const TrainResult teacher = train_teacher(run, redo, d);
  std::string label_time;
  const std::string store = label_store(run, teacher.checkpoint, redo, d, label_time);
  // Seed 0 keeps the original names; other seeds train beside them and reuse the teacher
  // and the labels.
  train_students(run, teacher.checkpoint, store, redo, d);

  const std::string table = results_table(d);
  fmt::print("\n{}\n", table);
  fmt::print(
      "teacher resnet20: {:.2f}% top-1 ({}); labeling: {} ({} crops per image, once for "
      "every student trained from the store)\n",
      d.teacher_top1, format_duration(d.teacher_seconds), label_time, run.rc.epochs);
  const std::string svg = write_plot(run, d);
  d.report = write_report(run, d, table, label_time, svg, seconds_since(t_all));
  fmt::print("report: {} (plot: {})\n", d.report, (run.out / svg).string());
  return d;
}

}  // namespace fkd
