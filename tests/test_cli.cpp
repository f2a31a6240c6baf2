// The fkd command line, run as a user runs it.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <regex>

#include "fkd/dataset.h"
#include "fkd/image.h"
#include "testutil.h"

using fkd::test::run_command;
using fkd::test::TempDir;

namespace {

std::string fkd_bin() { return std::string(FKD_BINARY_DIR) + "/fkd"; }

/// Runs fkd with arguments; stderr is merged into the output.
fkd::test::CommandResult run_fkd(const std::string& args) {
  // "timeout N BIN ARGS" runs the binary under a time limit (a hang fails the test).
  const bool wrapped = args.rfind("timeout ", 0) == 0;
  return run_command("FKD_PROGRESS=plain OMP_WAIT_POLICY=passive " +
                     (wrapped ? args : fkd_bin() + " " + args) + " 2>&1");
}

int count_lines(const std::string& s) { return int(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST(Cli, HelpListsSubcommands) {
  const auto r = run_fkd("--help");
  EXPECT_EQ(r.status, 0);
  // Each subcommand as the command list shows it: its name at the start of a line.
  for (const char* sub : {"train", "eval", "export", "label", "inspect", "distill", "demo"}) {
    EXPECT_TRUE(std::regex_search(r.out, std::regex(std::string("\n +") + sub + " ")))
        << sub << "\n"
        << r.out;
  }
  const auto t = run_fkd("train --help");
  EXPECT_EQ(t.status, 0);
  for (const char* flag :
       {"--data", "--model", "--resume", "--optimizer", "--label-smoothing", "--warmup-epochs",
        "--device", "--threads", "--workers", "--labels", "--num-crops", "--teacher",
        "--temperature", "--hard-weight", "--mixup", "--cutmix", "--skip-damaged-labels"}) {
    EXPECT_NE(t.out.find(flag), std::string::npos) << flag;
  }
  EXPECT_NE(t.out.find("this many passes"), std::string::npos) << t.out;  // --stop-after's unit
  const auto dh = run_fkd("distill --help");
  EXPECT_EQ(dh.status, 0);
  for (const char* flag : {"--teacher", "--student", "--epochs", "--num-crops", "--crops"}) {
    EXPECT_NE(dh.out.find(flag), std::string::npos) << flag;
  }
}

TEST(Cli, CountsAndRangesAreCheckedBeforeAnyWork) {
  // Every subcommand refuses a nonsense count or range at once, in one line naming the flag,
  // before it reads any data (a negative worker count once hung the loader for good).
  TempDir d;
  const std::string t = d.file("t.pt"), s = d.file("store");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train --workers -3", "--workers"},
      {"eval " + t + " --workers -3", "--workers"},
      {"label --teacher " + t + " --out " + s + " --workers -3", "--workers"},
      {"distill --teacher " + t + " --workers -3", "--workers"},
      {"demo --workers -3", "--workers"},
      {"train --threads -1", "--threads"},
      {"train --batch-size 0", "--batch-size"},
      {"eval " + t + " --batch-size 0", "--batch-size"},
      {"train --epochs 0", "--epochs"},
      {"train --momentum -1", "--momentum"},
      {"train --weight-decay -1", "--weight-decay"},
      {"train --stop-after 0", "--stop-after"},
      {"train --stop-after -1", "--stop-after"},
      {"train --num-crops 0", "--num-crops"},
      {"train --flip 2", "--flip"},
      {"train --scale 0.5 2", "--scale"},
      {"train --aug zoom", "--aug"},
      {"train --mode teach", "--mode"},
      {"label --teacher " + t + " --out " + s + " --topk 0", "--topk"},
      {"label --teacher " + t + " --out " + s + " --topk -1", "--topk"},
      {"label --teacher " + t + " --out " + s + " --crops 0", "--crops"},
      {"label --teacher " + t + " --out " + s + " --flip 1.5", "--flip"},
      {"label --teacher " + t + " --out " + s + " --batch 0", "--batch"},
      {"distill --teacher " + t + " --topk 0", "--topk"},
      {"inspect " + s + " --image -1", "--image"},
  };
  for (const auto& [args, flag] : cases) {
    const auto r = run_fkd("timeout 60 " + fkd_bin() + " " + args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(flag), std::string::npos) << args << "\n" << r.out;
  }
  EXPECT_FALSE(std::filesystem::exists(s));
  // The store format's limit (2^20 crops per image), not a smaller one of the command line's:
  // 70000 crops pass, and the run goes on to find the missing teacher.
  const auto big = run_fkd("label --teacher " + t + " --out " + s + " --crops 70000");
  EXPECT_EQ(big.status, 1) << big.out;
  EXPECT_NE(big.out.find(t + ": no such file"), std::string::npos) << big.out;
  const auto over = run_fkd("label --teacher " + t + " --out " + s + " --crops 1048577");
  EXPECT_EQ(over.status, 2) << over.out;
}

TEST(Cli, DistillationErrorsAreOneLine) {
  TempDir d;
  // A label store that does not exist.
  const auto r =
      run_fkd("train --model tiny --labels " + d.file("nolabels") + " --out " + d.file("run"));
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
  const auto t = run_fkd(
      "train --model tiny --epochs 1 --limit-train 2048 --limit-val 512 "
      "--batch-size 64 --lr 0.05 --threads 2 --out " +
      run);
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
  // The output line says what input the model expects.
  EXPECT_NE(x.out.find("wrote " + d.file("tiny.pt") +
                       " (torchscript): tiny takes 1x28x28 input: pixels / 255, mean [0.286], "
                       "std [0.353]; shorter side resized to 28, then center crop 28 (bilinear); "
                       "trained on RandomCrop(28, padding 4) + flip 0.5; 10 classes (T-shirt/top, "
                       "Trouser, ..., Ankle boot); in fkd.json"),
            std::string::npos)
      << x.out;
  const auto py =
      fkd::test::run_python("cli_check_export.py", {"torchscript", d.file("tiny.pt"), top1});
  EXPECT_EQ(py.status, 0) << "python top-1 " << py.out << " vs fkd " << top1;
  const auto s =
      run_fkd("export " + run + "/checkpoint.pt --format state_dict -o " + d.file("tiny.pth"));
  ASSERT_EQ(s.status, 0) << s.out;
  const auto py2 = fkd::test::run_python("cli_check_export.py",
                                         {"state_dict", d.file("tiny.pth"), top1, "tiny"});
  EXPECT_EQ(py2.status, 0) << "python top-1 " << py2.out << " vs fkd " << top1;

  // A TorchScript model is evaluated directly too.
  const auto es = run_fkd("eval " + d.file("tiny.pt") + " --limit 512");
  ASSERT_EQ(es.status, 0) << es.out;
  EXPECT_NE(es.out.find("top1 " + top1 + "%"), std::string::npos) << es.out;
}

TEST(Cli, InspectSummarizesPrintsAndDrawsAnImage) {
  TempDir d;
  const std::string data = d.file("data"), store = d.file("store"), teacher = d.file("t.pt");
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {data}).status, 0);
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "3", "3"}).status, 0);
  // Three classes: the default top-k (5) is capped at the class count.
  const auto l = run_fkd("label --teacher " + teacher + " --data " + data + " --out " + store +
                         " --crops 10 --input-size 28 --threads 1");
  ASSERT_EQ(l.status, 0) << l.out;

  const auto s = run_fkd("inspect " + store);
  ASSERT_EQ(s.status, 0) << s.out;
  EXPECT_NE(s.out.find("marginal_smoothing top-3 in fp16, 3 classes"), std::string::npos) << s.out;
  EXPECT_TRUE(std::regex_search(s.out, std::regex("crops +150 \\(10 per image\\)"))) << s.out;
  EXPECT_NE(s.out.find("(format version 3)"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("crop origin      derived: RandomResizedCrop"), std::string::npos) << s.out;

  // One image: its size as width x height, one row per crop.
  const auto ds = fkd::open_dataset(data, fkd::Split::kTrain);
  const fkd::Image im = ds->load(4);
  ASSERT_NE(im.width, im.height);  // the check below tells the order apart
  const auto one = run_fkd("inspect " + store + " --image 4");
  ASSERT_EQ(one.status, 0) << one.out;
  EXPECT_NE(one.out.find(fmt::format("image 4: {}x{} (width x height)", im.width, im.height)),
            std::string::npos)
      << one.out;
  EXPECT_EQ(count_lines(one.out), 12) << one.out;  // title, header, 10 crops

  const std::string png = d.file("four.png");
  const auto r = run_fkd("inspect " + store + " --data " + data + " --render 4 " + png);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(fkd::test::read_file(png).substr(0, 4), "\x89PNG");
  {
    // A full disk (ulimit -f: 2 blocks) while replacing the picture: one line naming it,
    // the previous picture kept whole, no temporary file left.
    const std::string before = fkd::test::read_file(png);
    const auto full =
        run_command("trap '' XFSZ; ulimit -f 2; FKD_PROGRESS=plain " + fkd_bin() + " inspect " +
                    store + " --data " + data + " --render 5 " + png + " 2>&1");
    EXPECT_EQ(full.status, 1) << full.out;
    EXPECT_EQ(full.out, "fkd: error: " + png + ": cannot write: File too large\n");
    EXPECT_EQ(fkd::test::read_file(png), before);
    EXPECT_EQ(fkd::test::list_dir(d.path()),
              (std::vector<std::string>{"data", "four.png", "store", "t.pt"}));
  }
  // A store whose labeling stopped: how far it came, and no reading of records.
  const std::string shard = store + "/shard-00000-of-00001.fkdl";
  std::filesystem::rename(shard, shard + ".partial");  // all blocks there, not finished
  const auto u = run_fkd("inspect " + store);
  EXPECT_EQ(u.status, 0) << u.out;
  EXPECT_NE(u.out.find("(unfinished)"), std::string::npos) << u.out;
  EXPECT_NE(u.out.find("15 of 15 images, in progress or stopped"), std::string::npos) << u.out;
  const auto ui = run_fkd("inspect " + store + " --image 1");
  EXPECT_EQ(ui.status, 1) << ui.out;
  EXPECT_NE(ui.out.find("unfinished"), std::string::npos) << ui.out;
  std::filesystem::rename(shard + ".partial", shard);
  for (const char* bad : {"abc", "-1", "99999"}) {
    const auto b = run_fkd("inspect " + store + " --data " + data + " --render " + bad + " x.png");
    EXPECT_EQ(b.status, 1) << bad;
    EXPECT_EQ(count_lines(b.out), 1) << b.out;
    EXPECT_NE(b.out.find("--render"), std::string::npos) << b.out;
  }
}

TEST(Cli, TeacherThatCannotRunOnTheDataIsNamedInOneLine) {
  TempDir d;
  const std::string teacher = d.file("rgb.pt"), store = d.file("store");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "3", "10"}).status, 0);
  // Fashion-MNIST is grayscale; the teacher takes RGB. The error is TorchScript's own last
  // line (not its traceback), with what fkd fed the teacher and how to change it.
  for (const std::string& cmd :
       {"label --teacher " + teacher + " --out " + store + " --limit 4 --crops 2 --threads 1",
        "eval " + teacher + " --limit 8 --threads 1"}) {
    const auto r = run_fkd(cmd);
    EXPECT_EQ(r.status, 1) << cmd;
    EXPECT_EQ(count_lines(r.out), 1) << r.out;
    EXPECT_NE(
        r.out.find(teacher + ": TorchScript forward failed on an input of shape [1, 1, 28, 28]"),
        std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("to have 3 channels"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--channels"), std::string::npos) << r.out;
  }
  EXPECT_FALSE(std::filesystem::exists(store + "/manifest.json"));
  const auto ok = run_fkd("eval " + teacher + " --limit 8 --threads 1 --channels 3");
  EXPECT_EQ(ok.status, 0) << ok.out;
}

TEST(Cli, LaunchRunsTheCommandInEveryRankAndNamesAFailedOne) {
  TempDir d;
  const std::string launch = "timeout 120 " + fkd_bin() + " launch --nproc-per-node 2 -- ";
  // Each rank is this fkd binary, run with the words after --.
  const auto v = run_fkd(launch + "--version");
  EXPECT_EQ(v.status, 0) << v.out;
  EXPECT_TRUE(std::regex_match(v.out, std::regex("(fkd [0-9.]+\n){2}"))) << v.out;
  // A rank that fails: its own error, then one launcher line naming it; its status is fkd's.
  const auto e = run_fkd(launch + "eval " + d.file("missing.pt"));
  EXPECT_EQ(e.status, 1) << e.out;
  EXPECT_NE(e.out.find(d.file("missing.pt")), std::string::npos) << e.out;
  EXPECT_TRUE(std::regex_search(
      e.out, std::regex("\nfkd launch: rank [01] \\(pid [0-9]+\\) exited with status 1")))
      << e.out;
  EXPECT_EQ(e.out.find("fkd launch:"), e.out.rfind("fkd launch:")) << e.out;
  // Usage errors are one line, before any rank starts.
  const auto none = run_fkd("launch --nproc-per-node 2");
  EXPECT_EQ(none.status, 2) << none.out;
  EXPECT_EQ(count_lines(none.out), 1) << none.out;
  EXPECT_NE(none.out.find("no command to run"), std::string::npos) << none.out;
  const auto zero = run_fkd("launch --nproc-per-node 0 -- --version");
  EXPECT_EQ(zero.status, 2) << zero.out;
  EXPECT_NE(zero.out.find("--nproc-per-node"), std::string::npos) << zero.out;
  const auto h = run_fkd("launch --help");
  EXPECT_EQ(h.status, 0) << h.out;
  for (const char* flag : {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr",
                           "--master-port", "--grace", "Example: fkd launch"}) {
    EXPECT_NE(h.out.find(flag), std::string::npos) << flag;
  }
}
