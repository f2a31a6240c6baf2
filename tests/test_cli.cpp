// The fkd command line, run as a user runs it.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "fkd/dataset.h"
#include "fkd/distill.h"
#include "fkd/image.h"
#include "fkd/label.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "testutil.h"
#include "train/checkpoint.h"

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

/// The defaults a subcommand's --help shows, by the option's first long name: "--lr FLOAT=0.1"
/// gives {"--lr", "0.1"}, a switch "--nesterov,--no-nesterov=true" {"--nesterov", "true"}.
/// A value in braces after the names ("--x,--no-x{false}") is read as a default too, since
/// that is how a reader of the help takes it.
std::map<std::string, std::string> help_defaults(const std::string& help) {
  std::map<std::string, std::string> shown;
  std::istringstream in(help);
  std::string line;
  const std::regex option("^  (-[^ ={]*)(\\{([^}]*)\\})?([^=]*)=?(\\S*)");
  while (std::getline(in, line)) {
    std::smatch m, name;
    if (!std::regex_search(line, m, option)) continue;
    const std::string names = m[1], before = m[4], value = m[5];
    if (!std::regex_search(names, name, std::regex("--[a-z0-9-]+"))) continue;
    if (m[2].matched) {
      shown[name[0]] = m[3];
    } else if (!value.empty() && (before.empty() || before.back() != ' ')) {
      // An '=' right after the option's type; one in the description ("(0 = auto)") has a
      // space before it.
      shown[name[0]] = value;
    }
  }
  return shown;
}

/// Compares each default --help shows with the expected value (numbers as numbers); every
/// shown default must be expected, every expected one shown.
void expect_help_defaults(const std::string& sub, const std::map<std::string, std::string>& want) {
  const auto r = run_fkd(sub + " --help");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto shown = help_defaults(r.out);
  for (const auto& [flag, value] : shown) {
    const auto it = want.find(flag);
    if (it == want.end()) {
      ADD_FAILURE() << sub << " " << flag << ": --help shows default '" << value
                    << "', which the test does not know";
      continue;
    }
    char* end = nullptr;
    const double a = std::strtod(value.c_str(), &end);
    const bool numeric = !value.empty() && *end == 0;
    const double b = std::strtod(it->second.c_str(), &end);
    if (numeric && !it->second.empty() && *end == 0) {
      EXPECT_DOUBLE_EQ(a, b) << sub << " " << flag;
    } else {
      EXPECT_EQ(value, it->second) << sub << " " << flag;
    }
  }
  for (const auto& [flag, value] : want) {
    EXPECT_TRUE(shown.count(flag))
        << sub << " " << flag << ": no default shown, expected " << value << "\n"
        << r.out;
  }
}

/// A config struct's JSON values as --help would print them, by flag name (key with '-').
std::map<std::string, std::string> flags_of(const nlohmann::json& j) {
  std::map<std::string, std::string> m;
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string flag = "--" + it.key();
    std::replace(flag.begin(), flag.end(), '_', '-');
    m[flag] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }
  return m;
}

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

TEST(Cli, HelpShowsTheConfigDefaults) {
  // Each default --help prints is the default of the struct the flag fills (--nesterov and
  // --channels-last once read "{false}" where both are on).
  const fkd::TrainConfig tc;
  std::map<std::string, std::string> train = flags_of(nlohmann::json::parse(config_to_json(tc)));
  train["--interpolation"] = train.at("--interp");
  for (const char* not_flags : {"--interp", "--eval-resize", "--input-size", "--scale", "--ratio",
                                "--mean", "--std", "--labels", "--teacher", "--no-decay-norm-bias",
                                "--model-ema-warmup", "--sync-bn", "--strict-data"}) {
    train.erase(not_flags);  // no default shown: empty, auto, or a plain flag
  }
  ASSERT_EQ(train.at("--nesterov"), "true");
  ASSERT_EQ(train.at("--channels-last"), "true");
  expect_help_defaults("train", train);

  // distill: train's options for the student, label's for the labels, its own --out.
  const fkd::DistillConfig dc;
  std::map<std::string, std::string> distill =
      flags_of(nlohmann::json::parse(config_to_json(dc.train)));
  distill["--interpolation"] = distill.at("--interp");
  for (const char* not_flags :
       {"--interp", "--eval-resize", "--input-size", "--scale", "--ratio", "--mean", "--std",
        "--labels", "--teacher", "--no-decay-norm-bias", "--model-ema-warmup", "--sync-bn",
        "--strict-data", "--mode", "--resume"}) {
    distill.erase(not_flags);
  }
  distill["--out"] = dc.out;
  distill["--crops"] = std::to_string(dc.label.crops);
  distill["--label-type"] = dc.label.label_type;
  distill["--precision"] = dc.label.precision;
  distill["--label-temperature"] = fmt::format("{}", dc.label.temperature);
  distill["--padding"] = std::to_string(dc.label.crop.padding);
  distill["--flip"] = fmt::format("{}", dc.label.crop.flip);
  ASSERT_EQ(distill.at("--model"), "tiny");
  expect_help_defaults("distill", distill);

  const fkd::LabelConfig lc;
  const std::map<std::string, std::string> label = {
      {"--data", lc.data},
      {"--crops", std::to_string(lc.crops)},
      {"--label-type", lc.label_type},
      {"--precision", lc.precision},
      {"--temperature", fmt::format("{}", lc.temperature)},
      {"--aug", "auto"},
      {"--padding", std::to_string(lc.crop.padding)},
      {"--flip", fmt::format("{}", lc.crop.flip)},
      {"--interpolation", lc.interp},
      {"--channels", std::to_string(lc.channels)},
      {"--batch", std::to_string(lc.batch)},
      {"--seed", std::to_string(lc.seed)},
      {"--optimize", lc.optimize ? "true" : "false"},
      {"--amp", lc.amp},
      {"--threads", std::to_string(lc.threads)},
      {"--workers", std::to_string(lc.workers)},
      {"--device", lc.device}};
  expect_help_defaults("label", label);

  const fkd::EvalOptions eo;
  expect_help_defaults("eval", {{"--data", eo.data},
                                {"--split", eo.split},
                                {"--batch-size", std::to_string(eo.batch_size)},
                                {"--threads", std::to_string(eo.threads)},
                                {"--workers", std::to_string(eo.workers)},
                                {"--device", eo.device}});
}

TEST(Cli, ExportHelpListsTheOutputOnce) {
  const auto h = run_fkd("export --help");
  ASSERT_EQ(h.status, 0) << h.out;
  EXPECT_TRUE(std::regex_search(h.out, std::regex("\n  out TEXT +Output file\n"))) << h.out;
  EXPECT_EQ(h.out.find("--out"), std::string::npos) << h.out;
  EXPECT_EQ(h.out.find("Output file"), h.out.rfind("Output file")) << h.out;
  // Without an output, and with two: one line each, exit 2.
  TempDir d;
  for (const std::string args :
       {"export " + d.file("c.pt"), "export " + d.file("c.pt") + " a.pt -o b.pt"}) {
    const auto r = run_fkd(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << r.out;
  }
}

TEST(Cli, UnknownModelIsABadFlagValue) {
  // A zoo name that does not exist is refused as a bad flag value (exit 2), naming the flag
  // as the user wrote it.
  TempDir d;
  for (const auto& [args, flag] : std::vector<std::pair<std::string, std::string>>{
           {"train --model resnet19 --out " + d.file("run"), "--model"},
           {"distill --teacher t.pt --student bogus --out " + d.file("run"), "--student"}}) {
    const auto r = run_fkd(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << r.out;
    EXPECT_NE(r.out.find("error: " + flag + ": '"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("resnet20"), std::string::npos) << r.out;  // the known names
  }
  EXPECT_FALSE(std::filesystem::exists(d.file("run")));
}

TEST(Cli, DistillTakesTrainsStudentAndInputOptions) {
  // fkd distill has train's options for the student and the images' input options for
  // teacher and student (it once had no --channels, which its own hint told the user to pass).
  const auto h = run_fkd("distill --help");
  ASSERT_EQ(h.status, 0) << h.out;
  for (const char* flag :
       {"--model", "--limit-train", "--limit-val", "--channels", "--mean", "--std",
        "--interpolation", "--stop-after", "--strict-data", "--channels-last"}) {
    EXPECT_TRUE(std::regex_search(h.out, std::regex(std::string("\n  ") + flag + "[ =,]"))) << flag;
  }
  TempDir d;
  const std::string teacher = d.file("rgb.pt"), out = d.file("out");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "3", "10"}).status, 0);
  const std::string cmd =
      "distill --teacher " + teacher +
      " --limit-train 64 --limit-val 32 --epochs 2 --num-crops 1 --batch-size 32 --channels 3 "
      "--mean 0.5 0.5 0.5 --std 0.25 0.25 0.25 --interpolation bicubic --strict-data "
      "--threads 1 --out " +
      out;
  const auto first = run_fkd(cmd + " --model tiny --stop-after 1");
  ASSERT_EQ(first.status, 0) << first.out;
  const std::string ckpt = out + "/student/checkpoint.pt";
  const fkd::CheckpointMeta meta = fkd::read_checkpoint_meta(ckpt);
  EXPECT_EQ(meta.epochs_done, 1);  // --stop-after 1 of 2 epochs
  EXPECT_EQ(meta.config.limit_val, 32u);
  EXPECT_EQ(meta.config.channels, 3);
  EXPECT_EQ(meta.config.interp, "bicubic");
  EXPECT_EQ(meta.config.mean, (std::vector<float>{0.5f, 0.5f, 0.5f}));
  EXPECT_EQ(meta.config.std, (std::vector<float>{0.25f, 0.25f, 0.25f}));
  EXPECT_TRUE(meta.config.strict_data);
  // The teacher saw the same input.
  const fkd::Manifest m = fkd::read_manifest(out + "/labels");
  EXPECT_EQ(m.interpolation, "bicubic");
  EXPECT_EQ(m.mean, (std::vector<float>{0.5f, 0.5f, 0.5f}));
  EXPECT_EQ(m.std, (std::vector<float>{0.25f, 0.25f, 0.25f}));
  // The same command goes on (--student is --model's other name), to the end.
  const auto rest = run_fkd(cmd + " --student tiny");
  ASSERT_EQ(rest.status, 0) << rest.out;
  EXPECT_EQ(fkd::read_checkpoint_meta(ckpt).epochs_done, 2);
  const auto both = run_fkd(cmd + " --model tiny --student tiny");
  EXPECT_EQ(both.status, 2) << both.out;
  EXPECT_EQ(count_lines(both.out), 1) << both.out;
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

TEST(Cli, CountFlagsHaveUpperBoundsAndRefuseNegatives) {
  // An absurd count (a batch of 2^63 once crashed malloc, 2^32 ended in bad_alloc) and a
  // negative one for an unsigned flag (which CLI11 would wrap to 2^64 - 1: "--limit -1" once
  // labeled everything) are refused as bad flag values, naming the flag, before any work.
  // --data names no dataset, so a flag that slipped through fails with status 1, not 2.
  TempDir d;
  const std::string t = d.file("t.pt"), s = d.file("store"), nodata = " --data " + d.file("nd");
  const std::string label = "label --teacher " + t + " --out " + s + nodata;
  const std::string train = "train" + nodata, eval = "eval " + t + nodata;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {train + " --batch-size 9223372036854775808", "--batch-size"},
      {train + " --batch-size 4611686018427387904", "--batch-size"},
      {train + " --batch-size 4294967296", "--batch-size"},
      {train + " --batch-size 18446744073709551615", "--batch-size"},
      {train + " --batch-size 18446744073709551616", "--batch-size"},
      {train + " --batch-size 100000000000000000000000", "--batch-size"},
      {train + " --workers 100000", "--workers"},
      {train + " --threads 100000", "--threads"},
      {train + " --epochs 1000000000", "--epochs"},
      {train + " --stop-after 2147483648", "--stop-after"},
      {train + " --num-crops 2147483648", "--num-crops"},
      {train + " --input-size 1000000", "--input-size"},
      {train + " --limit-train 18446744073709551615", "--limit-train"},
      {train + " --seed -1", "--seed"},
      {train + " --seed 18446744073709551616", "--seed"},
      {train + " --limit-val -1", "--limit-val"},
      {train + " --limit-train -1", "--limit-train"},
      {eval + " --batch-size 9223372036854775808", "--batch-size"},
      {eval + " --limit -1", "--limit"},
      {eval + " --workers 4294967297", "--workers"},
      {label + " --batch 18446744073709551615", "--batch"},
      {label + " --batch 4294967296", "--batch"},
      {label + " --limit -1", "--limit"},
      {label + " --seed -1", "--seed"},
      {label + " --topk 4294967296", "--topk"},
      {"label repair " + s + " --teacher " + t + " --batch 4294967296", "--batch"},
      {"distill --teacher " + t + nodata + " --batch-size 4294967296", "--batch-size"},
      {"distill --teacher " + t + nodata + " --seed -1", "--seed"},
      {"inspect " + s + " --limit -1", "--limit"},
      {"demo --seed 18446744073709551616 --out " + d.file("demo"), "--seed"},
  };
  for (const auto& [args, flag] : cases) {
    const auto r = run_fkd("timeout 60 " + fkd_bin() + " " + args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("error: " + flag + ": "), std::string::npos) << args << "\n" << r.out;
  }
  // The bounds themselves pass (the run then misses its data); the largest seed is a seed.
  for (const std::string args : {train + " --seed 18446744073709551615 --batch-size 65536",
                                 eval + " --batch-size 65536 --limit 10000000000"}) {
    const auto ok = run_fkd("timeout 60 " + fkd_bin() + " " + args);
    EXPECT_EQ(ok.status, 1) << args << "\n" << ok.out;
  }
  EXPECT_FALSE(std::filesystem::exists(s));
}

TEST(Cli, RealFlagsAreBoundedBeforeAnyWork) {
  // A value float32 cannot hold (--lr 1e300 once overflowed in the optimizer's first step,
  // after the data had been read) is a bad flag value, named at once.
  TempDir d;
  const std::string t = d.file("t.pt"), nodata = " --data " + d.file("nd");
  const std::string train = "train" + nodata;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {train + " --lr 1e300", "--lr"},
      {train + " --lr 1e39", "--lr"},
      {train + " --weight-decay 1e300", "--weight-decay"},
      {train + " --mixup 1e300", "--mixup"},
      {train + " --temperature 1e300", "--temperature"},
      {train + " --std 1e39", "--std"},
      {train + " --mean 1e39", "--mean"},
      {train + " --ratio 1e-300 1", "--ratio"},
      {train + " --dist-timeout 1e300", "--dist-timeout"},
      {train + " --warmup-epochs 1e300", "--warmup-epochs"},
      {"label --teacher " + t + " --out " + d.file("s") + nodata + " --temperature 1e300",
       "--temperature"},
      {"eval " + t + nodata + " --std 1e39", "--std"},
      {"distill --teacher " + t + nodata + " --label-temperature 1e300", "--label-temperature"},
  };
  for (const auto& [args, flag] : cases) {
    const auto r = run_fkd("timeout 60 " + fkd_bin() + " " + args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("error: " + flag + ": "), std::string::npos) << args << "\n" << r.out;
  }
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
  EXPECT_EQ(m.status, 2);
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

TEST(Cli, FinishedStoreCommandsRerunToExitZero) {
  // Run again, a finished label, merge or ensemble is found done (exit 0, nothing written),
  // as a script that reruns a pipeline expects.
  TempDir d;
  const std::string teacher = d.file("t.pt"), store = d.file("store");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "1", "10"}).status, 0);
  const std::string label =
      "label --teacher " + teacher + " --out " + store + " --limit 16 --crops 2 --threads 1";
  for (const auto& [cmd, out] : std::vector<std::pair<std::string, std::string>>{
           {label, store},
           {"label merge " + store + " --out " + d.file("merged"), d.file("merged")},
           {"label ensemble " + store + " " + store + " --out " + d.file("ens"), d.file("ens")}}) {
    const auto first = run_fkd(cmd);
    ASSERT_EQ(first.status, 0) << cmd << "\n" << first.out;
    const std::string shard = out + "/shard-00000-of-00001.fkdl";
    const std::string bytes = fkd::test::read_file(shard);
    const auto again = run_fkd(cmd);
    EXPECT_EQ(again.status, 0) << cmd << "\n" << again.out;
    EXPECT_EQ(fkd::test::read_file(shard), bytes) << cmd;
  }
  // Into a directory that holds another store: refused, nothing lost.
  const std::string merged = fkd::test::read_file(d.file("merged/shard-00000-of-00001.fkdl"));
  const auto other =
      run_fkd("label ensemble " + store + " " + store + " --out " + d.file("merged"));
  EXPECT_EQ(other.status, 1) << other.out;
  EXPECT_NE(other.out.find("already holds another label store"), std::string::npos) << other.out;
  EXPECT_EQ(fkd::test::read_file(d.file("merged/shard-00000-of-00001.fkdl")), merged);
}

TEST(Cli, FileSizeLimitStopsLabelingWithOneLine) {
  // ulimit -f is a full disk, not a kill by SIGXFSZ: one line naming the shard and the
  // reason, the blocks written so far kept, and the same command finishes the store.
  TempDir d;
  const std::string teacher = d.file("t.pt"), store = d.file("store");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "1", "10"}).status, 0);
  const std::string cmd = fkd_bin() + " label --teacher " + teacher + " --out " + store +
                          " --limit 64 --crops 50 --threads 1";
  const auto full = run_command("ulimit -f 4; FKD_PROGRESS=off " + cmd + " 2>&1");
  EXPECT_EQ(full.status, 1) << full.out;
  EXPECT_EQ(count_lines(full.out), 1) << full.out;
  EXPECT_NE(
      full.out.find("fkd: error: " + store + "/shard-00000-of-00001.fkdl.partial: cannot write"),
      std::string::npos)
      << full.out;
  EXPECT_NE(full.out.find(": File too large\n"), std::string::npos) << full.out;
  const auto again = run_command("FKD_PROGRESS=off " + cmd + " 2>&1");
  EXPECT_EQ(again.status, 0) << again.out;
  EXPECT_NE(again.out.find("the store is complete"), std::string::npos) << again.out;
}

TEST(Cli, OutNamingAFileIsOneClearLine) {
  TempDir d;
  const std::string file = d.file("afile"), teacher = d.file("t.pt"), store = d.file("store");
  fkd::test::write_file(file, "not a directory");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "1", "10"}).status, 0);
  ASSERT_EQ(run_fkd("label --teacher " + teacher + " --out " + store +
                    " --limit 16 --crops 2 --threads 1")
                .status,
            0);
  const std::string tiny = " --model tiny --limit-train 64 --limit-val 32 --epochs 1 --threads 1";
  for (const std::string& cmd :
       {"train" + tiny + " --out " + file, "train" + tiny + " --out " + file + "/run",
        "label --teacher " + teacher + " --limit 16 --crops 2 --threads 1 --out " + file,
        "label merge " + store + " --out " + file,
        "label ensemble " + store + " " + store + " --out " + file,
        "distill --teacher " + teacher + " --limit-train 64 --epochs 1 --threads 1 --out " + file,
        "demo --quick --out " + file}) {
    const auto r = run_fkd(cmd);
    EXPECT_EQ(r.status, 1) << cmd << "\n" << r.out;
    EXPECT_EQ(count_lines(r.out.substr(r.out.find("fkd: error:"))), 1) << cmd << "\n" << r.out;
    EXPECT_EQ(r.out.find("filesystem error"), std::string::npos) << cmd << "\n" << r.out;
    EXPECT_TRUE(r.out.find("fkd: error: " + file + ": --out names a file, not a directory") !=
                    std::string::npos ||
                r.out.find(": --out cannot be created: " + file + " is a file, not a directory") !=
                    std::string::npos)
        << cmd << "\n"
        << r.out;
  }
  EXPECT_EQ(fkd::test::read_file(file), "not a directory");
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

/// A checkpoint of a 1-epoch tiny run on 64 images, made once for the tests below.
const std::string& small_checkpoint() {
  static TempDir dir;
  static const std::string ckpt = [] {
    const std::string out = dir.file("run");
    const auto r = run_fkd(
        "train --model tiny --limit-train 64 --limit-val 32 --epochs 1 "
        "--threads 1 --out " +
        out);
    EXPECT_EQ(r.status, 0) << r.out;
    return out + "/checkpoint.pt";
  }();
  return ckpt;
}

TEST(Cli, EmptyOrTruncatedModelFilesAreCalledSo) {
  // A checkpoint or TorchScript file cut short once read as "not a loadable TorchScript
  // archive ... failed finding central directory" or "not an fkd checkpoint".
  TempDir d;
  const std::string whole = fkd::test::read_file(small_checkpoint());
  const std::string teacher = d.file("t.pt");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "1", "10"}).status, 0);
  const std::string scripted = fkd::test::read_file(teacher);
  fkd::test::write_file(d.file("empty.pt"), "");
  fkd::test::write_file(d.file("cut.pt"), whole.substr(0, whole.size() / 2));
  fkd::test::write_file(d.file("cut-ts.pt"), scripted.substr(0, scripted.size() - 30));
  const std::string tiny = " --limit-train 64 --limit-val 32 --epochs 1 --threads 1";
  for (const auto& [file, what] : std::vector<std::pair<std::string, std::string>>{
           {d.file("empty.pt"), ": is empty (0 bytes)"},
           {d.file("cut.pt"), ": is truncated: a zip archive of "},
           {d.file("cut-ts.pt"), ": is truncated: a zip archive of "}}) {
    for (const std::string& cmd :
         {"eval " + file, "export " + file + " " + d.file("x.pt"),
          "label --teacher " + file + " --out " + d.file("s") + " --limit 8 --crops 2",
          "train --model tiny --teacher " + file + tiny + " --out " + d.file("kd"),
          "train --model " + file + tiny + " --out " + d.file("stu")}) {
      const auto r = run_fkd(cmd);
      EXPECT_EQ(r.status, 1) << cmd << "\n" << r.out;
      EXPECT_EQ(count_lines(r.out), 1) << cmd << "\n" << r.out;
      EXPECT_NE(r.out.find("fkd: error: " + file + what), std::string::npos) << cmd << "\n"
                                                                             << r.out;
    }
  }
  // A run whose checkpoint was cut short: --resume says so.
  const std::string run = d.file("run");
  std::filesystem::create_directories(run);
  fkd::test::write_file(run + "/checkpoint.pt", whole.substr(0, whole.size() - 100));
  const auto r = run_fkd("train --model tiny" + tiny + " --out " + run + " --resume");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("fkd: error: " + run + "/checkpoint.pt: is truncated"), std::string::npos)
      << r.out;
}

TEST(Cli, ScriptedFunctionAsModelIsNamedForWhatItIs) {
  // A torch.jit.script'ed function has no weights: once "teacher returned logits of shape
  // [1, 1, 28, 28]".
  TempDir d;
  const std::string fn = d.file("fn.pt");
  ASSERT_EQ(fkd::test::run_python("cli_scripted_function.py", {fn}).status, 0);
  const auto r = run_fkd("train --model " + fn +
                         " --limit-train 64 --limit-val 32 --epochs 1 --out " + d.file("run"));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(r.out, "fkd: error: " + fn +
                       ": a TorchScript module without parameters (a scripted function?), "
                       "nothing to train; a student is a torch.jit.script'ed nn.Module with "
                       "weights\n");
}

TEST(Cli, UnknownSubcommandIsNamed) {
  const auto r = run_fkd("trian --epochs 2");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_EQ(count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("fkd: error: unknown subcommand 'trian': expected one of train, eval"),
            std::string::npos)
      << r.out;
}

TEST(Cli, MissingTemporaryDirectoryIsOneClearLine) {
  // TMPDIR naming no directory once gave a raw ": temp_directory_path: No such file or
  // directory". Each command works without it or says which directory is missing.
  TempDir d;
  const std::string ckpt = small_checkpoint();
  for (const std::string& cmd :
       {"label --teacher " + ckpt + " --out " + d.file("s") + " --limit 8 --crops 2 --threads 1",
        "train --model tiny --teacher " + ckpt +
            " --limit-train 64 --limit-val 32 --epochs 1 --threads 1 --out " + d.file("kd"),
        "eval " + ckpt + " --limit 32", "export " + ckpt + " " + d.file("x.pt")}) {
    const auto r =
        run_fkd("timeout 300 env TMPDIR=" + d.file("none") + " " + fkd_bin() + " " + cmd);
    if (r.status == 0) continue;
    EXPECT_EQ(r.status, 1) << cmd << "\n" << r.out;
    EXPECT_EQ(r.out.substr(r.out.find("fkd: error:")),
              "fkd: error: the temporary directory (TMPDIR=" + d.file("none") +
                  "): No such file or directory\n")
        << cmd;
  }
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
