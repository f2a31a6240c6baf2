// The fkd command line, run as a user runs it.
#include <gtest/gtest.h>

#include <regex>

#include "testutil.h"

using fkd::test::run_command;
using fkd::test::TempDir;

namespace {

std::string fkd_bin() { return std::string(FKD_BINARY_DIR) + "/fkd"; }

/// Runs fkd with arguments; stderr is merged into the output.
fkd::test::CommandResult run_fkd(const std::string& args) {
  return run_command("FKD_PROGRESS=plain OMP_WAIT_POLICY=passive " + fkd_bin() + " " + args +
                     " 2>&1");
}

int count_lines(const std::string& s) { return int(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST(Cli, HelpListsSubcommands) {
  const auto r = run_fkd("--help");
  EXPECT_EQ(r.status, 0);
  for (const char* sub : {"train", "eval", "export", "label", "inspect", "distill", "demo"}) {
    EXPECT_NE(r.out.find(sub), std::string::npos) << sub;
  }
  const auto t = run_fkd("train --help");
  EXPECT_EQ(t.status, 0);
  for (const char* flag : {"--data", "--model", "--resume", "--optimizer", "--label-smoothing",
                           "--warmup-epochs", "--device", "--threads", "--workers", "--labels",
                           "--num-crops", "--teacher", "--temperature", "--hard-weight",
                           "--mixup", "--cutmix"}) {
    EXPECT_NE(t.out.find(flag), std::string::npos) << flag;
  }
  const auto dh = run_fkd("distill --help");
  EXPECT_EQ(dh.status, 0);
  for (const char* flag : {"--teacher", "--student", "--epochs", "--num-crops", "--crops"}) {
    EXPECT_NE(dh.out.find(flag), std::string::npos) << flag;
  }
}

TEST(Cli, DistillationErrorsAreOneLine) {
  TempDir d;
  // A label store that does not exist.
  const auto r = run_fkd("train --model tiny --labels " + d.file("nolabels") + " --out " +
                         d.file("run"));
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find(d.file("nolabels")), std::string::npos) << r.out;
  // Both a store and a teacher: ambiguous.
  const auto b = run_fkd("train --model tiny --labels x --teacher y --out " + d.file("run"));
  EXPECT_EQ(b.status, 1);
  EXPECT_EQ(count_lines(b.out), 1) << b.out;
  EXPECT_NE(b.out.find("not both"), std::string::npos) << b.out;
  // A batch that does not split into whole images.
  const auto m = run_fkd("train --model tiny --labels x --num-crops 3 --batch-size 128 --out " +
                         d.file("run"));
  EXPECT_EQ(m.status, 1);
  EXPECT_NE(m.out.find("multiple of --num-crops 3"), std::string::npos) << m.out;
}

TEST(Cli, ErrorsAreOneLine) {
  TempDir d;
  const auto r = run_fkd("train --data " + d.file("missing") + " --out " + d.file("run"));
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("fkd: error: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(d.file("missing")), std::string::npos) << r.out;

  const auto m = run_fkd("train --model resnet7 --out " + d.file("run2"));
  EXPECT_EQ(m.status, 1);
  EXPECT_EQ(count_lines(m.out), 1) << m.out;
  EXPECT_NE(m.out.find("resnet7"), std::string::npos) << m.out;

  fkd::test::write_file(d.file("junk.pt"), "junk");
  const auto e = run_fkd("eval " + d.file("junk.pt"));
  EXPECT_EQ(e.status, 1);
  EXPECT_EQ(count_lines(e.out), 1) << e.out;
  EXPECT_NE(e.out.find("junk.pt"), std::string::npos) << e.out;
}

TEST(Cli, TrainEvalExportRoundTrip) {
  TempDir d;
  const std::string run = d.file("run");
  const auto t = run_fkd("train --model tiny --epochs 1 --limit-train 2048 --limit-val 512 "
                     "--batch-size 64 --lr 0.05 --threads 2 --out " + run);
  ASSERT_EQ(t.status, 0) << t.out;
  EXPECT_NE(t.out.find("epoch   1/1"), std::string::npos) << t.out;

  const auto e = run_fkd("eval " + run + "/checkpoint.pt --limit 512");
  ASSERT_EQ(e.status, 0) << e.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(e.out, m, std::regex("top1 ([0-9.]+)%"))) << e.out;
  const std::string top1 = m[1];
  EXPECT_GT(std::stod(top1), 20.0);  // well above chance (10%) after 32 steps

  // Python loads both export formats and gets the same accuracy on the same images.
  const auto x = run_fkd("export " + run + "/checkpoint.pt " + d.file("tiny.pt"));
  ASSERT_EQ(x.status, 0) << x.out;
  const auto py = fkd::test::run_python("cli_check_export.py", {"torchscript", d.file("tiny.pt"), top1});
  EXPECT_EQ(py.status, 0) << "python top-1 " << py.out << " vs fkd " << top1;
  const auto s = run_fkd("export " + run + "/checkpoint.pt " + d.file("tiny.pth") + " --format state_dict");
  ASSERT_EQ(s.status, 0) << s.out;
  const auto py2 =
      fkd::test::run_python("cli_check_export.py", {"state_dict", d.file("tiny.pth"), top1, "tiny"});
  EXPECT_EQ(py2.status, 0) << "python top-1 " << py2.out << " vs fkd " << top1;

  // A TorchScript model is evaluated directly too.
  const auto es = run_fkd("eval " + d.file("tiny.pt") + " --limit 512");
  ASSERT_EQ(es.status, 0) << es.out;
  EXPECT_NE(es.out.find("top1 " + top1 + "%"), std::string::npos) << es.out;
}
