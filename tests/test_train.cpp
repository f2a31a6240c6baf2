// Supervised training, checkpoints, resume, evaluation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <signal.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/models.h"
#include "fkd/train.h"
#include "testutil.h"
#include "train/checkpoint.h"
#include "train/schedule.h"

using namespace fkd;
using fkd::test::TempDir;

namespace {

TrainConfig small_run(const std::string& out) {
  TrainConfig c;
  c.data = "fashion-mnist";
  c.model = "tiny";
  c.limit_train = 1024;
  c.limit_val = 256;
  c.epochs = 2;
  c.batch_size = 64;
  c.lr = 0.05;
  c.threads = 1;
  c.workers = 2;
  c.out = out;
  c.seed = 3;
  return c;
}

std::vector<std::pair<std::string, torch::Tensor>> weights(const std::string& ckpt) {
  return state_dict(*load_checkpoint(ckpt, nullptr));
}

size_t count_lines(const std::string& path) {
  std::ifstream f(path);
  size_t n = 0;
  for (std::string line; std::getline(f, line);) n += !line.empty();
  return n;
}

}  // namespace

TEST(Schedule, WarmupThenCosine) {
  EXPECT_DOUBLE_EQ(lr_at(0.1, 0, 10, 100), 0.01);
  EXPECT_DOUBLE_EQ(lr_at(0.1, 9, 10, 100), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(0.1, 10, 10, 100), 0.1);
  EXPECT_NEAR(lr_at(0.1, 55, 10, 100), 0.05, 1e-12);  // half way through the decay
  EXPECT_NEAR(lr_at(0.1, 100, 10, 100), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(0.2, 0, 0, 50), 0.2);
}

TEST(Train, ShortRunLearnsFashionMnist) {
  TempDir d;
  TrainConfig c = small_run(d.file("run"));
  c.limit_train = 6000;
  c.limit_val = 1000;
  c.threads = 2;
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 2u);
  // Chance is 10%; a 93k-parameter CNN reaches ~80% after two epochs on 6k images.
  EXPECT_GT(r.history.back().top1, 70.0);
  EXPECT_GT(r.history.back().top5, 95.0);
  EXPECT_LT(r.history.back().train_loss, r.history.front().train_loss);
  EXPECT_EQ(count_lines(d.file("run/metrics.jsonl")), 2u);

  // fkd eval on the checkpoint reproduces the last epoch's val metrics.
  EvalOptions eo;
  eo.limit = 1000;
  eo.threads = 1;
  const EvalResult ev = evaluate_file(r.checkpoint, eo);
  EXPECT_EQ(ev.samples, 1000u);
  EXPECT_NEAR(ev.top1, r.history.back().top1, 1e-9);
  EXPECT_NEAR(ev.top5, r.history.back().top5, 1e-9);
}

TEST(Train, ResumeEqualsUninterruptedRun) {
  TempDir d;
  const TrainResult full = train(small_run(d.file("full")));

  TrainConfig part = small_run(d.file("part"));
  part.stop_after = 1;
  const TrainResult first = train(part);
  ASSERT_EQ(first.history.size(), 1u);
  EXPECT_EQ(read_checkpoint_meta(first.checkpoint).epochs_done, 1);
  part.stop_after = 0;
  part.resume = true;
  part.workers = 1;  // how it executes may change; the data it sees may not
  const TrainResult resumed = train(part);
  ASSERT_EQ(resumed.history.size(), 2u);
  EXPECT_EQ(count_lines(d.file("part/metrics.jsonl")), 2u);

  const auto a = weights(full.checkpoint), b = weights(resumed.checkpoint);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    // One thread, same seed: bit-identical.
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
  EXPECT_DOUBLE_EQ(full.history.back().top1, resumed.history.back().top1);
  EXPECT_DOUBLE_EQ(full.history.back().train_loss, resumed.history.back().train_loss);
}

TEST(Train, AmpAndEmaResumeEqualsUninterruptedRun) {
  TempDir d;
  auto run = [&](const std::string& out) {
    TrainConfig c = small_run(d.file(out));
    c.limit_train = 512;
    c.amp = "bf16";  // CPU autocast
    c.model_ema = 0.9;
    c.model_ema_warmup = true;
    c.input_format = "uint8";
    return c;
  };
  const TrainResult full = train(run("full"));
  ASSERT_EQ(full.history.size(), 2u);
  EXPECT_LT(full.history.back().train_loss, full.history.front().train_loss);
  TrainConfig part = run("part");
  part.stop_after = 1;
  train(part);
  part.stop_after = 0;
  part.resume = true;
  const TrainResult resumed = train(part);
  ASSERT_EQ(resumed.history.size(), 2u);

  const auto a = weights(full.checkpoint), b = weights(resumed.checkpoint);
  CheckpointFile fa = open_checkpoint(full.checkpoint), fb = open_checkpoint(resumed.checkpoint);
  const auto ea = checkpoint_ema(fa), eb = checkpoint_ema(fb);
  ASSERT_EQ(ea.size(), a.size());
  ASSERT_EQ(eb.size(), a.size());
  bool ema_differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    // One thread, same seed: bit-identical weights and averages.
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    EXPECT_EQ(ea[i].first, a[i].first);
    EXPECT_TRUE(torch::equal(ea[i].second, eb[i].second)) << "EMA " << ea[i].first;
    if (a[i].second.is_floating_point() && !torch::equal(ea[i].second, a[i].second))
      ema_differs = true;
  }
  EXPECT_TRUE(ema_differs);
  for (const auto& h : {full.history.back(), resumed.history.back()}) {
    EXPECT_FALSE(std::isnan(h.ema_top1));
    EXPECT_EQ(h.skipped_steps, 0);
  }
  EXPECT_DOUBLE_EQ(full.history.back().ema_top1, resumed.history.back().ema_top1);
  EXPECT_DOUBLE_EQ(full.history.back().train_loss, resumed.history.back().train_loss);

  // fkd export --ema writes the average, not the weights.
  export_model(full.checkpoint, d.file("ema.pkl"), "state_dict", /*ema=*/true);
  const auto exported = load_state_dict_pickle(d.file("ema.pkl"));
  ASSERT_EQ(exported.size(), ea.size());
  for (size_t i = 0; i < ea.size(); ++i) {
    EXPECT_TRUE(torch::equal(exported[i].second, ea[i].second)) << ea[i].first;
  }
  // A run without an average has nothing to export.
  TrainConfig plain = small_run(d.file("plain"));
  plain.limit_train = 128;
  plain.epochs = 1;
  const TrainResult p = train(plain);
  const std::string msg = fkd::test::error_message<ConfigError>(
      [&] { export_model(p.checkpoint, d.file("x.pkl"), "state_dict", true); });
  EXPECT_NE(msg.find("--model-ema"), std::string::npos) << msg;
  EXPECT_TRUE(std::isnan(p.history.back().ema_top1));
}

TEST(Train, FullDiskWhileSavingACheckpointIsOneLineAndResumes) {
  TempDir d;
  const std::string out = d.file("run"), ckpt = out + "/checkpoint.pt";
  const std::string fkd = "FKD_PROGRESS=off OMP_WAIT_POLICY=passive " +
                          std::string(FKD_BINARY_DIR) +
                          "/fkd train --data fashion-mnist --model tiny --limit-train 256 "
                          "--limit-val 64 --batch-size 64 --epochs 2 --threads 1 --workers 1 "
                          "--seed 3 --out " +
                          out;
  ASSERT_EQ(fkd::test::run_command(fkd + " --stop-after 1 >/dev/null 2>&1").status, 0);
  const std::string saved = fkd::test::read_file(ckpt);
  const std::vector<std::string> files = fkd::test::list_dir(out);

  // The disk fills while epoch 2's checkpoint is written: a file size limit of 128 blocks
  // (64 or 128 KiB by the shell), far below a checkpoint's size; write() then fails with
  // EFBIG, as with ENOSPC on a full disk. Only stderr is captured.
  const auto full =
      fkd::test::run_command("trap '' XFSZ; ulimit -f 128; " + fkd + " --resume 2>&1 >/dev/null");
  EXPECT_EQ(full.status, 1);
  EXPECT_EQ(full.out, "fkd: error: " + ckpt + ": cannot write: File too large\n");
  EXPECT_EQ(fkd::test::read_file(ckpt), saved);  // the previous checkpoint, intact
  EXPECT_EQ(fkd::test::list_dir(out), files);    // no temporary file left
  EXPECT_EQ(read_checkpoint_meta(ckpt).epochs_done, 1);

  // Space freed: --resume finishes the run.
  const auto resumed = fkd::test::run_command(fkd + " --resume 2>&1");
  ASSERT_EQ(resumed.status, 0) << resumed.out;
  EXPECT_EQ(read_checkpoint_meta(ckpt).epochs_done, 2);
  EXPECT_EQ(count_lines(out + "/metrics.jsonl"), 2u);
}

/// The fkd train command line of the fault tests below: 256 images, 2 epochs of 4 steps.
std::string small_train_command(const std::string& out) {
  return "FKD_PROGRESS=off OMP_WAIT_POLICY=passive " + std::string(FKD_BINARY_DIR) +
         "/fkd train --data fashion-mnist --model tiny --limit-train 256 --limit-val 64 "
         "--batch-size 64 --epochs 2 --threads 1 --workers 1 --seed 3 --out " +
         out;
}

TEST(Train, FileSizeLimitIsAFullDiskNotAKill) {
  // Under ulimit -f the kernel sends SIGXFSZ, which once killed fkd mid-write with no word
  // and left checkpoint.pt.tmp.<pid>.<n> behind. Unlike the test above, the shell does not
  // ignore the signal for fkd here.
  TempDir d;
  const std::string out = d.file("run"), ckpt = out + "/checkpoint.pt";
  const std::string fkd = small_train_command(out);
  ASSERT_EQ(fkd::test::run_command(fkd + " --stop-after 1 >/dev/null 2>&1").status, 0);
  const std::string saved = fkd::test::read_file(ckpt);
  const std::vector<std::string> files = fkd::test::list_dir(out);
  const auto full = fkd::test::run_command("ulimit -f 128; " + fkd + " --resume 2>&1 >/dev/null");
  EXPECT_EQ(full.status, 1);
  EXPECT_EQ(full.out, "fkd: error: " + ckpt + ": cannot write: File too large\n");
  EXPECT_EQ(fkd::test::read_file(ckpt), saved);
  EXPECT_EQ(fkd::test::list_dir(out), files);
}

TEST(Train, StaleTemporariesOfAKilledRunAreRemovedWhenARunStarts) {
  // A run killed while writing leaves NAME.tmp.PID.N files; the next run on the directory
  // (which holds it alone, see below) removes them, and nothing else.
  TempDir d;
  const std::string out = d.file("run");
  const std::string fkd = small_train_command(out);
  ASSERT_EQ(fkd::test::run_command(fkd + " --stop-after 1 >/dev/null 2>&1").status, 0);
  const std::vector<std::string> files = fkd::test::list_dir(out);
  for (const char* stale :
       {"checkpoint.pt.tmp.4242.0", "checkpoint.pt.tmp.999999.17", "metrics.jsonl.tmp.4242.1"}) {
    fkd::test::write_file(out + "/" + stale, "torn");
  }
  for (const char* mine : {"notes.txt", "checkpoint.pt.tmp.backup", "other.pt.tmp.4242.0"}) {
    fkd::test::write_file(out + "/" + mine, "the user's");
  }
  const auto r = fkd::test::run_command(fkd + " --resume 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find(out + ": removed 3 temporary file(s) a killed run left"), std::string::npos)
      << r.out;
  std::vector<std::string> want = files;
  for (const char* mine : {"notes.txt", "checkpoint.pt.tmp.backup", "other.pt.tmp.4242.0"}) {
    want.push_back(mine);
  }
  std::sort(want.begin(), want.end());
  EXPECT_EQ(fkd::test::list_dir(out), want);
}

/// The state letter of a process in /proc (R, S, T, Z, ...; 0 once it is gone).
char process_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(f, stat)) return 0;
  const size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() ? 0 : stat[paren + 2];
}

/// Waits until `done(state)` for process `pid`; false after a minute.
template <typename F>
bool wait_for_state(pid_t pid, F done) {
  for (int i = 0; i < 1200; ++i) {
    if (done(process_state(pid))) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(Train, ASecondRunOnTheSameOutIsRefusedWhileTheFirstHoldsIt) {
  // Two runs (or two --resume) on one --out once both exited 0, the folder holding only one
  // of them. Run A resumes a run and stops itself (SIGSTOP, the fault hook's controlled
  // point) in its second epoch, holding the run directory; B is refused, naming the folder
  // and A.
  TempDir d;
  const std::string out = d.file("run");
  const std::string fkd = small_train_command(out);
  ASSERT_EQ(fkd::test::run_command(fkd + " --stop-after 1 >/dev/null 2>&1").status, 0);
  const std::string saved = fkd::test::read_file(out + "/checkpoint.pt");
  const auto a = fkd::test::run_command("FKD_TEST_RANK_FAULT=stop:0:5 " + fkd +
                                        " --resume >/dev/null 2>&1 & echo $!");
  const pid_t pid = pid_t(std::stol(a.out));
  ASSERT_TRUE(wait_for_state(pid, [](char s) { return s == 'T' || s == 0; }));
  ASSERT_EQ(process_state(pid), 'T');
  for (const char* how : {"", " --resume"}) {
    const auto b = fkd::test::run_command(fkd + how + " 2>&1");
    EXPECT_EQ(b.status, 1) << how << "\n" << b.out;
    EXPECT_EQ(b.out, "fkd: error: " + out +
                         ": the run directory (--out) is in use by another fkd process (pid " +
                         std::to_string(pid) +
                         fmt::format(" on {}); wait for it to end or use another directory\n",
                                     [] {
                                       char host[256] = {0};
                                       gethostname(host, sizeof host - 1);
                                       return std::string(host);
                                     }()))
        << how;
  }
  EXPECT_EQ(fkd::test::read_file(out + "/checkpoint.pt"), saved);
  // A killed holder holds nothing: the next run goes ahead, and leaves no lock file.
  ::kill(pid, SIGKILL);
  ASSERT_TRUE(wait_for_state(pid, [](char s) { return s == 'Z' || s == 0; }));
  const auto c = fkd::test::run_command(fkd + " --resume 2>&1");
  EXPECT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(read_checkpoint_meta(out + "/checkpoint.pt").epochs_done, 2);
  EXPECT_EQ(fkd::test::list_dir(out), (std::vector<std::string>{"checkpoint.pt", "metrics.jsonl"}));
}

TEST(Train, APassThatLoadsNoSampleIsAnErrorNotATrainedModel) {
  // A crop larger than every image (RandomCrop 64 without padding on 28-px images) skips
  // every sample: the run once saved an untrained checkpoint and exited 0.
  TempDir d;
  const std::string out = d.file("run");
  const auto r = fkd::test::run_command(small_train_command(out) +
                                        " --aug crop --padding 0 --input-size 64 2>&1");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("no training sample could be loaded, nothing was trained"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(std::filesystem::exists(out + "/checkpoint.pt"));
}

TEST(Train, ResumeWithNothingToResumeIsRefused) {
  // A mistyped --out with --resume once started a fresh full run without a word. Refused now,
  // before any work, unless the run may start (--resume-or-start).
  TempDir d;
  const std::string out = d.file("run"), fkd = small_train_command(out);
  const auto r = fkd::test::run_command(fkd + " --resume 2>&1");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(r.out, "fkd: error: --resume: " + out +
                       " holds no run to resume (no such directory); check --out, or start a new "
                       "run without --resume (--resume-or-start does either)\n");
  EXPECT_FALSE(std::filesystem::exists(out));
  std::filesystem::create_directories(out);  // an empty directory holds no run either
  const auto e = fkd::test::run_command(fkd + " --resume 2>&1");
  EXPECT_EQ(e.status, 1) << e.out;
  EXPECT_NE(e.out.find("(no checkpoint.pt)"), std::string::npos) << e.out;
  const auto s = fkd::test::run_command(fkd + " --resume-or-start --stop-after 1 2>&1");
  ASSERT_EQ(s.status, 0) << s.out;
  EXPECT_EQ(read_checkpoint_meta(out + "/checkpoint.pt").epochs_done, 1);
  const auto c = fkd::test::run_command(fkd + " --resume-or-start 2>&1");  // continues it
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("resuming"), std::string::npos) << c.out;
  EXPECT_EQ(read_checkpoint_meta(out + "/checkpoint.pt").epochs_done, 2);
}

TEST(Train, ResumingAFinishedRunSaysSoAndExtendingItRecomputesTheSchedule) {
  TempDir d;
  const std::string out = d.file("run"), ckpt = out + "/checkpoint.pt";
  // small_train_command without its --epochs 2, which each call gives.
  std::string fkd = small_train_command(out);
  fkd.replace(fkd.find(" --epochs 2"), 11, "");
  ASSERT_EQ(fkd::test::run_command(fkd + " --epochs 2 >/dev/null 2>&1").status, 0);
  const std::string saved = fkd::test::read_file(ckpt);
  const std::string metrics = fkd::test::read_file(out + "/metrics.jsonl");
  // Finished: said, nothing trained, nothing written.
  const auto f = fkd::test::run_command(fkd + " --epochs 2 --resume 2>&1");
  EXPECT_EQ(f.status, 0) << f.out;
  EXPECT_NE(f.out.find(ckpt + ": the run is finished (2 epochs, top-1 "), std::string::npos)
      << f.out;
  EXPECT_EQ(f.out.find("epoch   "), std::string::npos) << f.out;
  EXPECT_EQ(fkd::test::read_file(ckpt), saved);
  EXPECT_EQ(fkd::test::read_file(out + "/metrics.jsonl"), metrics);
  // More epochs change the run: refused without --extend-epochs, which the message names.
  const auto more = fkd::test::run_command(fkd + " --epochs 4 --resume 2>&1");
  EXPECT_EQ(more.status, 1) << more.out;
  EXPECT_NE(more.out.find("--extend-epochs"), std::string::npos) << more.out;
  EXPECT_EQ(fkd::test::read_file(ckpt), saved);
  for (const char* bad :
       {" --epochs 2 --resume --extend-epochs", " --epochs 1 --resume --extend-epochs"}) {
    const auto b = fkd::test::run_command(fkd + bad + " 2>&1");
    EXPECT_EQ(b.status, 1) << bad << "\n" << b.out;
    EXPECT_NE(b.out.find("--extend-epochs: --epochs"), std::string::npos) << b.out;
  }
  EXPECT_EQ(fkd::test::run_command(fkd + " --epochs 4 --extend-epochs 2>&1").status, 2);
  // Extended: the cosine horizon is the new count; the next steps take the longer
  // schedule's rates (4 steps per epoch, no warm-up).
  const auto x = fkd::test::run_command(fkd + " --epochs 4 --resume --extend-epochs 2>&1");
  ASSERT_EQ(x.status, 0) << x.out;
  EXPECT_NE(x.out.find(fmt::format("extending the run from 2 to 4 epochs: the cosine schedule "
                                   "now ends at epoch 4, so the learning rate goes on at {:.4g}",
                                   lr_at(0.1, 8, 0, 16))),
            std::string::npos)
      << x.out;
  const CheckpointMeta m = read_checkpoint_meta(ckpt);
  EXPECT_EQ(m.epochs_done, 4);
  EXPECT_EQ(m.config.epochs, 4);
  ASSERT_EQ(m.history.size(), 4u);
  EXPECT_DOUBLE_EQ(m.history[2].lr, lr_at(0.1, 11, 0, 16));
  EXPECT_DOUBLE_EQ(m.history[3].lr, lr_at(0.1, 15, 0, 16));
  EXPECT_EQ(count_lines(out + "/metrics.jsonl"), 4u);
  // Later resumes of the extended run name its new count.
  const auto again = fkd::test::run_command(fkd + " --epochs 4 --resume 2>&1");
  EXPECT_EQ(again.status, 0) << again.out;
  EXPECT_NE(again.out.find("the run is finished (4 epochs"), std::string::npos) << again.out;
}

TEST(Train, FullDiskWhileExportingIsOneLineAndLeavesNoFile) {
  TempDir d;
  TrainConfig c = small_run(d.file("run"));
  c.epochs = 1;
  c.limit_train = 128;
  const TrainResult r = train(c);
  for (const char* format : {"torchscript", "state_dict"}) {
    SCOPED_TRACE(format);
    const std::string out = d.file(std::string("model-") + format + ".pt");
    const auto full = fkd::test::run_command(
        "trap '' XFSZ; ulimit -f 128; " + std::string(FKD_BINARY_DIR) + "/fkd export " +
        r.checkpoint + " " + out + " --format " + format + " 2>&1 >/dev/null");
    EXPECT_EQ(full.status, 1);
    EXPECT_EQ(full.out, "fkd: error: " + out + ": cannot write: File too large\n");
    EXPECT_EQ(fkd::test::list_dir(d.path()), std::vector<std::string>{"run"});
  }
}

TEST(Train, ResumeRefusesChangedRecipe) {
  TempDir d;
  TrainConfig c = small_run(d.file("run"));
  c.epochs = 1;
  c.limit_train = 128;
  train(c);
  c.resume = true;
  c.lr = 0.2;
  try {
    train(c);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'lr'"), std::string::npos) << e.what();
  }
  // Without --resume an existing run is never overwritten.
  c.resume = false;
  c.lr = 0.05;
  EXPECT_THROW(train(c), ConfigError);
}

TEST(Train, BadOptionsAreConfigErrors) {
  TempDir d;
  TrainConfig c = small_run(d.file("run"));
  c.model = "resnet7";
  EXPECT_THROW(train(c), ConfigError);
  c = small_run(d.file("run2"));
  c.crop.scale = {0.9f, 0.1f};
  EXPECT_THROW(train(c), ConfigError);
  c = small_run(d.file("run3"));
  c.device = "tpu";
  EXPECT_THROW(train(c), ConfigError);
}

TEST(Checkpoint, MetricsFileIsReplacedWholeAndDurably) {
  TempDir d;
  const std::string path = d.file("metrics.jsonl");
  std::vector<EpochMetrics> history(3);
  for (int i = 0; i < 3; ++i) {
    history[size_t(i)].epoch = i + 1;
    history[size_t(i)].top1 = 50.0 + i;
  }
  write_metrics_file(path, history);
  EXPECT_EQ(fkd::test::read_file(path), metrics_to_json(history[0]) + "\n" +
                                            metrics_to_json(history[1]) + "\n" +
                                            metrics_to_json(history[2]) + "\n");
  history.resize(1);  // a resume drops the lines of epochs the checkpoint lacks
  write_metrics_file(path, history);
  const std::string one = fkd::test::read_file(path);
  EXPECT_EQ(one, metrics_to_json(history[0]) + "\n");

  history.resize(1000);
  try {
    fkd::test::FileSizeLimit limit(4096);
    write_metrics_file(path, history);
    FAIL() << "no error on a full disk";
  } catch (const IoError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": cannot write: File too large");
  }
  EXPECT_EQ(fkd::test::read_file(path), one);
  EXPECT_EQ(fkd::test::list_dir(d.path()), std::vector<std::string>{"metrics.jsonl"});
}

TEST(Checkpoint, CorruptFileIsFormatError) {
  TempDir d;
  fkd::test::write_file(d.file("bad.pt"), "this is not a checkpoint");
  EXPECT_THROW(read_checkpoint_meta(d.file("bad.pt")), FormatError);
  EXPECT_THROW(read_checkpoint_meta(d.file("missing.pt")), IoError);
  EXPECT_FALSE(try_open_checkpoint(d.file("bad.pt")).has_value());
  // A zip archive cut short is no TorchScript file either: refused, saying so.
  fkd::test::write_file(d.file("cut.pt"), "PK\x03\x04 this is not a checkpoint");
  const std::string msg =
      fkd::test::error_message<FormatError>([&] { try_open_checkpoint(d.file("cut.pt")); });
  EXPECT_NE(msg.find("cut.pt: is truncated"), std::string::npos) << msg;
}

TEST(Train, LossThatIsNotFiniteStopsTheRun) {
  // As timm does: a loss that is NaN or infinite stops training with one clear line, and
  // nothing is saved from the ruined weights.
  TempDir d;
  TrainConfig c = small_run(d.file("run"));
  c.lr = 1e30;
  c.epochs = 1;
  try {
    train(c);
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the training loss is"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--lr"), std::string::npos) << msg;
  }
  EXPECT_FALSE(std::filesystem::exists(d.file("run/checkpoint.pt")));
}

TEST(Config, InputSizeComesFromTheImages) {
  // An ImageFolder of small images trains at their size, not at ImageNet's 224 (which
  // upscaled each crop 8x and made labeling 64x slower); a size given that upscales them
  // more than 2x is warned about.
  TempDir d;
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {d.path()}).status, 0);
  auto ds = open_dataset(d.path(), Split::kTrain);
  std::vector<int> sides;
  for (size_t i = 0; i < ds->size(); ++i) {
    const Image im = ds->load(i);
    sides.push_back(std::min(im.height, im.width));
  }
  std::sort(sides.begin(), sides.end());
  TrainConfig c;
  c.data = d.path();
  std::vector<std::string> notes;
  resolve_config(c, *ds, &notes);
  EXPECT_EQ(c.crop.size, sides[sides.size() / 2]);  // every image sampled: the median
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find(fmt::format("input size {} px", c.crop.size)), std::string::npos)
      << notes[0];
  TrainConfig big;
  big.data = d.path();
  big.crop.size = 224;
  notes.clear();
  resolve_config(big, *ds, &notes);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("warning: --input-size 224 upscales"), std::string::npos) << notes[0];
  // Fashion-MNIST keeps its native 28 px, with no note.
  TrainConfig f;
  notes.clear();
  resolve_config(f, *open_dataset("fashion-mnist", Split::kTrain), &notes);
  EXPECT_EQ(f.crop.size, 28);
  EXPECT_EQ(f.crop.kind, CropKind::kPadded);
  EXPECT_TRUE(notes.empty());
}
