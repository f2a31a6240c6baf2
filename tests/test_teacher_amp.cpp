// The precision a teacher runs in (--amp for fkd label, repair, distill and online KD): what
// its convolutions receive, its logits against PyTorch's autocast on the same file, and
// what label stores record of it.
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <mutex>
#include <set>
#include <vector>

#include "fkd/error.h"
#include "fkd/label.h"
#include "fkd/models.h"
#include "fkd/store.h"
#include "label/labeler.h"
#include "models/autocast.h"
#include "testutil.h"
#include "train/teachers.h"

namespace fs = std::filesystem;
using namespace fkd;
using fkd::test::TempDir;

namespace {

torch::Tensor load_tensor(const std::string& path) {
  const std::string s = fkd::test::read_file(path);
  return torch::pickle_load(std::vector<char>(s.begin(), s.end())).toTensor();
}

/// The dtype of the first tensor argument of every convolution and matrix product the thread
/// runs while alive, through ATen's RecordFunction, which sees each operator call of the
/// TorchScript interpreter and of eager code. (The prepacked convolutions of an optimized
/// float32 graph call oneDNN directly and are not seen.)
class KernelDtypes {
 public:
  KernelDtypes() {
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback([](const at::RecordFunction& fn)
                                       -> std::unique_ptr<at::ObserverContext> {
          const std::string name = fn.name();
          if (name.find("conv") == std::string::npos && name != "aten::linear" &&
              name != "aten::addmm" && name != "aten::mm" && name != "aten::matmul")
            return nullptr;
          for (const c10::IValue& v : fn.inputs()) {
            if (!v.isTensor()) continue;
            seen().insert(name + ":" + c10::toString(v.toTensor().scalar_type()));
            break;
          }
          return nullptr;
        }).needsInputs(true));
  }
  ~KernelDtypes() { at::removeCallback(handle_); }
  static std::set<std::string>& seen() {
    thread_local std::set<std::string> s;
    return s;
  }
  /// "aten::_convolution:BFloat16", ... of everything recorded since construction.
  std::set<std::string> take() {
    std::set<std::string> s;
    s.swap(seen());
    return s;
  }

 private:
  at::CallbackHandle handle_;
};

/// The convolution kernels among `ops`: what computes, below autocast (whose entry points,
/// such as aten::conv2d, are recorded with the arguments before their cast).
std::vector<std::string> convolution_kernels(const std::set<std::string>& ops) {
  std::vector<std::string> k;
  for (const std::string& op : ops) {
    const std::string name = op.substr(0, op.rfind(':'));
    if (name == "aten::_convolution" || name.find("mkldnn_convolution") != std::string::npos ||
        name.find("cudnn_convolution") != std::string::npos ||
        name.find("slow_conv") != std::string::npos)
      k.push_back(op);
  }
  return k;
}

/// Every recorded convolution kernel ran in `dtype` ("BFloat16", "Float"), and one did.
void expect_convolutions_in(const std::set<std::string>& ops, const std::string& dtype,
                            const std::string& what) {
  const std::vector<std::string> kernels = convolution_kernels(ops);
  EXPECT_FALSE(kernels.empty()) << what << ": no convolution was recorded";
  for (const std::string& op : kernels)
    EXPECT_EQ(op.substr(op.rfind(':') + 1), dtype) << what << ": " << op;
}

struct Oracle {
  TempDir dir;
  torch::Tensor x, fp32, bf16;
  Oracle() {
    const auto r = fkd::test::run_python("teacher_amp.py", {dir.path()});
    if (r.status != 0) throw std::runtime_error("teacher_amp.py failed: " + r.out);
    x = load_tensor(dir.file("input.pt"));
    fp32 = load_tensor(dir.file("logits_fp32.pt"));
    bf16 = load_tensor(dir.file("logits_bf16.pt"));
  }
  std::string teacher() const { return dir.file("teacher.pt"); }
};

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

TEST(TeacherAmp, Bf16TeacherConvolutionsRunInBf16) {
  const Oracle o;
  for (bool optimize : {true, false}) {
    const std::string what = optimize ? "frozen" : "as loaded";
    KernelDtypes rec;
    auto bf16 = load_torchscript_teacher(o.teacher(), torch::kCPU, {optimize, AmpMode::kBf16});
    rec.take();  // loading and freezing may run operators of their own
    const torch::Tensor y = bf16->logits(o.x);
    EXPECT_EQ(y.scalar_type(), torch::kFloat);  // logits come back in float32 for the softmax
    expect_convolutions_in(rec.take(), "BFloat16", what + " bf16 teacher");
    EXPECT_EQ(bf16->amp(), AmpMode::kBf16);
    EXPECT_NE(bf16->describe().find("bf16"), std::string::npos) << bf16->describe();

    auto fp32 = load_torchscript_teacher(o.teacher(), torch::kCPU, {optimize, AmpMode::kOff});
    rec.take();
    fp32->logits(o.x);
    for (const std::string& op : convolution_kernels(rec.take()))
      EXPECT_EQ(op.substr(op.rfind(':') + 1), "Float") << what << " float32 teacher: " << op;
  }
}

TEST(TeacherAmp, Bf16LogitsEqualPyTorchAutocastOnTheSameFile) {
  const Oracle o;
  // bf16 keeps 8 significant bits: two bf16 computations of the same network differ by a few
  // percent of the logits' range (rounding of BatchNorm folded before or after the cast),
  // while both stay far from float32's exact agreement.
  const double range = o.fp32.abs().max().item<double>();
  const double autocast_vs_fp32 = max_abs_diff(o.bf16, o.fp32);
  ASSERT_GT(autocast_vs_fp32, 1e-4 * range) << "the oracle did not run in bf16";
  for (bool optimize : {true, false}) {
    auto teacher = load_torchscript_teacher(o.teacher(), torch::kCPU, {optimize, AmpMode::kBf16});
    const torch::Tensor y = teacher->logits(o.x);
    const double d = max_abs_diff(y, o.bf16);
    std::cout << "[ info ] bf16 teacher (optimize " << optimize << ") vs PyTorch autocast: max "
              << "|diff| " << d << ", autocast vs float32 " << autocast_vs_fp32 << ", |logit| "
              << range << "\n";
    EXPECT_LT(d, 0.05 * range);
    EXPECT_TRUE(torch::equal(y.argmax(1), o.bf16.argmax(1)));
    // And float32 is PyTorch's float32.
    auto fp32 = load_torchscript_teacher(o.teacher(), torch::kCPU, {optimize, AmpMode::kOff});
    EXPECT_LT(max_abs_diff(fp32->logits(o.x), o.fp32), 1e-3 * range);
  }
}

TEST(TeacherAmp, CheckpointTeachersAndOnlineKdRunInTheirPrecision) {
  // A checkpoint teacher goes through its TorchScript export (made in memory, no temporary
  // file) or runs eagerly; both under the precision asked for.
  TempDir dir;
  auto net = make_model("resnet20", 1, 10);
  for (bool optimize : {true, false}) {
    KernelDtypes rec;
    std::unique_ptr<Teacher> t;
    if (optimize) {
      net->eval();
      t = load_torchscript_teacher(torchscript_bytes(*net), "resnet20", torch::kCPU,
                                   {true, AmpMode::kBf16});
    } else {
      t = make_zoo_teacher(net, torch::kCPU, AmpMode::kBf16);
    }
    rec.take();
    t->logits(torch::randn({4, 1, 28, 28}));
    expect_convolutions_in(rec.take(), "BFloat16", optimize ? "exported zoo" : "eager zoo");
  }
  EXPECT_THROW(make_zoo_teacher(net, torch::kCPU, AmpMode::kAuto), ConfigError);
}

TEST(TeacherAmp, LabelingResolvesAutoToTheStoresOrTheDevicesPrecision) {
  const torch::Device cpu(torch::kCPU);
  Manifest m;
  m.teacher_amp = AmpMode::kBf16;
  EXPECT_EQ(label_teacher_amp(AmpMode::kAuto, cpu, m), AmpMode::kBf16);
  m.teacher_amp = AmpMode::kOff;
  EXPECT_EQ(label_teacher_amp(AmpMode::kAuto, cpu, m), AmpMode::kOff);
  EXPECT_EQ(label_teacher_amp(AmpMode::kAuto, cpu, std::nullopt),
            native_bf16(cpu) ? AmpMode::kBf16 : AmpMode::kOff);
  EXPECT_EQ(label_teacher_amp(AmpMode::kOff, cpu, std::nullopt), AmpMode::kOff);
  EXPECT_EQ(label_teacher_amp(AmpMode::kBf16, cpu, std::nullopt), AmpMode::kBf16);
  EXPECT_THROW(label_teacher_amp(AmpMode::kFp16, cpu, std::nullopt), ConfigError);
}

/// A 24-image, 10-class IDX dataset and a traced teacher for it, as the labeling tests use.
struct LabelFixture {
  TempDir dir;
  std::string data, teacher, bin = std::string(FKD_BINARY_DIR) + "/fkd";
  LabelFixture() {
    data = dir.file("data");
    fs::create_directories(data);
    fkd::test::write_idx_split(data, "train", 24, 28, 28, 10);
    fkd::test::write_idx_split(data, "t10k", 10, 28, 28, 10);
    teacher = dir.file("teacher.pt");
    const auto r = fkd::test::run_python("label_teacher.py", {"make", teacher, "1", "10"});
    if (r.status != 0) throw std::runtime_error("cannot make the teacher");
  }
  LabelConfig config(const std::string& out, const std::string& amp) const {
    LabelConfig c;
    c.teacher = teacher;
    c.data = data;
    c.out = out;
    c.crops = 6;
    c.batch = 16;
    c.threads = 1;
    c.seed = 3;
    c.amp = amp;
    return c;
  }
  fkd::test::CommandResult fkd(const std::string& args) const {
    return fkd::test::run_command("FKD_PROGRESS=off " + bin + " " + args + " 2>&1");
  }
};

TEST(TeacherAmp, StoresRecordTheirPrecisionAndKeepIt) {
  const LabelFixture fx;
  const std::string store = fx.dir.file("bf16");
  LabelConfig c = fx.config(store, "bf16");
  c.shard = "0/2";
  EXPECT_EQ(generate_labels(c).teacher_amp, AmpMode::kBf16);
  EXPECT_EQ(read_manifest(store).teacher_amp, AmpMode::kBf16);
  // The other shard in float32 would mix precisions in one store: refused, naming why.
  c.shard = "1/2";
  c.amp = "off";
  const std::string msg = fkd::test::error_message<ConfigError>([&] { generate_labels(c); });
  EXPECT_NE(msg.find("teacher_amp (bf16 vs off)"), std::string::npos) << msg;
  // --amp auto takes the store's precision, whatever the machine would pick.
  c.amp = "auto";
  const LabelResult r = generate_labels(c);
  EXPECT_EQ(r.teacher_amp, AmpMode::kBf16);
  EXPECT_TRUE(r.complete);
  // The label line and fkd inspect say it.
  const auto label = fx.fkd("label --teacher " + fx.teacher + " --data " + fx.data + " --out " +
                            store + " --crops 6 --batch 16 --seed 3 --shard 1/2");
  EXPECT_EQ(label.status, 0) << label.out;
  const auto inspect = fx.fkd("inspect " + store);
  EXPECT_EQ(inspect.status, 0) << inspect.out;
  EXPECT_NE(inspect.out.find("teacher amp      bf16 (the teacher ran in bfloat16)"),
            std::string::npos)
      << inspect.out;
}

TEST(TeacherAmp, EnsemblesOfMixedPrecisionsOnlyWhenAsked) {
  const LabelFixture fx;
  const LabelConfig a = fx.config(fx.dir.file("a"), "bf16");
  generate_labels(a);
  LabelConfig b = fx.config(fx.dir.file("b"), "off");
  b.reference_crops = a.out;
  generate_labels(b);
  const std::string msg = fkd::test::error_message<ConfigError>([&] {
    ensemble_stores({a.out, b.out}, fx.dir.file("e"));
  });
  EXPECT_NE(msg.find("teacher_amp bf16 vs off"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--mixed-amp"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(fx.dir.file("e")));
  const auto r = fx.fkd("label ensemble " + a.out + " " + b.out + " --out " + fx.dir.file("e") +
                        " --mixed-amp");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(read_manifest(fx.dir.file("e")).teacher_amp, AmpMode::kBf16);
}

TEST(TeacherAmp, RepairRelabelsInTheStoresPrecision) {
  // A bf16 store repaired by a run that asks for nothing: the damaged record comes back
  // byte for byte only if the teacher runs in bf16 again.
  const LabelFixture fx;
  const std::string good = fx.dir.file("good"), bad = fx.dir.file("bad");
  generate_labels(fx.config(good, "bf16"));
  fs::copy(good, bad, fs::copy_options::recursive);
  const std::string shard = bad + "/" + shard_file_name(0, 1);
  std::string bytes = fkd::test::read_file(shard);
  const size_t block = bytes.find("FKDB", bytes.find("FKDB") + 1);  // image 1's record
  ASSERT_NE(block, std::string::npos);
  bytes[block + 40] ^= 0x5a;
  fkd::test::write_file(shard, bytes);
  const auto r = fx.fkd("label repair " + bad + " --teacher " + fx.teacher + " --batch 16");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(fkd::test::read_file(shard), fkd::test::read_file(good + "/" + shard_file_name(0, 1)));
}

}  // namespace
