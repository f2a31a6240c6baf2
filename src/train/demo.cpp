#include "fkd/demo.h"

#include <filesystem>

#include <fmt/core.h>

#include "fkd/progress.h"
#include "fkd/train.h"

namespace fs = std::filesystem;

namespace fkd {

double run_demo(const DemoOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  TrainConfig cfg;
  cfg.data = "fashion-mnist";
  cfg.model = "resnet20";
  cfg.epochs = opts.quick ? 1 : 4;
  cfg.limit_train = opts.quick ? 10000 : 0;
  cfg.threads = opts.threads;
  cfg.workers = opts.workers;
  cfg.device = opts.device;
  cfg.out = (fs::path(opts.out) / (opts.quick ? "teacher-quick" : "teacher")).string();
  cfg.resume = true;  // re-running the demo continues (or reuses) the previous teacher
  fmt::print("== fkd demo: Fashion-MNIST, resnet20 teacher ({} epochs{})\n", cfg.epochs,
             opts.quick ? ", 10k-image subset" : "");
  std::fflush(stdout);
  const TrainResult r = train(cfg);

  EvalOptions eo;
  eo.data = cfg.data;
  eo.threads = opts.threads;
  eo.workers = opts.workers;
  eo.device = opts.device;
  const EvalResult ev = evaluate_file(r.checkpoint, eo);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("\n| model    | epochs | test top-1 | test top-5 | wall time |\n"
             "|----------|--------|------------|------------|-----------|\n"
             "| resnet20 | {:>6} | {:>9.2f}% | {:>9.2f}% | {:>9} |\n",
             cfg.epochs, ev.top1, ev.top5, format_duration(secs));
  fmt::print("\nteacher checkpoint: {}\n", r.checkpoint);
  return ev.top1;
}

}  // namespace fkd
