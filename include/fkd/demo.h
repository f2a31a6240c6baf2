// The one-command demo on Fashion-MNIST (the embedded default dataset): the whole FKD story.
#pragma once
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/core.h>

#include "fkd/error.h"

namespace fkd {

struct DemoOptions {
  std::string out = "demo-out";  ///< run directory
  bool quick = false;            ///< a shorter schedule (a few minutes)
  int threads = 0;
  int workers = 1;
  std::string device = "cpu";
  uint64_t seed = 0;  ///< seed of the three students' runs
};

/// One student of the comparison.
struct DemoStudent {
  std::string name;          ///< "plain", "online KD", "FKD"
  double top1 = 0;           ///< test top-1 after the last epoch, percent
  double seconds = 0;        ///< wall time of the run (training and per-epoch evaluation)
  double epoch_seconds = 0;  ///< training wall time per effective epoch (no evaluation)
  std::vector<double> curve_seconds, curve_top1;  ///< test top-1 against elapsed wall time
};

struct DemoResult {
  double teacher_top1 = 0;
  double teacher_seconds = 0;
  double label_seconds = 0;
  std::vector<DemoStudent> students;  ///< plain, online KD, FKD
  std::string report;                 ///< path of report.md
};

/// Runs one stage of the demo whose work lives in `dir`, reusing or resuming what an earlier
/// demo left there. Work made with other options (an older fkd, another recipe: the stage
/// throws WorkMismatch) cannot be reused: it is moved to `dir`.old (replacing an older copy)
/// and the stage runs again, and `redo` is set so that the stages built on this one start
/// over too; with `redo` already set, an existing `dir` is moved aside before the stage runs.
template <typename Stage>
auto run_demo_stage(const std::filesystem::path& dir, bool& redo, Stage&& stage) {
  auto move_aside = [&](const std::string& why) {
    const std::filesystem::path old = dir.string() + ".old";
    std::filesystem::remove_all(old);
    std::filesystem::rename(dir, old);
    fmt::print("demo: {} {}; moved to {}, starting it over\n", dir.string(), why, old.string());
    std::fflush(stdout);
  };
  if (redo && std::filesystem::exists(dir)) move_aside("builds on a stage that was redone");
  try {
    return stage();
  } catch (const WorkMismatch& e) {
    move_aside(fmt::format("holds work made with other options ({})", e.what()));
    redo = true;
    return stage();
  }
}

/// Trains a resnet20 teacher, labels the training images with it, trains the tiny student
/// three ways (plain, online KD, FKD) for the same effective epochs, prints a table and
/// writes out/report.md and out/accuracy.svg. Re-running continues or reuses finished steps.
DemoResult run_demo(const DemoOptions& opts);

}  // namespace fkd
