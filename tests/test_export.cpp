// The ONNX export: int8 arithmetic against plain integer loops, every supported operator
// against the TorchScript module it came from (PyTorch made them: tests/py/edge_ops.py),
// refusals, and `fkd export` / `fkd eval` on a trained checkpoint end to end.
#include <gtest/gtest.h>
#include <algorithm>

#include <filesystem>
#include <fstream>
#include <regex>

#include <torch/script.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "export/graph_walk.h"
#include "export/int8_kernels.h"
#include "export/onnx_build.h"
#include "export/onnx_runner.h"
#include "export/quantize.h"
#include "fkd/edge.h"
#include "fkd/error.h"
#include "fkd/train.h"
#include "testutil.h"

namespace fs = std::filesystem;
using fkd::test::error_message;
using fkd::test::TempDir;
using namespace fkd::edge;

namespace {

std::string fkd_bin() { return std::string(FKD_BINARY_DIR) + "/fkd"; }

fkd::test::CommandResult run_fkd(const std::string& args) {
  return fkd::test::run_command("FKD_PROGRESS=off OMP_WAIT_POLICY=passive " + fkd_bin() + " " +
                                args + " 2>&1");
}

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-12);
}

// --- int8 arithmetic --------------------------------------------------------------------

TEST(Int8, ActivationRangesHoldZeroExactly) {
  const QParams relu = activation_params(0.0f, 6.0f);
  EXPECT_EQ(relu.zero_point, -128);  // a folded ReLU clamps at q = -128, which is 0
  EXPECT_FLOAT_EQ(relu.scale, 6.0f / 255.0f);
  // A range without 0 is widened to hold it.
  EXPECT_EQ(activation_params(0.5f, 2.0f).zero_point, -128);
  EXPECT_EQ(activation_params(-4.0f, -1.0f).zero_point, 127);
  // The int8 ends reach the range's ends within half a step.
  const QParams p = activation_params(-1.3f, 2.9f);
  EXPECT_NEAR(p.scale * float(-128 - p.zero_point), -1.3f, p.scale / 2);
  EXPECT_NEAR(p.scale * float(127 - p.zero_point), 2.9f, p.scale / 2);
  EXPECT_EQ(activation_params(0, 0), (QParams{1.0f, 0}));
}

TEST(Int8, WeightsAreSymmetricPerOutputChannel) {
  // Two channels of 3 values: max |w| 2 and 0.5.
  const std::vector<float> w{1.0f, -2.0f, 0.5f, 0.25f, -0.5f, 0.1f};
  const QuantizedWeights pc = quantize_weights(w, {2, 3}, /*per_channel=*/true);
  ASSERT_EQ(pc.scales.size(), 2u);
  EXPECT_FLOAT_EQ(pc.scales[0], 2.0f / 127);
  EXPECT_FLOAT_EQ(pc.scales[1], 0.5f / 127);
  EXPECT_EQ(pc.values, (std::vector<int8_t>{64, -127, 32, 64, -127, 25}));
  const QuantizedWeights pt = quantize_weights(w, {2, 3}, /*per_channel=*/false);
  ASSERT_EQ(pt.scales.size(), 1u);
  EXPECT_EQ(pt.values, (std::vector<int8_t>{64, -127, 32, 16, -32, 6}));
  // A channel of zeros gets scale 1 (any scale represents it).
  EXPECT_EQ(quantize_weights({0, 0, 1, 1}, {2, 2}, true).scales[0], 1.0f);
}

TEST(Int8, BiasIsInt32AtInputTimesWeightScale) {
  QuantizedLayer l;
  l.input = {0.5f, 3};
  l.weight = quantize_weights({1.0f, -2.0f}, {2, 1}, true);
  EXPECT_EQ(l.bias_scale(1), 0.5f * (2.0f / 127));
  const auto q = quantize_bias(l, {1.0f, -3.0f});
  EXPECT_EQ(q[0], int32_t(std::nearbyint(1.0 / (0.5 * (1.0 / 127)))));
  EXPECT_EQ(q[1], int32_t(std::nearbyint(-3.0 / double(0.5f * (2.0f / 127)))));
  l.output = {0.25f, 0};
  EXPECT_EQ(l.multiplier(0), (0.5f * (1.0f / 127)) / 0.25f);
}

TEST(Int8, RequantizeRoundsHalfToEvenAndSaturates) {
  const auto acc = torch::tensor({1, 3, 5, -1, -3, 7, 1000, -1000}, torch::kInt64);
  const auto m = torch::tensor({0.5f});
  const auto q = requantize(acc, m, 0);
  EXPECT_TRUE(torch::equal(q.to(torch::kInt32),
                           torch::tensor({0, 2, 2, 0, -2, 4, 127, -128}, torch::kInt32)))
      << q;
  // With a zero point, saturation is around it: 1000 * 0.5 + 10 -> 127.
  const auto z = requantize(torch::tensor({4, 1000, -1000}, torch::kInt64), m, 10);
  EXPECT_TRUE(torch::equal(z.to(torch::kInt32), torch::tensor({12, 127, -128}, torch::kInt32)));
}

/// The conv of int8 tensors as plain integer loops: the oracle of the int8 kernel.
std::vector<int32_t> conv_loops(const std::vector<int8_t>& x, int n, int c, int h, int w,
                                const QuantizedLayer& l, int oh, int ow) {
  const auto& ws = l.weight.shape;
  const int o = int(ws[0]), cg = int(ws[1]), kh = int(ws[2]), kw = int(ws[3]);
  const int og = o / int(l.group);
  std::vector<int32_t> out(size_t(n * o * oh * ow));
  for (int b = 0; b < n; ++b)
    for (int oc = 0; oc < o; ++oc)
      for (int y = 0; y < oh; ++y)
        for (int xx = 0; xx < ow; ++xx) {
          int32_t acc = l.bias.empty() ? 0 : l.bias[size_t(oc)];
          const int g = oc / og;
          for (int ic = 0; ic < cg; ++ic)
            for (int i = 0; i < kh; ++i)
              for (int j = 0; j < kw; ++j) {
                const int yy = y * int(l.strides[0]) - int(l.pads[0]) + i * int(l.dilations[0]);
                const int xi = xx * int(l.strides[1]) - int(l.pads[1]) + j * int(l.dilations[1]);
                const int ch = g * cg + ic;
                const int32_t v =
                    yy < 0 || yy >= h || xi < 0 || xi >= w
                        ? 0
                        : int32_t(x[size_t(((b * c + ch) * h + yy) * w + xi)]) - l.input.zero_point;
                acc += v * l.weight.values[size_t(((oc * cg + ic) * kh + i) * kw + j)];
              }
          out[size_t(((b * o + oc) * oh + y) * ow + xx)] = acc;
        }
  return out;
}

TEST(Int8, IntegerConvEqualsIntegerLoops) {
  torch::manual_seed(3);
  QuantizedLayer l;
  l.op = "Conv";
  l.input = {0.02f, -7};
  l.output = {0.05f, 4};
  l.group = 2;
  l.strides = {2, 1};
  l.pads = {1, 2, 1, 2};
  l.dilations = {1, 2};
  const auto wf = torch::randn({6, 2, 3, 3});
  l.weight = quantize_weights(std::vector<float>(wf.data_ptr<float>(), wf.data_ptr<float>() + 108),
                              {6, 2, 3, 3}, true);
  l.bias = {100, -200, 0, 5, 70000, -3};
  const auto xq = torch::randint(-128, 128, {2, 4, 7, 9}).to(torch::kInt8);
  const PreparedLayer p = prepare_layer(l);
  const auto got = run_integer_layer(p, xq);
  const int oh = got.size(2), ow = got.size(3);
  const std::vector<int8_t> xv(xq.data_ptr<int8_t>(), xq.data_ptr<int8_t>() + xq.numel());
  const auto acc = conv_loops(xv, 2, 4, 7, 9, l, oh, ow);
  const auto acc_t = torch::tensor(acc, torch::kInt64).reshape({2, 6, oh, ow});
  EXPECT_TRUE(torch::equal(got, requantize(acc_t, p.multipliers, l.output.zero_point)));
  // And the requantization itself, element by element in float as onnxruntime does.
  for (int i = 0; i < 50; ++i) {
    const int64_t idx = i * 7;
    const int oc = int((idx / (oh * ow)) % 6);
    float v = float(acc[size_t(idx)]) * l.multiplier(oc);
    v = std::min(std::max(v, float(-128 - 4)), float(127 - 4));
    EXPECT_EQ(int(got.reshape({-1})[idx].item<int8_t>()), int(std::nearbyint(v)) + 4) << idx;
  }
}

TEST(Int8, QuantizeLinearFollowsOnnx) {
  const auto x = torch::tensor({0.25f, 0.75f, -0.25f, 100.0f, -100.0f});
  const auto q = quantize_linear(x, torch::tensor(0.5f), torch::tensor(int8_t(1), torch::kInt8), 1);
  // 0.5 -> 0 (half to even) + 1; 1.5 -> 2 + 1; -0.5 -> 0 + 1; saturated.
  EXPECT_TRUE(
      torch::equal(q.to(torch::kInt32), torch::tensor({1, 3, 1, 127, -128}, torch::kInt32)));
  const auto d =
      dequantize_linear(q, torch::tensor(0.5f), torch::tensor(int8_t(1), torch::kInt8), 1);
  EXPECT_TRUE(torch::allclose(d, torch::tensor({0.0f, 1.0f, 0.0f, 63.0f, -64.5f})));
}

// --- every operator against its TorchScript module ---------------------------------------

class OpCases : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const auto r = fkd::test::run_python("edge_ops.py", {"cases", dir_->path()});
    ASSERT_EQ(r.status, 0) << r.out;
    std::istringstream lines(r.out);
    for (std::string name; std::getline(lines, name);) names_.push_back(name);
  }
  static void TearDownTestSuite() { delete dir_; }

  static torch::jit::Module frozen(const std::string& name) {
    torch::jit::Module m = torch::jit::load(dir_->file(name + ".pt"));
    m.eval();
    return torch::jit::freeze(m);
  }

  static TempDir* dir_;
  static std::vector<std::string> names_;
};
TempDir* OpCases::dir_ = nullptr;
std::vector<std::string> OpCases::names_;

std::set<std::string> op_types(const onnx::ModelProto& m) {
  std::set<std::string> ops;
  for (const auto& n : m.graph().node()) ops.insert(n.op_type());
  return ops;
}

TEST_F(OpCases, EachConvertsToWhatTheModuleComputes) {
  ASSERT_GE(names_.size(), 15u);
  const std::vector<int64_t> shape{2, 3, 8, 8};
  for (const auto& name : names_) {
    if (name.rfind("refuse_", 0) == 0) continue;
    SCOPED_TRACE(name);
    torch::manual_seed(1);
    const auto x = torch::randn(shape);
    torch::jit::Module m = frozen(name);
    const auto want = m.forward({x}).toTensor();
    WalkOptions o;
    o.input_shape = shape;
    WalkResult w = walk_graph(m, x, o);  // checked and shape-inferred inside
    const auto got = make_onnx_model(w.model, name)->forward(x);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT(relative_error(got, want), 1e-5);
    // A batch of another size: no shape of the file depends on the batch (Reshape keeps it).
    const auto x5 = torch::randn({5, 3, 8, 8});
    if (name != "view_matmul_addmm" && name != "linear_3d_layer_norm")
      EXPECT_LT(
          relative_error(make_onnx_model(w.model, name)->forward(x5), m.forward({x5}).toTensor()),
          1e-5);
  }
}

TEST_F(OpCases, OpsBecomeTheStatedOnnxOperators) {
  const std::vector<int64_t> shape{2, 3, 8, 8};
  auto ops = [&](const std::string& name) {
    torch::jit::Module m = frozen(name);
    WalkOptions o;
    o.input_shape = shape;
    return op_types(walk_graph(m, torch::randn(shape), o).model);
  };
  EXPECT_EQ(ops("hardswish_hardsigmoid"), (std::set<std::string>{"HardSigmoid", "Mul"}));
  EXPECT_EQ(ops("relu6_hardtanh"), (std::set<std::string>{"Clip", "Add"}));
  EXPECT_TRUE(ops("gelu_erf_tanh").count("Erf"));
  EXPECT_EQ(ops("batch_norm_alone"), (std::set<std::string>{"Relu", "Mul", "Add"}));
  EXPECT_EQ(ops("mean_flatten_linear"),
            (std::set<std::string>{"GlobalAveragePool", "Flatten", "Gemm"}));
  EXPECT_EQ(ops("dropout_contiguous"), (std::set<std::string>{"Identity"}));
  EXPECT_EQ(ops("static_branch_loop"), (std::set<std::string>{"Mul", "Add", "Relu"}));
}

TEST_F(OpCases, RefusalsNameTheOperatorAndWhereItIs) {
  const std::vector<int64_t> shape{2, 3, 8, 8};
  auto refusal = [&](const std::string& name) {
    torch::jit::Module m = frozen(name);
    WalkOptions o;
    o.input_shape = shape;
    const std::string msg =
        error_message<fkd::ConfigError>([&] { walk_graph(m, torch::randn(shape), o); });
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  };
  const std::string cumsum = refusal("refuse_cumsum");
  EXPECT_NE(cumsum.find("unsupported operator aten::cumsum at"), std::string::npos) << cumsum;
  EXPECT_TRUE(std::regex_search(cumsum, std::regex("edge_case_[0-9]+\\.py:[0-9]+\\)"))) << cumsum;
  const std::string branch = refusal("refuse_data_branch");
  EXPECT_NE(branch.find("dynamic control flow"), std::string::npos) << branch;
  const std::string tuple = refusal("refuse_tuple");
  EXPECT_NE(tuple.find("returns a tuple or list, expected a logits tensor"), std::string::npos)
      << tuple;
}

TEST_F(OpCases, Int8OfEachOpRunsItsLayersInIntegers) {
  const std::vector<int64_t> shape{2, 3, 8, 8};
  for (const auto& name : names_) {
    if (name.rfind("refuse_", 0) == 0 || name == "dropout_contiguous") continue;
    SCOPED_TRACE(name);
    torch::manual_seed(2);
    torch::jit::Module m = frozen(name);
    WalkOptions o;
    o.input_shape = shape;
    const auto calib = torch::randn({32, 3, 8, 8});
    WalkResult w = walk_graph(m, calib.narrow(0, 0, 2), o);
    const auto fp32 = make_onnx_model(w.model, name);
    const QuantLayout layout = quant_layout(w.model, w.ops);
    std::set<std::string> names;
    for (const auto& p : layout.points)
      if (!layout.same_as.count(p)) names.insert(p);
    const auto ranges = calibrate_ranges(*fp32, "input", calib, names, "minmax", 100);
    const QuantPlan plan = make_quant_plan(w.model, w.ops, layout, ranges, true);
    onnx::ModelProto q = write_qdq(w.model, w.ops, layout, plan);
    check_model(q, name);
    const auto int8 = make_onnx_model(q, name);
    EXPECT_EQ(int8->integer_layers(), plan.layers.size());
    EXPECT_TRUE(int8->quantized());
    // 8 bits over the calibrated range: within a few steps of the float result.
    const auto want = fp32->forward(calib), got = int8->forward(calib);
    const double range = (want.max() - want.min()).item<double>();
    EXPECT_LT((got - want).abs().mean().item<double>(), 0.05 * range);
  }
}

TEST_F(OpCases, PercentileRangesClipOutliersThatMinMaxKeeps) {
  // The input's range over a calibration set of values in [0, 1) with one outlier at 1000:
  // minmax stretches to the outlier; percentile (99.9) keeps the bins that hold the mass.
  const std::string name = *std::find_if(names_.begin(), names_.end(), [](const auto& n) {
    return n.rfind("refuse_", 0) != 0 && n != "dropout_contiguous";
  });
  torch::manual_seed(3);
  torch::jit::Module m = frozen(name);
  WalkOptions o;
  o.input_shape = {2, 3, 8, 8};
  auto calib = torch::rand({32, 3, 8, 8});
  calib[5][1][2][3] = 1000.0f;
  WalkResult w = walk_graph(m, calib.narrow(0, 0, 2), o);
  const auto fp32 = make_onnx_model(w.model, name);
  const auto minmax = calibrate_ranges(*fp32, "input", calib, {"input"}, "minmax", 99.9);
  const auto pct = calibrate_ranges(*fp32, "input", calib, {"input"}, "percentile", 99.9);
  ASSERT_EQ(minmax.count("input"), 1u);
  ASSERT_EQ(pct.count("input"), 1u);
  EXPECT_FLOAT_EQ(minmax.at("input").second, 1000.0f);
  EXPECT_GE(minmax.at("input").first, 0.0f);
  // 2048 bins of 1000/2048 over [min, 1000]: [0, 1) ends in the third bin.
  const float width = (1000.0f - minmax.at("input").first) / 2048;
  EXPECT_FLOAT_EQ(pct.at("input").first, minmax.at("input").first);
  EXPECT_GE(pct.at("input").second, 1.0f);
  EXPECT_LE(pct.at("input").second, minmax.at("input").first + 3 * width + 1e-4f);
}

TEST(Quantize, ReluAfterConvFoldsIntoItsRange) {
  // The student of edge_ops.py: its stem is Conv + BN + ReLU6, whose Clip disappears into
  // the conv's output range.
  TempDir d;
  const std::string student = d.file("s.pt");
  ASSERT_EQ(fkd::test::run_python("edge_ops.py", {"student", student, "1", "10"}).status, 0);
  torch::jit::Module s = torch::jit::load(student);
  s.eval();
  torch::jit::Module f = torch::jit::freeze(s);
  WalkOptions o;
  o.input_shape = {1, 1, 28, 28};
  const auto calib = torch::randn({16, 1, 28, 28});
  WalkResult w = walk_graph(f, calib.narrow(0, 0, 1), o);
  const QuantLayout layout = quant_layout(w.model, w.ops);
  EXPECT_GE(layout.folded.size(), 1u);
  std::set<std::string> names(layout.points.begin(), layout.points.end());
  const auto ranges =
      calibrate_ranges(*make_onnx_model(w.model, "s"), "input", calib, names, "minmax", 100);
  const QuantPlan plan = make_quant_plan(w.model, w.ops, layout, ranges, true);
  const onnx::ModelProto q = write_qdq(w.model, w.ops, layout, plan);
  // The stem's ReLU6 (Clip) and the squeeze-excitation's Relu follow convolutions: both
  // fold.
  auto activations = [](const onnx::ModelProto& m) {
    size_t n = 0;
    for (const auto& node : m.graph().node())
      n += node.op_type() == "Clip" || node.op_type() == "Relu";
    return n;
  };
  EXPECT_EQ(layout.folded.size(), 2u);
  EXPECT_EQ(activations(w.model), 2u);
  EXPECT_EQ(activations(q), 0u);
  for (const auto& [act, layer] : plan.folded) {
    const QParams out = plan.layers.at(layer).output;
    EXPECT_EQ(out.zero_point, -128) << act;           // the range starts at 0
    EXPECT_LE(out.scale * 255, 6.0f + 1e-5f) << act;  // and ends at most at 6
  }
}

// --- checkpoints end to end --------------------------------------------------------------

/// A tiny student trained for one epoch on 1,500 Fashion-MNIST images, made once for all the
/// test processes of a build (ctest runs each test alone): trained in a temporary directory
/// and renamed into place, so concurrent tests never see half a run.
class Checkpoint : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (fs::exists(ckpt())) return;
    TempDir tmp;
    fkd::TrainConfig c;
    c.model = "tiny";
    c.epochs = 1;
    c.limit_train = 1500;
    c.limit_val = 200;
    c.threads = 2;
    c.out = tmp.file("run");
    fkd::train(c);
    std::error_code ec;  // another test process may have won the race: its run is as good
    fs::rename(c.out, fixture_dir(), ec);
  }
  static std::string fixture_dir() {
    return std::string(FKD_BINARY_DIR) + "/tests/export-fixture-1";
  }
  static std::string ckpt() { return fixture_dir() + "/checkpoint.pt"; }
};

fkd::OnnxExportOptions options(const std::string& out) {
  fkd::OnnxExportOptions o;
  o.checkpoint = std::string();
  o.out = out;
  o.threads = 2;
  return o;
}

std::vector<float> floats(const std::string& path) {
  const std::string bytes = fkd::test::read_file(path);
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

TEST_F(Checkpoint, ExportsFloatInt8AndCalibrationDeterministically) {
  TempDir d;
  fkd::OnnxExportOptions o = options(d.file("tiny.onnx"));
  o.checkpoint = ckpt();
  o.int8 = true;
  o.calibration = 40;
  const auto r = fkd::export_onnx(o);
  EXPECT_EQ(r.files, (std::vector<std::string>{d.file("tiny.calibration.f32"),
                                               d.file("tiny.calibration.json"), d.file("tiny.onnx"),
                                               d.file("tiny.int8.onnx")}));
  EXPECT_EQ(r.calibration, 40u);
  EXPECT_LT(r.max_relative_error, 1e-5);
  EXPECT_EQ(fs::file_size(d.file("tiny.calibration.f32")), 40u * 28 * 28 * 4);
  const auto j = nlohmann::json::parse(fkd::test::read_file(d.file("tiny.calibration.json")));
  EXPECT_EQ(j["shape"], nlohmann::json({40, 1, 28, 28}));
  EXPECT_EQ(j["file"], "tiny.calibration.f32");
  EXPECT_EQ(j["source"], "train-split");
  EXPECT_EQ(j["samples"].size(), 40u);

  // The same command again writes the same bytes.
  std::map<std::string, std::string> first;
  for (const auto& f : r.files) first[f] = fkd::test::read_file(f);
  fkd::export_onnx(o);
  for (const auto& f : r.files) EXPECT_EQ(fkd::test::read_file(f), first[f]) << f;

  // The float file is opset 13 with a static 1x1x28x28 input and BatchNorm folded away.
  const onnx::ModelProto m = read_model(d.file("tiny.onnx"));
  EXPECT_EQ(m.opset_import(0).version(), 13);
  const auto& dims = m.graph().input(0).type().tensor_type().shape().dim();
  ASSERT_EQ(dims.size(), 4);
  EXPECT_EQ(dims[0].dim_value(), 1);
  EXPECT_EQ(dims[3].dim_value(), 28);
  const auto ops = op_types(m);
  EXPECT_FALSE(ops.count("BatchNormalization"));
  EXPECT_TRUE(ops.count("Conv") && ops.count("Gemm"));
  // The int8 file: weights int8 per channel, an integer kernel for every Conv and Gemm.
  const onnx::ModelProto q = read_model(d.file("tiny.int8.onnx"));
  EXPECT_TRUE(op_types(q).count("QuantizeLinear"));
  EXPECT_FALSE(op_types(q).count("Relu"));  // folded into the conv ranges
  EXPECT_EQ(OnnxModel::open(d.file("tiny.int8.onnx"))->integer_layers(), 5u);
  EXPECT_NE(metadata(q, "fkd.quantization").find("per output channel"), std::string::npos);
}

TEST_F(Checkpoint, EvalOfTheFilesAgreesWithTheCheckpoint) {
  TempDir d;
  fkd::OnnxExportOptions o = options(d.file("m.onnx"));
  o.checkpoint = ckpt();
  o.int8 = true;
  o.calibration = 64;
  fkd::export_onnx(o);
  fkd::EvalOptions e;
  e.limit = 300;
  e.threads = 2;
  e.save_logits = d.file("ckpt.f32");
  e.save_inputs = d.file("x.f32");
  const auto base = fkd::evaluate_file(ckpt(), e);
  e.save_inputs.clear();
  e.save_logits = d.file("fp32.f32");
  const auto fp32 = fkd::evaluate_onnx_file(d.file("m.onnx"), e);
  e.save_logits = d.file("int8.f32");
  const auto int8 = fkd::evaluate_onnx_file(d.file("m.int8.onnx"), e);
  EXPECT_EQ(fp32.samples, 300u);
  EXPECT_NEAR(fp32.top1, base.top1, 0.34);  // at most one image on a near tie
  const auto a = torch::tensor(floats(d.file("ckpt.f32"))).reshape({300, 10});
  const auto b = torch::tensor(floats(d.file("fp32.f32"))).reshape({300, 10});
  const auto c = torch::tensor(floats(d.file("int8.f32"))).reshape({300, 10});
  EXPECT_LT(relative_error(b, a), 1e-4);
  EXPECT_GT(c.argmax(1).eq(a.argmax(1)).to(torch::kFloat).mean().item<float>(), 0.9);
  EXPECT_NEAR(int8.top1, base.top1, 5.0);
  // The inputs file: what the model took, with the labels beside it.
  const auto j = nlohmann::json::parse(fkd::test::read_file(d.file("x.f32.json")));
  EXPECT_EQ(j["shape"], nlohmann::json({300, 1, 28, 28}));
  EXPECT_EQ(j["labels"].size(), 300u);
  EXPECT_EQ(j["file"], "x.f32");
  EXPECT_EQ(fs::file_size(d.file("x.f32")), 300u * 784 * 4);
}

TEST_F(Checkpoint, NormalizeInsideTakesRawPixels) {
  TempDir d;
  fkd::OnnxExportOptions o = options(d.file("raw.onnx"));
  o.checkpoint = ckpt();
  o.normalize_inside = true;
  o.calibration = 8;
  o.batch = "N";
  fkd::export_onnx(o);
  const auto calib = torch::tensor(floats(d.file("raw.calibration.f32")));
  EXPECT_TRUE(torch::equal(calib, calib.round()));
  EXPECT_GE(calib.min().item<float>(), 0);
  EXPECT_LE(calib.max().item<float>(), 255);
  EXPECT_GT(calib.max().item<float>(), 100);
  const onnx::ModelProto m = read_model(d.file("raw.onnx"));
  EXPECT_EQ(m.graph().input(0).type().tensor_type().shape().dim(0).dim_param(), "N");
  // int8: the pixels themselves are the first int8 tensor, scale 1, zero point -128.
  o.int8 = true;
  o.out = d.file("raw8.onnx");
  fkd::export_onnx(o);
  const onnx::ModelProto q = read_model(d.file("raw8.int8.onnx"));
  size_t found = 0;
  for (const auto& init : q.graph().initializer()) {
    if (init.name() == "input/scale") {
      EXPECT_EQ(from_proto(init, "q").item<float>(), 1.0f);
      ++found;
    }
    if (init.name() == "input/zero_point") {
      EXPECT_EQ(from_proto(init, "q").item<int8_t>(), -128);
      ++found;
    }
  }
  EXPECT_EQ(found, 2u);
  fkd::EvalOptions e;
  e.limit = 100;
  e.threads = 2;
  e.save_logits = d.file("a.f32");
  fkd::evaluate_file(ckpt(), e);
  e.save_logits = d.file("b.f32");
  e.save_inputs = d.file("x.f32");
  fkd::evaluate_onnx_file(d.file("raw.onnx"), e);
  EXPECT_LT(relative_error(torch::tensor(floats(d.file("b.f32"))),
                           torch::tensor(floats(d.file("a.f32")))),
            1e-4);
  const auto x = torch::tensor(floats(d.file("x.f32")));
  EXPECT_TRUE(torch::equal(x, x.round()));  // the model's input: pixels
}

TEST_F(Checkpoint, PerTensorWeightsHaveOneScalePerLayer) {
  TempDir d;
  fkd::OnnxExportOptions o = options(d.file("pt.onnx"));
  o.checkpoint = ckpt();
  o.int8 = true;
  o.calibration = 16;
  o.per_tensor_weights = true;
  o.method = "minmax";
  fkd::export_onnx(o);
  const onnx::ModelProto q = read_model(d.file("pt.int8.onnx"));
  size_t weight_dqs = 0;
  for (const auto& n : q.graph().node()) {
    if (n.op_type() != "DequantizeLinear" || n.name().find("/weight/") == std::string::npos)
      continue;
    ++weight_dqs;
    for (const auto& init : q.graph().initializer())
      if (init.name() == n.input(1)) EXPECT_EQ(init.dims_size(), 0) << n.name();
  }
  EXPECT_EQ(weight_dqs, 5u);
  EXPECT_EQ(OnnxModel::open(d.file("pt.int8.onnx"))->integer_layers(), 5u);
}

TEST_F(Checkpoint, CalibrationFromALabelStoreUsesItsCrops) {
  TempDir d;
  const std::string store = d.file("labels");
  const auto l = run_fkd("label --teacher " + ckpt() + " --limit 120 --crops 3 --out " + store +
                         " --threads 2");
  // The store labels a subset of 120 images; the run trained on 1500: the calibration draws
  // from the store's subset.
  ASSERT_EQ(l.status, 0) << l.out;
  fkd::OnnxExportOptions o = options(d.file("s.onnx"));
  o.checkpoint = ckpt();
  o.calibration = 30;
  o.labels = store;
  const auto r = fkd::export_onnx(o);
  EXPECT_NE(r.calibration_source.find("label store"), std::string::npos);
  const auto j = nlohmann::json::parse(fkd::test::read_file(d.file("s.calibration.json")));
  EXPECT_EQ(j["source"], "label-store");
  for (const auto& s : j["samples"]) {
    EXPECT_LT(s["index"].get<int>(), 120);
    EXPECT_LT(s["crop"].get<int>(), 3);
    EXPECT_EQ(s["box"].size(), 4u);
  }
  // Another seed draws other crops.
  o.seed = 5;
  o.out = d.file("s5.onnx");
  fkd::export_onnx(o);
  EXPECT_NE(fkd::test::read_file(d.file("s5.calibration.f32")),
            fkd::test::read_file(d.file("s.calibration.f32")));
}

TEST_F(Checkpoint, FailuresAreOneLineAndWriteNothing) {
  TempDir d;
  // Not a model.
  fkd::test::write_file(d.file("notes.txt"), "hello");
  fkd::OnnxExportOptions o = options(d.file("x.onnx"));
  o.checkpoint = d.file("notes.txt");
  const std::string msg = error_message<fkd::FormatError>([&] { fkd::export_onnx(o); });
  EXPECT_NE(msg.find(d.file("notes.txt")), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_EQ(fkd::test::list_dir(d.path()), (std::vector<std::string>{"notes.txt"}));

  // A full disk: the first file fails, none of them changes, no temporary file stays.
  o.checkpoint = ckpt();
  o.int8 = true;
  o.calibration = 16;
  fkd::test::write_file(d.file("x.onnx"), "old");
  {
    fkd::test::FileSizeLimit limit(4096);
    const std::string full = error_message<fkd::IoError>([&] { fkd::export_onnx(o); });
    EXPECT_NE(full.find("File too large"), std::string::npos) << full;
  }
  EXPECT_EQ(fkd::test::read_file(d.file("x.onnx")), "old");
  EXPECT_EQ(fkd::test::list_dir(d.path()), (std::vector<std::string>{"notes.txt", "x.onnx"}));
}

TEST(ExportCommand, UnsupportedOperatorIsOneLineNamingItAndWritesNothing) {
  TempDir d;
  const std::string student = d.file("cumsum.pt"), run = d.file("run");
  ASSERT_EQ(fkd::test::run_python("edge_ops.py", {"refusing-student", student, "1", "10"}).status,
            0);
  const auto t = run_fkd("train --model " + student +
                         " --epochs 1 --limit-train 64 --batch-size 64 --limit-val 64 --threads 2"
                         " --out " +
                         run);
  ASSERT_EQ(t.status, 0) << t.out;
  const std::string out = d.file("out/m.onnx");
  fs::create_directory(d.file("out"));
  const auto r = run_fkd("export " + run + "/checkpoint.pt " + out + " --int8 --calibration 8");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find("unsupported operator aten::cumsum at"), std::string::npos) << r.out;
  EXPECT_TRUE(fkd::test::list_dir(d.file("out")).empty());
}

TEST(ExportCommand, EvalRefusesWhatIsNotAnFkdOnnxModel) {
  TempDir d;
  fkd::test::write_file(d.file("notes.onnx"), "not a model");
  const auto r = run_fkd("eval " + d.file("notes.onnx") + " --limit 10");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "fkd: error: " + d.file("notes.onnx") +
                       ": not an ONNX model (no ModelProto with a graph)\n");
  // An ONNX model without fkd's metadata: its input transform is unknown.
  onnx::ModelProto m;
  m.set_ir_version(7);
  m.add_opset_import()->set_version(13);
  onnx::GraphProto& g = *m.mutable_graph();
  g.set_name("g");
  set_float_value_info(*g.add_input(), "x", {1, 1, 28, 28});
  set_float_value_info(*g.add_output(), "y", {1, 784});
  auto* n = g.add_node();
  n->set_op_type("Flatten");
  n->add_input("x");
  n->add_output("y");
  fkd::test::write_file(d.file("bare.onnx"), serialize_model(m, "bare"));
  const auto b = run_fkd("eval " + d.file("bare.onnx") + " --limit 10");
  EXPECT_EQ(b.status, 1);
  EXPECT_NE(b.out.find("no fkd.input metadata"), std::string::npos) << b.out;
}

TEST_F(Checkpoint, CommandLineRefusesBadFlagsBeforeWork) {
  TempDir d;
  const std::string out = d.file("m.onnx");
  for (const std::string& flags :
       {std::string("--percentile 30"), std::string("--calibration-method kl"),
        std::string("--per-tensor-weights"), std::string("--format torchscript --int8"),
        std::string("--calibration 0")}) {
    const auto r = run_fkd("export " + ckpt() + " " + out + " " + flags);
    EXPECT_EQ(r.status, 2) << flags << ": " << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  }
  EXPECT_TRUE(fkd::test::list_dir(d.path()).empty());
  const auto ok = run_fkd("export " + ckpt() + " " + out + " --int8 --calibration 16");
  ASSERT_EQ(ok.status, 0) << ok.out;
  EXPECT_NE(ok.out.find("wrote " + d.file("m.int8.onnx")), std::string::npos) << ok.out;
  const auto ev = run_fkd("eval " + d.file("m.int8.onnx") + " --limit 50");
  EXPECT_EQ(ev.status, 0) << ev.out;
  EXPECT_NE(ev.out.find("50 images"), std::string::npos) << ev.out;
}

}  // namespace
