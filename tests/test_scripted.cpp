// TorchScript students: torchvision models scripted by python3-torch, trained by fkd in every
// mode, checkpointed, resumed and exported back to Python.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <sstream>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/hash.h"
#include "fkd/label.h"
#include "fkd/models.h"
#include "fkd/train.h"
#include "models/zoo_internal.h"
#include "testutil.h"
#include "train/checkpoint.h"
#include "train/device.h"
#include "train/optimizer.h"
#include "train/teachers.h"

using namespace fkd;
using fkd::test::TempDir;

namespace {

namespace fs = std::filesystem;

constexpr size_t kImages = 512;

/// Scripted (or traced) torchvision models and a small label store of Fashion-MNIST as
/// 3-channel images, made once per build of this test program.
struct Fixture {
  TempDir dir;
  std::string cache, resnet18, mobilenet, traced, traced_plain, teacher, store;
  std::vector<std::string> resnet18_names;

  Fixture() {
    cache =
        (fs::path(FKD_BINARY_DIR) / "tests" / ("cache-scripted-" + hash_file_hex("/proc/self/exe")))
            .string();
    resnet18 = cache + "/resnet18.pt";
    mobilenet = cache + "/mobilenet_v3_small.pt";
    traced = cache + "/resnet18-traced.pt";
    traced_plain = cache + "/plain-traced.pt";
    teacher = cache + "/teacher/checkpoint.pt";
    store = cache + "/labels";
    const std::string names = cache + "/resnet18.names";
    if (!fs::exists(cache + "/complete")) build();
    std::istringstream in(fkd::test::read_file(names));
    for (std::string line; std::getline(in, line);) resnet18_names.push_back(line);
  }

  void build() {
    const std::string tmp = dir.file("cache");
    fs::create_directories(tmp);
    auto make = [&](const std::string& file, const char* arch, bool trace) {
      std::vector<std::string> args = {"make", tmp + "/" + file, arch, "3", "10"};
      if (trace) args.push_back("--trace");
      const auto r = fkd::test::run_python("models_script_student.py", args);
      if (r.status != 0) throw std::runtime_error("models_script_student.py failed");
      return r.out;
    };
    fkd::test::write_file(tmp + "/resnet18.names", make("resnet18.pt", "resnet18", false));
    make("mobilenet_v3_small.pt", "mobilenet_v3_small", false);
    make("resnet18-traced.pt", "resnet18", true);
    make("plain-traced.pt", "plain", true);
    TrainConfig t;
    t.model = "tiny";
    t.channels = 3;
    t.limit_train = kImages;
    t.limit_val = 100;
    t.epochs = 2;
    t.batch_size = 64;
    t.lr = 0.05;
    t.threads = 2;
    t.seed = 1;
    t.out = tmp + "/teacher";
    train(t);
    LabelConfig l;
    l.teacher = tmp + "/teacher/checkpoint.pt";
    l.channels = 3;
    l.limit = kImages;
    l.crops = 4;
    l.threads = 2;
    l.out = tmp + "/labels";
    generate_labels(l);
    fkd::test::write_file(tmp + "/complete", "");
    fs::create_directories(fs::path(cache).parent_path());
    std::error_code ec;
    fs::rename(tmp, cache, ec);  // fails harmlessly if another test program won
    if (ec && !fs::exists(cache + "/complete")) throw std::runtime_error("cannot cache fixture");
  }

  TrainConfig student(const std::string& model, const std::string& out) const {
    TrainConfig c;
    c.model = model;
    c.channels = 3;
    c.limit_train = kImages;
    c.limit_val = 100;
    c.batch_size = 32;
    c.lr = 0.02;
    c.threads = 2;
    c.workers = 2;
    c.seed = 5;
    c.out = dir.file(out);
    return c;
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

/// A TorchScript student checked as fkd train checks it against 28-px data of `classes`.
std::shared_ptr<Net> load(const std::string& path, int classes = 10, int channels = 3) {
  auto net = load_scripted_model(read_whole_file(path), path, channels, classes);
  TrainConfig c;
  c.model = path;
  c.channels = channels;
  c.crop.size = 28;
  check_student_fits(net, c, classes);
  return net;
}

/// A deterministic [n, 3, 28, 28] batch.
torch::Tensor batch(int64_t n) {
  return torch::sin(torch::arange(n * 3 * 28 * 28, torch::kFloat).reshape({n, 3, 28, 28}) * 0.37);
}

torch::Tensor module_tensor(Net& net, const std::string& dotted) {
  torch::jit::Module* m = scripted_module(net);
  for (const auto& p : m->named_parameters()) {
    if (p.name == dotted) return p.value;
  }
  for (const auto& b : m->named_buffers()) {
    if (b.name == dotted) return b.value;
  }
  ADD_FAILURE() << "no tensor " << dotted;
  return {};
}

}  // namespace

TEST(ScriptedStudent, NamesAreTorchvisionsAndTensorsAreTheModules) {
  auto& fx = fixture();
  auto net = load(fx.resnet18);
  std::vector<std::string> names;
  for (const auto& [name, t] : state_dict(*net)) names.push_back(name);
  std::vector<std::string> expected = fx.resnet18_names;
  std::sort(names.begin(), names.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(names, expected);
  // The Net's tensors are the module's (one TensorImpl), not copies.
  for (const auto& p : net->named_parameters()) {
    EXPECT_TRUE(p.value().is_same(module_tensor(*net, p.key()))) << p.key();
  }
  for (const auto& b : net->named_buffers()) {
    EXPECT_TRUE(b.value().is_same(module_tensor(*net, b.key()))) << b.key();
  }
}

TEST(ScriptedStudent, OptimizerStepsDeviceMovesAndBatchNormActOnTheModule) {
  auto& fx = fixture();
  auto net = load(fx.resnet18);
  const auto x = batch(4);
  torch::Tensor eval_before;
  {
    torch::NoGradGuard g;
    net->eval();
    eval_before = net->forward(x);
    EXPECT_TRUE(torch::equal(eval_before, net->forward(x)));  // eval: running stats fixed
  }
  // Channels-last placement replaces the weights' storage (set_data): the module sees it.
  place_model(*net, torch::kCPU, /*channels_last=*/true);
  EXPECT_TRUE(module_tensor(*net, "conv1.weight").is_contiguous(at::MemoryFormat::ChannelsLast));
  {
    torch::NoGradGuard g;
    EXPECT_TRUE(torch::allclose(net->forward(x.contiguous(at::MemoryFormat::ChannelsLast)),
                                eval_before, 1e-4, 1e-5));
  }
  // Train mode: batch statistics, running statistics move.
  TrainConfig cfg;
  cfg.lr = 0.1;
  auto opt = make_optimizer(cfg, *net);
  net->train();
  const torch::Tensor mean0 = module_tensor(*net, "bn1.running_mean").clone();
  const torch::Tensor w0 = module_tensor(*net, "fc.weight").clone();
  const torch::Tensor y = net->forward(x);
  EXPECT_FALSE(torch::allclose(y, eval_before, 1e-3, 1e-3));
  EXPECT_FALSE(torch::equal(module_tensor(*net, "bn1.running_mean"), mean0));
  EXPECT_EQ(module_tensor(*net, "bn1.num_batches_tracked").item<int64_t>(), 1);
  opt->zero_grad();
  torch::nn::functional::cross_entropy(y, torch::tensor({0, 1, 2, 3})).backward();
  ASSERT_TRUE(module_tensor(*net, "fc.weight").grad().defined());
  opt->step();
  EXPECT_FALSE(torch::equal(module_tensor(*net, "fc.weight"), w0));
  // Eval uses the updated running statistics and weights.
  torch::NoGradGuard g;
  net->eval();
  EXPECT_FALSE(torch::allclose(net->forward(x), eval_before, 1e-4, 1e-5));
}

TEST(ScriptedStudent, TracedModelIsRefusedWithOneLine) {
  auto& fx = fixture();
  const std::string msg = fkd::test::error_message<FormatError>([&] { load(fx.traced); });
  EXPECT_NE(msg.find(fx.traced), std::string::npos) << msg;
  EXPECT_NE(msg.find("traced"), std::string::npos) << msg;
  EXPECT_NE(msg.find("torch.jit.script"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  // Without BatchNorm or Dropout a traced model computes the same in both modes: accepted.
  auto plain = load(fx.traced_plain);
  plain->train();
  torch::NoGradGuard g;
  const auto y = plain->forward(batch(2));
  plain->eval();
  EXPECT_TRUE(torch::equal(y, plain->forward(batch(2))));
}

TEST(ScriptedStudent, WrongClassesOrChannelsAreRefused) {
  auto& fx = fixture();
  std::string msg = fkd::test::error_message<ConfigError>([&] { load(fx.resnet18, 7); });
  EXPECT_NE(msg.find(fx.resnet18), std::string::npos) << msg;
  EXPECT_NE(msg.find("outputs [1, 10]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has 7 classes"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  msg = fkd::test::error_message<ConfigError>([&] { load(fx.resnet18, 10, 1); });
  EXPECT_NE(msg.find("--channels 1"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  // Through fkd train: a dataset of 7 classes.
  TempDir data;
  fkd::test::write_idx_split(data.path(), "train", 14, 28, 28, 7);
  fkd::test::write_idx_split(data.path(), "t10k", 7, 28, 28, 7);
  TrainConfig c = fx.student(fx.resnet18, "wrong");
  c.data = data.path();
  c.limit_train = 0;
  msg = fkd::test::error_message<ConfigError>([&] { train(c); });
  EXPECT_NE(msg.find("student " + fx.resnet18 + " outputs [1, 10]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has 7 classes"), std::string::npos) << msg;
}

TEST(ScriptedStudent, ModelFileRule) {
  EXPECT_FALSE(is_model_file("resnet18"));
  EXPECT_TRUE(is_model_file("student.pt"));
  EXPECT_TRUE(is_model_file("dir/student.pth"));
  EXPECT_TRUE(is_model_file(fixture().resnet18));
  EXPECT_FALSE(is_model_file("resnet1"));
  TrainConfig c;
  c.model = "resnet1";
  EXPECT_THROW(validate_config(c), ConfigError);
}

TEST(WeightDecay, NormAndBiasExclusionDecaysExactlyTheMatrices) {
  for (const std::string model : {"resnet20", "mobilenetv2"}) {
    auto net = make_model(model, 3, 10);
    TrainConfig c;
    c.weight_decay = 0.05;
    c.no_decay_norm_bias = true;
    for (const std::string optimizer : {"sgd", "adamw"}) {
      c.optimizer = optimizer;
      auto opt = make_optimizer(c, *net);
      ASSERT_EQ(opt->param_groups().size(), 2u);
      const auto& decay = opt->param_groups()[0];
      const auto& none = opt->param_groups()[1];
      auto wd = [&](const torch::optim::OptimizerParamGroup& g) {
        return optimizer == "sgd"
                   ? static_cast<const torch::optim::SGDOptions&>(g.options()).weight_decay()
                   : static_cast<const torch::optim::AdamWOptions&>(g.options()).weight_decay();
      };
      EXPECT_EQ(wd(decay), 0.05);
      EXPECT_EQ(wd(none), 0.0);
      size_t matrices = 0, vectors = 0;
      for (const auto& p : net->parameters()) (p.dim() >= 2 ? matrices : vectors)++;
      EXPECT_EQ(decay.params().size(), matrices);
      EXPECT_EQ(none.params().size(), vectors);
      EXPECT_GT(vectors, 0u);
      for (const auto& p : decay.params()) EXPECT_GE(p.dim(), 2);
      for (const auto& p : none.params()) EXPECT_LE(p.dim(), 1);
    }
    c.no_decay_norm_bias = false;
    c.optimizer = "sgd";
    EXPECT_EQ(make_optimizer(c, *net)->param_groups().size(), 1u);
  }
}

TEST(ScriptedStudent, FkdLowersTheLossAndExportMatchesPython) {
  auto& fx = fixture();
  TrainConfig c = fx.student(fx.resnet18, "fkd");
  c.labels = fx.store;
  c.num_crops = 2;
  c.epochs = 4;  // two passes
  c.no_decay_norm_bias = true;
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 2u);
  EXPECT_LT(r.history.back().train_loss, r.history.front().train_loss);
  EXPECT_GT(r.history.back().top1, 10.0);

  // fkd eval of the checkpoint (which carries the student) reproduces the run's last val.
  const std::string moved = fx.dir.file("fkd/elsewhere.pt");
  fs::copy_file(r.checkpoint, moved);
  EvalOptions eo;
  eo.limit = 100;
  eo.threads = 2;
  const EvalResult ev = evaluate_file(moved, eo);
  EXPECT_NEAR(ev.top1, r.history.back().top1, 1e-9);

  // Exported TorchScript, run by torch.jit.load in Python, gives fkd's logits.
  const std::string exported = fx.dir.file("fkd/exported.pt");
  export_model(r.checkpoint, exported, "torchscript");
  const auto x = batch(3);
  auto net = load_checkpoint(r.checkpoint);
  net->eval();
  torch::Tensor ours;
  {
    torch::NoGradGuard g;
    ours = net->forward(x);
  }
  const std::vector<char> input = torch::pickle_save(x);
  fkd::test::write_file(fx.dir.file("fkd/input.pt"), std::string(input.begin(), input.end()));
  ASSERT_EQ(fkd::test::run_python(
                "models_script_student.py",
                {"run", exported, fx.dir.file("fkd/input.pt"), fx.dir.file("fkd/logits.pt")})
                .status,
            0);
  const std::string bytes = fkd::test::read_file(fx.dir.file("fkd/logits.pt"));
  const torch::Tensor theirs =
      torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end())).toTensor();
  ASSERT_EQ(theirs.sizes(), ours.sizes());
  // Same module, same weights, same library: only threading may reorder sums.
  EXPECT_TRUE(torch::allclose(theirs, ours, /*rtol=*/1e-4, /*atol=*/1e-5))
      << (theirs - ours).abs().max().item<float>();

  // The state_dict export holds Python's names.
  export_model(r.checkpoint, fx.dir.file("fkd/state.pt"), "state_dict");
  const auto sd = load_state_dict_pickle(fx.dir.file("fkd/state.pt"));
  EXPECT_EQ(sd.size(), fx.resnet18_names.size());
}

TEST(ScriptedStudent, SupervisedResumeEqualsUninterruptedRun) {
  auto& fx = fixture();
  TrainConfig a = fx.student(fx.mobilenet, "whole");
  a.epochs = 2;
  a.threads = 1;
  a.limit_train = 256;
  const TrainResult whole = train(a);
  TrainConfig b = a;
  b.out = fx.dir.file("parts");
  b.stop_after = 1;
  train(b);
  b.resume = true;
  b.stop_after = 0;
  const TrainResult parts = train(b);
  ASSERT_EQ(parts.history.size(), 2u);
  const auto wa = state_dict(*load_checkpoint(whole.checkpoint));
  const auto wb = state_dict(*load_checkpoint(parts.checkpoint));
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i) {
    EXPECT_EQ(wa[i].first, wb[i].first);
    EXPECT_TRUE(torch::equal(wa[i].second, wb[i].second)) << wa[i].first;
  }
  EXPECT_DOUBLE_EQ(parts.history.back().train_loss, whole.history.back().train_loss);

  // A student file that changed since the run started is refused on resume.
  const std::string copy = fx.dir.file("student.pt");
  fs::copy_file(fx.mobilenet, copy);
  TrainConfig d = a;
  d.model = copy;
  d.out = fx.dir.file("changed");
  d.stop_after = 1;
  train(d);
  fs::copy_file(fx.resnet18, copy, fs::copy_options::overwrite_existing);
  d.resume = true;
  const std::string msg = fkd::test::error_message<WorkMismatch>([&] { train(d); });
  EXPECT_NE(msg.find(copy), std::string::npos) << msg;
}

TEST(ScriptedStudent, OnlineKdTrains) {
  auto& fx = fixture();
  TrainConfig c = fx.student(fx.mobilenet, "kd");
  c.teacher = fx.teacher;
  c.epochs = 1;
  c.limit_train = 256;
  const TrainResult r = train(c);
  ASSERT_EQ(r.history.size(), 1u);
  EXPECT_TRUE(std::isfinite(r.history.back().train_loss));
}
