// Tests of the model zoo: shapes, parameter counts and names against Python/torchvision,
// state-dict pickles both ways, TorchScript export and TorchScript/zoo teachers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <sstream>

#include "fkd/error.h"
#include "fkd/models.h"
#include "models/zoo_internal.h"
#include "testutil.h"

namespace {

using fkd::test::error_message;
using fkd::test::run_python;
using fkd::test::TempDir;

constexpr double kTol = 1e-4;
// Test inputs are randn * 4 so that activations reach ReLU6's clipping range: a mistake
// there (or in any BatchNorm statistic) changes the logits.

void save_tensor(const torch::Tensor& t, const std::string& path) {
  const std::vector<char> bytes = torch::pickle_save(t);
  fkd::test::write_file(path, std::string(bytes.begin(), bytes.end()));
}

torch::Tensor load_tensor(const std::string& path) {
  const std::string s = fkd::test::read_file(path);
  return torch::pickle_load(std::vector<char>(s.begin(), s.end())).toTensor();
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

/// Random BatchNorm affine weights, then running statistics measured on a random batch
/// (as training would leave them), so that eval-mode logits depend on every parameter and
/// buffer and the network stays well conditioned (made-up statistics let deep models
/// saturate to constant outputs, which would hide mistakes).
void randomize_batchnorm(fkd::Net& net, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  std::vector<fkd::models::BatchNorm2dImpl*> bns;
  for (const auto& m : net.modules(/*include_self=*/false)) {
    if (auto* bn = m->as<fkd::models::BatchNorm2d>()) {
      bn->weight.copy_(torch::rand_like(bn->weight) + 0.5);
      bn->bias.copy_(torch::randn_like(bn->bias) * 0.1);
      bn->options.momentum(1.0);
      bns.push_back(bn);
    }
  }
  net.train();
  net.forward(torch::randn({8, net.in_channels(), 32, 32}) * 4);
  for (auto* bn : bns) {
    bn->options.momentum(0.1);
    bn->num_batches_tracked.fill_(7);
  }
}

torch::Tensor eval_logits(fkd::Net& net, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  net.eval();
  return net.forward(x);
}

std::string shape_str(at::IntArrayRef sizes) {
  std::string s;
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? "," : "") + std::to_string(sizes[i]);
  return s.empty() ? "-" : s;
}

struct Described {
  int64_t params = -1;
  std::vector<std::pair<std::string, std::string>> entries;  // key, shape
};

/// Runs tests/py/models_describe.py on the specs ("name:in:classes").
std::map<std::string, Described> describe_in_python(const std::vector<std::string>& specs) {
  auto r = run_python("models_describe.py", specs);
  EXPECT_EQ(r.status, 0) << r.out;
  std::map<std::string, Described> out;
  std::istringstream in(r.out);
  std::string line, current;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string a, b, c, d;
    ls >> a >> b;
    if (a == "model") {
      ls >> c >> d;
      current = b;
      out[current].params = std::stoll(d);
    } else if (a == "end") {
      current.clear();
    } else if (!current.empty()) {
      out[current].entries.emplace_back(a, b);
    }
  }
  return out;
}

struct Spec {
  std::string name;
  int in_channels;
  int num_classes;
  std::string str() const {
    return name + ":" + std::to_string(in_channels) + ":" + std::to_string(num_classes);
  }
};

TEST(Models, NamesAndUnknownName) {
  const auto names = fkd::model_names();
  for (const char* n : {"tiny", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                        "resnet18", "resnet50", "mobilenetv2"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  const auto msg = error_message<fkd::ConfigError>([] { fkd::make_model("resnet21", 3, 10); });
  EXPECT_NE(msg.find("resnet21"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mobilenetv2"), std::string::npos) << msg;
  EXPECT_THROW(fkd::make_model("tiny", 0, 10), fkd::ConfigError);
  EXPECT_THROW(fkd::make_model("tiny", 1, 0), fkd::ConfigError);
}

TEST(Models, ForwardShapesAnyInputSize) {
  torch::manual_seed(0);
  for (const auto& name : fkd::model_names()) {
    for (auto [c, h, w] : {std::array<int64_t, 3>{1, 28, 28}, std::array<int64_t, 3>{3, 32, 32}}) {
      auto net = fkd::make_model(name, static_cast<int>(c), 7);
      EXPECT_EQ(net->zoo_name(), name);
      EXPECT_EQ(net->in_channels(), c);
      EXPECT_EQ(net->num_classes(), 7);
      auto y = net->forward(torch::randn({2, c, h, w}));
      EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 7})) << name << " " << c << "x" << h;
      EXPECT_EQ(y.scalar_type(), torch::kFloat);
      EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << name;
    }
  }
  // A non-square size that is not a multiple of the network stride.
  for (const char* name : {"tiny", "resnet20"}) {
    auto net = fkd::make_model(name, 3, 5);
    EXPECT_EQ(eval_logits(*net, torch::randn({2, 3, 37, 45})).sizes(), (std::vector<int64_t>{2, 5}))
        << name;
  }
}

TEST(Models, ParameterCountsKnownValues) {
  EXPECT_EQ(fkd::count_parameters(*fkd::make_model("tiny", 1, 10)), 93546);
  EXPECT_EQ(fkd::count_parameters(*fkd::make_model("resnet20", 1, 10)), 272186);
  EXPECT_EQ(fkd::count_parameters(*fkd::make_model("resnet110", 1, 10)), 1730426);
  EXPECT_EQ(fkd::count_parameters(*fkd::make_model("resnet18", 3, 1000)), 11689512);
  EXPECT_EQ(fkd::count_parameters(*fkd::make_model("resnet50", 3, 1000)), 25557032);
  EXPECT_EQ(fkd::count_parameters(*fkd::make_model("mobilenetv2", 3, 1000)), 3504872);
  // Only trainable parameters count.
  auto net = fkd::make_model("tiny", 1, 10);
  for (auto& p : net->parameters()) p.requires_grad_(false);
  EXPECT_EQ(fkd::count_parameters(*net), 0);
}

// Names, shapes and order of every state-dict entry, and the parameter count, equal the
// Python model's (torchvision's for resnet18 / resnet50 / mobilenetv2).
TEST(Models, StateDictMatchesPythonAndTorchvision) {
  std::vector<Spec> specs;
  for (const auto& name : fkd::model_names()) {
    specs.push_back({name, 1, 10});
    if (name == "resnet18" || name == "resnet50" || name == "mobilenetv2" || name == "resnet20")
      specs.push_back({name, 3, 1000});
  }
  std::vector<std::string> args;
  for (const auto& s : specs) args.push_back(s.str());
  const auto py = describe_in_python(args);
  for (const auto& s : specs) {
    SCOPED_TRACE(s.str());
    auto it = py.find(s.str());
    ASSERT_NE(it, py.end());
    auto net = fkd::make_model(s.name, s.in_channels, s.num_classes);
    EXPECT_EQ(fkd::count_parameters(*net), it->second.params);
    const auto sd = fkd::state_dict(*net);
    ASSERT_EQ(sd.size(), it->second.entries.size());
    for (size_t i = 0; i < sd.size(); ++i) {
      EXPECT_EQ(sd[i].first, it->second.entries[i].first) << "entry " << i;
      EXPECT_EQ(shape_str(sd[i].second.sizes()), it->second.entries[i].second) << sd[i].first;
    }
  }
}

// C++ -> Python: save_state_dict_pickle, load_state_dict(strict=True) in Python, same logits.
TEST(Models, StateDictPickleLoadsInPython) {
  TempDir dir;
  const std::vector<Spec> specs{
      {"resnet18", 3, 10}, {"resnet20", 1, 10}, {"tiny", 1, 10}, {"mobilenetv2", 3, 10}};
  std::vector<std::string> args;
  std::vector<torch::Tensor> expected;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    torch::manual_seed(100 + i);
    auto net = fkd::make_model(s.name, s.in_channels, s.num_classes);
    randomize_batchnorm(*net, 200 + i);
    auto x = torch::randn({3, s.in_channels, 32, 32}) * 4;
    expected.push_back(eval_logits(*net, x));
    EXPECT_GT((expected.back()[0] - expected.back()[1]).abs().max().item<double>(), 1e-2);
    const auto tag = s.name + std::to_string(i);
    fkd::save_state_dict_pickle(*net, dir.file(tag + ".sd"));
    save_tensor(x, dir.file(tag + ".in"));
    if (!args.empty()) args.push_back("+");
    for (const auto& a : {std::string("load-sd"), s.name, std::to_string(s.in_channels),
                          std::to_string(s.num_classes), dir.file(tag + ".sd"),
                          dir.file(tag + ".in"), dir.file(tag + ".out")})
      args.push_back(a);
  }
  auto r = run_python("models_run.py", args);
  ASSERT_EQ(r.status, 0) << r.out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const double d = max_abs_diff(load_tensor(dir.file(specs[i].name + std::to_string(i) + ".out")),
                                  expected[i]);
    std::cout << "[ info ] C++ -> Python state dict " << specs[i].str() << ": max |diff| " << d
              << " (max |logit| " << expected[i].abs().max().item<double>() << ")\n";
    EXPECT_LT(d, kTol) << specs[i].str();
  }
}

// Python -> C++: torch.save(dict(model.state_dict())) -> load_state_dict_pickle, same logits.
TEST(Models, StateDictPickleFromPython) {
  TempDir dir;
  const std::vector<Spec> specs{{"resnet18", 3, 10}, {"resnet20", 1, 10}, {"tiny", 1, 10}};
  std::vector<std::string> args;
  std::vector<torch::Tensor> inputs;
  torch::manual_seed(7);
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    inputs.push_back(torch::randn({2, s.in_channels, 28, 28}) * 4);
    const auto tag = s.name + std::to_string(i);
    save_tensor(inputs.back(), dir.file(tag + ".in"));
    if (!args.empty()) args.push_back("+");
    for (const auto& a : {std::string("export-sd"), s.name, std::to_string(s.in_channels),
                          std::to_string(s.num_classes), std::to_string(300 + i),
                          dir.file(tag + ".sd"), dir.file(tag + ".in"), dir.file(tag + ".out")})
      args.push_back(a);
  }
  auto r = run_python("models_run.py", args);
  ASSERT_EQ(r.status, 0) << r.out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    const auto tag = s.name + std::to_string(i);
    auto net = fkd::make_model(s.name, s.in_channels, s.num_classes);
    const auto tensors = fkd::load_state_dict_pickle(dir.file(tag + ".sd"));
    fkd::load_state_dict(*net, tensors, dir.file(tag + ".sd"));
    // Buffers came across too (Python set num_batches_tracked to 7).
    for (const auto& [name, t] : fkd::state_dict(*net))
      if (name.size() > 19 && name.rfind("num_batches_tracked") == name.size() - 19)
        EXPECT_EQ(t.item<int64_t>(), 7) << name;
    const double d =
        max_abs_diff(eval_logits(*net, inputs[i]), load_tensor(dir.file(tag + ".out")));
    std::cout << "[ info ] Python -> C++ state dict " << s.str() << ": max |diff| " << d << "\n";
    EXPECT_LT(d, kTol) << s.str();
  }
}

TEST(Models, LoadStateDictErrors) {
  auto net = fkd::make_model("resnet20", 1, 10);
  auto good = fkd::state_dict(*fkd::make_model("resnet20", 1, 10));
  const auto before = net->named_parameters()["conv1.weight"].clone();

  auto missing = good;
  missing.erase(missing.begin() + 3);
  auto msg =
      error_message<fkd::FormatError>([&] { fkd::load_state_dict(*net, missing, "ckpt.pt"); });
  EXPECT_NE(msg.find("ckpt.pt"), std::string::npos) << msg;
  EXPECT_NE(msg.find(good[3].first), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;

  auto wrong_shape = good;
  for (auto& [name, t] : wrong_shape)
    if (name == "fc.weight") t = torch::zeros({5, 64});
  msg =
      error_message<fkd::FormatError>([&] { fkd::load_state_dict(*net, wrong_shape, "ckpt.pt"); });
  EXPECT_NE(msg.find("fc.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[5, 64]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[10, 64]"), std::string::npos) << msg;

  auto extra = good;
  extra.emplace_back("layer9.weight", torch::zeros({1}));
  msg = error_message<fkd::FormatError>([&] { fkd::load_state_dict(*net, extra, "ckpt.pt"); });
  EXPECT_NE(msg.find("layer9.weight"), std::string::npos) << msg;

  // A failed load changes nothing; a good one copies.
  EXPECT_TRUE(torch::equal(net->named_parameters()["conv1.weight"], before));
  fkd::load_state_dict(*net, good, "ckpt.pt");
  const auto loaded = fkd::state_dict(*net);
  ASSERT_EQ(loaded.size(), good.size());
  for (size_t i = 0; i < good.size(); ++i)
    EXPECT_TRUE(torch::equal(loaded[i].second, good[i].second)) << good[i].first;
}

TEST(Models, LoadStateDictPickleErrors) {
  TempDir dir;
  fkd::test::write_file(dir.file("garbage.pt"), "this is not a pickle at all");
  auto msg =
      error_message<fkd::FormatError>([&] { fkd::load_state_dict_pickle(dir.file("garbage.pt")); });
  EXPECT_NE(msg.find(dir.file("garbage.pt")), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;

  save_tensor(torch::zeros({3}), dir.file("tensor.pt"));
  msg =
      error_message<fkd::FormatError>([&] { fkd::load_state_dict_pickle(dir.file("tensor.pt")); });
  EXPECT_NE(msg.find(dir.file("tensor.pt")), std::string::npos) << msg;

  EXPECT_THROW(fkd::load_state_dict_pickle(dir.file("absent.pt")), fkd::IoError);

  // Round trip in C++.
  auto net = fkd::make_model("tiny", 1, 10);
  fkd::save_state_dict_pickle(*net, dir.file("tiny.pt"));
  const auto loaded = fkd::load_state_dict_pickle(dir.file("tiny.pt"));
  const auto own = fkd::state_dict(*net);
  ASSERT_EQ(loaded.size(), own.size());
  std::map<std::string, torch::Tensor> by_name(loaded.begin(), loaded.end());
  for (const auto& [name, t] : own) EXPECT_TRUE(torch::equal(by_name.at(name), t)) << name;
}

// export_torchscript: Python's torch.jit.load runs it with the C++ eval logits; the archive
// also loads back in C++ as an optimized teacher.
TEST(Models, ExportTorchScriptRunsInPython) {
  TempDir dir;
  const std::vector<Spec> specs{{"resnet20", 1, 10},
                                {"tiny", 1, 10},
                                {"mobilenetv2", 3, 10},
                                {"resnet18", 3, 10},
                                {"resnet50", 3, 10}};
  std::vector<std::string> args;
  std::vector<torch::Tensor> inputs, expected;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    torch::manual_seed(400 + i);
    auto net = fkd::make_model(s.name, s.in_channels, s.num_classes);
    randomize_batchnorm(*net, 500 + i);
    net->train();  // export must give eval semantics regardless of the module's mode
    const auto tag = s.name + std::to_string(i);
    fkd::export_torchscript(*net, dir.file(tag + ".ts"));
    inputs.push_back(torch::randn({2, s.in_channels, 32, 32}) * 4);
    expected.push_back(eval_logits(*net, inputs.back()));
    save_tensor(inputs.back(), dir.file(tag + ".in"));
    if (!args.empty()) args.push_back("+");
    for (const auto& a :
         {std::string("jit"), dir.file(tag + ".ts"), dir.file(tag + ".in"), dir.file(tag + ".out"),
          s.name, std::to_string(s.in_channels), std::to_string(s.num_classes)})
      args.push_back(a);
  }
  auto r = run_python("models_run.py", args);
  ASSERT_EQ(r.status, 0) << r.out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto tag = specs[i].name + std::to_string(i);
    // The logits must depend on the input, or the comparison proves little.
    EXPECT_GT((expected[i][0] - expected[i][1]).abs().max().item<double>(), 1e-2);
    const double d = max_abs_diff(load_tensor(dir.file(tag + ".out")), expected[i]);
    std::cout << "[ info ] export_torchscript " << specs[i].str() << ": max |diff| " << d
              << " (max |logit| " << expected[i].abs().max().item<double>() << ")\n";
    EXPECT_LT(d, kTol) << specs[i].str();
  }
  // The exported archive as a C++ teacher, frozen and optimized. Folding BatchNorm into the
  // convolutions changes rounding (measured up to 3e-5 on mobilenetv2), hence 5e-4 here.
  for (size_t i : {size_t{0}, size_t{2}}) {
    const auto tag = specs[i].name + std::to_string(i);
    auto teacher = fkd::load_torchscript_teacher(dir.file(tag + ".ts"), torch::kCPU, {true});
    const double d = max_abs_diff(teacher->logits(inputs[i]), expected[i]);
    std::cout << "[ info ] exported " << specs[i].str() << " as optimized teacher: max |diff| " << d
              << "\n";
    EXPECT_LT(d, 5e-4) << specs[i].str();
  }
}

TEST(Models, TorchScriptTeacher) {
  TempDir dir;
  auto r = run_python("models_make_teacher.py", {dir.path()});
  ASSERT_EQ(r.status, 0) << r.out;
  const auto x = load_tensor(dir.file("input.pt"));
  const auto expected = load_tensor(dir.file("logits.pt"));
  for (bool optimize : {false, true}) {
    auto teacher = fkd::load_torchscript_teacher(dir.file("teacher.pt"), torch::kCPU, {optimize});
    EXPECT_NE(teacher->describe().find(dir.file("teacher.pt")), std::string::npos);
    auto y = teacher->logits(x);
    EXPECT_EQ(y.scalar_type(), torch::kFloat);
    EXPECT_FALSE(y.requires_grad());
    const double d = max_abs_diff(y, expected);
    std::cout << "[ info ] traced teacher, optimize=" << optimize << ": max |diff| " << d << "\n";
    EXPECT_LT(d, kTol) << "optimize=" << optimize;
  }

  fkd::test::write_file(dir.file("junk.pt"), "not a TorchScript archive");
  auto msg = error_message<fkd::FormatError>(
      [&] { fkd::load_torchscript_teacher(dir.file("junk.pt"), torch::kCPU, {false}); });
  EXPECT_NE(msg.find(dir.file("junk.pt")), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;

  // A zip archive that is a state-dict pickle, not a module.
  fkd::save_state_dict_pickle(*fkd::make_model("tiny", 1, 10), dir.file("sd.pt"));
  msg = error_message<fkd::FormatError>(
      [&] { fkd::load_torchscript_teacher(dir.file("sd.pt"), torch::kCPU, {true}); });
  EXPECT_NE(msg.find(dir.file("sd.pt")), std::string::npos) << msg;
  EXPECT_NE(msg.find("a torch.save() file"), std::string::npos) << msg;
  // PyTorch's own torch.save file (here of a tensor) gets the same advice.
  msg = error_message<fkd::FormatError>(
      [&] { fkd::load_torchscript_teacher(dir.file("input.pt"), torch::kCPU, {true}); });
  EXPECT_NE(msg.find("torch.jit.trace(model.eval(), example_input).save(path)"), std::string::npos)
      << msg;

  EXPECT_THROW(fkd::load_torchscript_teacher(dir.file("absent.pt"), torch::kCPU, {false}),
               fkd::IoError);
}

TEST(Models, ZooTeacher) {
  torch::manual_seed(11);
  auto net = fkd::make_model("resnet20", 1, 10);
  randomize_batchnorm(*net, 12);
  const auto x = torch::randn({4, 1, 28, 28});
  const auto expected = eval_logits(*net, x);
  net->train();
  auto teacher = fkd::make_zoo_teacher(net, torch::kCPU);
  EXPECT_FALSE(net->is_training());
  EXPECT_NE(teacher->describe().find("resnet20"), std::string::npos);
  auto y = teacher->logits(x);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(torch::equal(y, expected));
  EXPECT_THROW(fkd::make_zoo_teacher(nullptr, torch::kCPU), fkd::ConfigError);
}

}  // namespace
