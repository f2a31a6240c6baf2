// Data-parallel training end to end: fkd runs of 1, 2 and 4 ranks on loopback (one thread
// each, so that 4 ranks fit 2 cores), launched by `fkd launch`, by torchrun, or by hand.
//
// Tolerance of the trajectory checks (weight_distance: how far two runs' weights end apart,
// relative to how far they moved from the initial weights). With --sync-bn the ranks compute
// the global batch's step, but not bit for bit: the gradient all-reduce sums in another
// order, the convolutions run on slices of other sizes, and SyncBatchNorm combines its
// statistics in double precision where LibTorch's one-process BatchNorm accumulates them in
// float. The last is the largest, and training amplifies it step by step: measured after 4
// supervised steps of the tiny model, 1 against 2 or 4 ranks 5e-4 to 6e-4 (FKD, 16 steps:
// 3e-5 to 1.5e-4).
// The checks allow 4e-3; without --sync-bn (each rank normalizing its own slice, another
// computation) the same 4 steps end 2e-2 apart, so the checks tell the two apart.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <fmt/core.h>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>

#include "fkd/file_io.h"
#include "fkd/models.h"
#include "testutil.h"
#include "train/checkpoint.h"

using fkd::test::TempDir;

namespace {

constexpr double kTolerance = 4e-3;
constexpr int kSeed = 3;

std::string fkd_bin() { return std::string(FKD_BINARY_DIR) + "/fkd"; }

/// A port of its own for each run: tests run in parallel, and a port stays in TIME_WAIT
/// for a while after its run.
int next_port() {
  static int n = 0;
  return 20000 + int(getpid() % 2000) * 10 + (n++ % 10);
}

/// Runs a shell command with fkd's test environment; stderr merged into the output.
fkd::test::CommandResult sh(const std::string& cmd) {
  return fkd::test::run_command("(export FKD_PROGRESS=plain OMP_WAIT_POLICY=passive; " + cmd +
                                ") 2>&1");
}

/// `fkd launch` of `ranks` ranks running `args`.
fkd::test::CommandResult launch(int ranks, const std::string& args) {
  return sh(fmt::format("timeout 300 {} launch --nproc-per-node {} --master-port {} -- {}",
                        fkd_bin(), ranks, next_port(), args));
}

/// How far apart two runs' weights ended, relative to how far the first travelled from the
/// initial weights (the zoo model of kSeed, as `fkd train` builds it): the L2 norm over every
/// parameter and float buffer (BatchNorm statistics) of a - b, over that of a - initial.
double weight_distance(const std::string& a, const std::string& b) {
  fkd::CheckpointMeta meta;
  auto na = fkd::load_checkpoint(a, &meta), nb = fkd::load_checkpoint(b);
  torch::manual_seed(kSeed);
  auto n0 = fkd::is_model_file(meta.model)
                ? fkd::load_scripted_model(fkd::read_whole_file(meta.model), meta.model,
                                           meta.in_channels, meta.num_classes)
                : fkd::make_model(meta.model, meta.in_channels, meta.num_classes);
  auto tensors = [](torch::nn::Module& m) {
    std::vector<torch::Tensor> t;
    for (const auto& p : m.parameters()) t.push_back(p.detach().to(torch::kDouble));
    for (const auto& p : m.buffers()) {
      if (p.is_floating_point()) t.push_back(p.to(torch::kDouble));
    }
    return t;
  };
  const auto ta = tensors(*na), tb = tensors(*nb), t0 = tensors(*n0);
  double apart = 0, travelled = 0;
  for (size_t i = 0; i < ta.size(); ++i) {
    apart += (ta[i] - tb[i]).pow(2).sum().item<double>();
    travelled += (ta[i] - t0[i]).pow(2).sum().item<double>();
  }
  return std::sqrt(apart / travelled);
}

nlohmann::json last_metrics(const std::string& run) {
  std::ifstream in(run + "/metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line)) last = line;
  return nlohmann::json::parse(last);
}

/// A Fashion-MNIST subset trained in 1 thread per rank, in batches of `batch`; `extra`
/// adds options.
std::string train_args(const std::string& out, const std::string& extra, int batch = 64,
                       const std::string& model = "tiny") {
  return fmt::format(
      "train --model {} --limit-train 256 --limit-val 200 --batch-size {} --lr 0.05 "
      "--threads 1 --workers 1 --seed {} --out {} {}",
      model, batch, kSeed, out, extra);
}

/// A teacher and a label store of it (4 crops per image) for the FKD runs.
struct Store {
  TempDir dir;
  std::string path;
  Store() {
    const auto t =
        sh(fmt::format("{} train --model tiny --limit-train 256 --limit-val 64 "
                       "--epochs 1 --threads 2 --out {}",
                       fkd_bin(), dir.file("teacher")));
    if (t.status != 0) throw std::runtime_error(t.out);
    path = dir.file("labels");
    const auto l =
        sh(fmt::format("{} label --teacher {} --limit 256 --crops 4 --threads 2 --out {}",
                       fkd_bin(), dir.file("teacher/checkpoint.pt"), path));
    if (l.status != 0) throw std::runtime_error(l.out);
  }
};

}  // namespace

namespace {

/// Trains `extra`'s run with 1, 2 and 4 ranks into d/w1, d/w2, d/w4 and checks that the 2-
/// and 4-rank weights end within kTolerance of the 1-rank ones.
void expect_one_trajectory(const TempDir& d, const std::string& extra, const std::string& what) {
  for (int w : {1, 2, 4}) {
    const auto r = launch(w, train_args(d.file(fmt::format("w{}", w)), extra));
    ASSERT_EQ(r.status, 0) << r.out;
  }
  const std::string one = d.file("w1/checkpoint.pt");
  const double two = weight_distance(one, d.file("w2/checkpoint.pt"));
  const double four = weight_distance(one, d.file("w4/checkpoint.pt"));
  EXPECT_LT(two, kTolerance) << what;
  EXPECT_LT(four, kTolerance) << what;
  std::cout << what << ", 1 against 2 ranks: " << two << ", 1 against 4: " << four << "\n";
}

}  // namespace

TEST(DataParallel, SupervisedRunsOf1_2_4RanksFollowOneTrajectory) {
  TempDir d;
  expect_one_trajectory(d, "--epochs 1 --sync-bn", "supervised");
  // Each rank normalizing its own slice is another computation: the check tells.
  const auto own = launch(2, train_args(d.file("own"), "--epochs 1"));
  ASSERT_EQ(own.status, 0) << own.out;
  const double own_bn = weight_distance(d.file("w1/checkpoint.pt"), d.file("own/checkpoint.pt"));
  EXPECT_GT(own_bn, kTolerance);
  std::cout << "1 rank against 2 without --sync-bn: " << own_bn << "\n";
}

TEST(DataParallel, FkdRunsOf1_2_4RanksFollowOneTrajectory) {
  Store store;
  TempDir d;
  expect_one_trajectory(d, "--epochs 4 --num-crops 2 --sync-bn --labels " + store.path, "FKD");
}

TEST(DataParallel, TorchScriptStudentsGradientsAreAllReduced) {
  // Without BatchNorm, 1 and 2 ranks compute the same steps only if the Reducer all-reduces
  // the TorchScript module's gradients (each rank alone would step on half the batch).
  TempDir d;
  const std::string student = d.file("plain.pt");
  ASSERT_EQ(fkd::test::run_python("models_script_student.py", {"make", student, "plain", "1", "10"})
                .status,
            0);
  for (int w : {1, 2}) {
    const auto r = launch(w, train_args(d.file(fmt::format("w{}", w)), "--epochs 1", 64, student));
    ASSERT_EQ(r.status, 0) << r.out;
  }
  const double two = weight_distance(d.file("w1/checkpoint.pt"), d.file("w2/checkpoint.pt"));
  EXPECT_LT(two, 1e-4);
  std::cout << "TorchScript student, 1 against 2 ranks: " << two << "\n";
  // Its BatchNorm (were there any) is out of fkd's reach: --sync-bn is refused in one line.
  const auto sync = launch(2, train_args(d.file("sync"), "--epochs 1 --sync-bn", 64, student));
  EXPECT_NE(sync.status, 0);
  EXPECT_NE(sync.out.find("--sync-bn: " + student + " is a TorchScript student"), std::string::npos)
      << sync.out;
}

TEST(DataParallel, ShardedEvaluationEqualsOneProcess) {
  TempDir d;
  const auto r = launch(2, train_args(d.file("run"), "--epochs 1"));
  ASSERT_EQ(r.status, 0) << r.out;
  // The run's own evaluation (each rank half the val split, counts summed) against one
  // process evaluating rank 0's checkpoint on the same images.
  const auto m = last_metrics(d.file("run"));
  const auto e =
      sh(fmt::format("{} eval {} --limit 200 --threads 1", fkd_bin(), d.file("run/checkpoint.pt")));
  ASSERT_EQ(e.status, 0) << e.out;
  std::smatch got;
  ASSERT_TRUE(std::regex_search(e.out, got,
                                std::regex("200 images  top1 ([0-9.]+)%  top5 ([0-9.]+)%  "
                                           "loss ([0-9.]+)")))
      << e.out;
  EXPECT_NEAR(m["top1"].get<double>(), std::stod(got[1]), 0.006) << e.out;
  EXPECT_NEAR(m["top5"].get<double>(), std::stod(got[2]), 0.006) << e.out;
  EXPECT_NEAR(m["val_loss"].get<double>(), std::stod(got[3]), 1e-4) << e.out;
}

TEST(DataParallel, ResumesWithAnotherNumberOfRanks) {
  TempDir d;
  const std::string args = "--epochs 2 --sync-bn";  // 2 steps per epoch of 128 images
  ASSERT_EQ(launch(2, train_args(d.file("whole"), args, 128)).status, 0);
  // 2 ranks, then 1; and 1, then 2.
  for (const auto& [first, then] : {std::pair{2, 1}, std::pair{1, 2}}) {
    const std::string out = d.file(fmt::format("r{}{}", first, then));
    const auto a = launch(first, train_args(out, args + " --stop-after 1", 128));
    ASSERT_EQ(a.status, 0) << a.out;
    EXPECT_EQ(last_metrics(out)["epoch"], 1);
    const auto b = launch(then, train_args(out, args + " --resume", 128));
    ASSERT_EQ(b.status, 0) << b.out;
    EXPECT_NE(b.out.find("resuming"), std::string::npos) << b.out;
    EXPECT_EQ(last_metrics(out)["epoch"], 2);
    const double apart = weight_distance(d.file("whole/checkpoint.pt"), out + "/checkpoint.pt");
    EXPECT_LT(apart, kTolerance) << first << " then " << then << " ranks";
    std::cout << first << " then " << then << " ranks against 2 throughout: " << apart << "\n";
  }
}

namespace {

/// Two ranks started by hand (as Slurm or a cluster script would), rank 1 hitting
/// `fault` ("kill" or "stop") after step 6 of a 2-epoch run of 4 steps per epoch. Returns
/// rank 0's output and exit status and the seconds it took.
struct FaultRun {
  int status = -1;
  std::string out;
  double seconds = 0;
};

FaultRun run_with_fault(const TempDir& d, const std::string& fault) {
  const int port = next_port();
  const std::string env = fmt::format(
      "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={} FKD_TEST_RANK_FAULT={}:1:6", port, fault);
  const std::string args = train_args(d.file("run"), "--epochs 2 --dist-timeout 20");
  // Rank 1 in the background; its pid is left in a file so that a stopped one can be killed.
  const std::string cmd = fmt::format(
      "{} RANK=1 {} {} > {} 2>&1 & echo $! > {}; {} RANK=0 timeout 120 {} {}; s=$?; "
      "kill -9 $(cat {}) 2>/dev/null; exit $s",
      env, fkd_bin(), args, d.file("rank1.log"), d.file("rank1.pid"), env, fkd_bin(), args,
      d.file("rank1.pid"));
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = sh(cmd);
  FaultRun f;
  f.status = r.status;
  f.out = r.out;
  f.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return f;
}

}  // namespace

TEST(DataParallel, KilledRankIsNamedByTheOthersAndTheCheckpointStays) {
  TempDir d;
  const FaultRun f = run_with_fault(d, "kill");
  EXPECT_EQ(f.status, 1) << f.out;
  EXPECT_TRUE(std::regex_search(f.out, std::regex("fkd: error: rank 0: .*rank 1 stopped")))
      << f.out;
  EXPECT_LT(f.seconds, 60) << f.out;  // well within --dist-timeout 20 plus start-up
  // Epoch 1 finished before the fault: its checkpoint is whole, and the run resumes from it.
  EXPECT_EQ(fkd::read_checkpoint_meta(d.file("run/checkpoint.pt")).epochs_done, 1);
  const auto again = launch(2, train_args(d.file("run"), "--epochs 2 --dist-timeout 20 --resume"));
  EXPECT_EQ(again.status, 0) << again.out;
  EXPECT_EQ(last_metrics(d.file("run"))["epoch"], 2);
}

TEST(DataParallel, StoppedRankIsNamedWithinTheTimeout) {
  TempDir d;
  const FaultRun f = run_with_fault(d, "stop");
  EXPECT_EQ(f.status, 1) << f.out;
  EXPECT_TRUE(std::regex_search(
      f.out, std::regex("fkd: error: rank 0: .*within --dist-timeout 20 s: rank 1 stopped")))
      << f.out;
  EXPECT_LT(f.seconds, 90) << f.out;
}

TEST(DataParallel, RankThatNeverJoinsIsNamedWithinTheTimeout) {
  TempDir d;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = sh(
      fmt::format("WORLD_SIZE=3 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT={} timeout 120 {} {}",
                  next_port(), fkd_bin(), train_args(d.file("a"), "--epochs 1 --dist-timeout 3")));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("fkd: error: rank 0: 2 of 3 ranks did not join at 127.0.0.1:"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("within 3 s (rank 1, 2: never started or cannot reach the master)"),
            std::string::npos)
      << r.out;
  EXPECT_LT(seconds, 60) << r.out;
}

TEST(DataParallel, RanksThatDisagreeAreNamedAtStart) {
  TempDir d;
  const int port = next_port();
  const std::string env = fmt::format("WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={}", port);
  const auto r = sh(fmt::format(
      "{} RANK=1 timeout 120 {} {} > /dev/null 2>&1 & {} RANK=0 timeout 120 {} {}; s=$?; wait; "
      "exit $s",
      env, fkd_bin(), train_args(d.file("a"), "--epochs 2"), env, fkd_bin(),
      train_args(d.file("a"), "--epochs 1")));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("fkd: error: rank 0: the ranks do not run the same configuration: rank 0 "
                       "has epochs 1 where rank 1 has epochs 2\n"),
            std::string::npos)
      << r.out;
}

TEST(DataParallel, BatchThatDoesNotDivideIsRefused) {
  TempDir d;
  const auto r = launch(2, train_args(d.file("a"), "--epochs 1", 63));
  EXPECT_NE(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("--batch-size 63 over 2 ranks"), std::string::npos) << r.out;
}

TEST(DataParallel, OnlyRankZeroPrints) {
  TempDir d;
  const auto r = launch(2, train_args(d.file("a"), "--epochs 1"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(std::regex_search(r.out, std::regex("2 ranks of 32 samples")), true) << r.out;
  // One line per epoch, from rank 0.
  const std::regex epoch_line("\nepoch +1/1  loss");
  EXPECT_EQ(std::distance(std::sregex_iterator(r.out.begin(), r.out.end(), epoch_line),
                          std::sregex_iterator()),
            1)
      << r.out;
}

TEST(DataParallel, TorchrunLaunchesFkd) {
  TempDir d;
  // Debian's torchrun needs --redirects and --tee given as maps (see the README).
  const auto r = sh(fmt::format(
      "cd {} && timeout 300 /usr/bin/python3 -m torch.distributed.run --nproc_per_node 2 "
      "--master_port {} --no_python --redirects 9:0 --tee 9:0 {} {}",
      d.path(), next_port(), fkd_bin(), train_args(d.file("a"), "--epochs 1")));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("2 ranks of 32 samples"), std::string::npos) << r.out;
  EXPECT_EQ(last_metrics(d.file("a"))["epoch"], 1);
}

TEST(DataParallel, DistillLabelsEachRanksShardThenTrains) {
  Store store;  // its teacher
  TempDir d;
  const auto r =
      launch(2, fmt::format("distill --teacher {} --limit-train 256 --student tiny "
                            "--epochs 2 --num-crops 2 --batch-size 64 --threads 1 --out {}",
                            store.dir.file("teacher/checkpoint.pt"), d.file("out")));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(std::filesystem::exists(d.file("out/labels/shard-00000-of-00002.fkdl"))) << r.out;
  EXPECT_TRUE(std::filesystem::exists(d.file("out/labels/shard-00001-of-00002.fkdl"))) << r.out;
  EXPECT_EQ(last_metrics(d.file("out/student"))["epoch"], 2);
}
