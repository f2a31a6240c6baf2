// fkd's evaluator of ONNX files (onnx_model.h): each node becomes a closure over LibTorch
// ops, prepared once; int8 Conv/Gemm between Q/DQ nodes run in integer arithmetic.
#include "export/onnx_runner.h"

#include <unordered_map>
#include <unordered_set>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "export/int8_kernels.h"
#include "export/onnx_build.h"
#include "fkd/error.h"

namespace fkd::edge {
namespace {

using Inputs = std::vector<torch::Tensor>;
using OpFn = std::function<torch::Tensor(const Inputs&)>;

/// Where a node is, for messages: "model.onnx: node 'layer1.0/Conv' (Conv)".
std::string node_label(const std::string& source, const onnx::NodeProto& n) {
  return fmt::format("{}: node '{}' ({})", source, n.name(), n.op_type());
}

std::vector<int64_t> spatial(const onnx::NodeProto& n, const char* name, int64_t fill) {
  return attr_ints(n, name, {fill, fill});
}

/// ONNX pads [top, left, bottom, right] as torch's symmetric padding, or as an explicit pad.
struct Pads {
  std::vector<int64_t> sym{0, 0};
  std::vector<int64_t> explicit_pad;  ///< constant_pad_nd order (left, right, top, bottom)
};
Pads split_pads(const onnx::NodeProto& n) {
  const auto p = attr_ints(n, "pads", {0, 0, 0, 0});
  Pads r;
  if (p.size() == 4 && p[0] == p[2] && p[1] == p[3]) {
    r.sym = {p[0], p[1]};
  } else if (p.size() == 4) {
    r.explicit_pad = {p[1], p[3], p[0], p[2]};
  }
  return r;
}

OpFn make_conv(const onnx::NodeProto& n) {
  const auto strides = spatial(n, "strides", 1), dilations = spatial(n, "dilations", 1);
  const int64_t group = attr_int(n, "group", 1);
  const Pads pads = split_pads(n);
  return [=](const Inputs& in) {
    torch::Tensor x = in[0];
    if (!pads.explicit_pad.empty()) x = torch::constant_pad_nd(x, pads.explicit_pad, 0.0);
    const torch::Tensor b = in.size() > 2 ? in[2] : torch::Tensor();
    return torch::conv2d(x, in[1], b, strides, pads.sym, dilations, group);
  };
}

OpFn make_gemm(const onnx::NodeProto& n) {
  const float alpha = attr_float(n, "alpha", 1), beta = attr_float(n, "beta", 1);
  const bool ta = attr_int(n, "transA", 0) != 0, tb = attr_int(n, "transB", 0) != 0;
  return [=](const Inputs& in) {
    const torch::Tensor c = in.size() > 2 ? in[2] : torch::Tensor();
    if (!ta && tb && alpha == 1 && beta == 1) return torch::linear(in[0], in[1], c);
    torch::Tensor y = torch::mm(ta ? in[0].t() : in[0], tb ? in[1].t() : in[1]);
    if (alpha != 1) y = y * alpha;
    return c.defined() ? y + c * beta : y;
  };
}

OpFn make_pool(const onnx::NodeProto& n, const std::string& source) {
  const auto kernel = attr_ints(n, "kernel_shape");
  const auto strides = attr_ints(n, "strides", kernel);
  const bool ceil = attr_int(n, "ceil_mode", 0) != 0;
  const Pads pads = split_pads(n);
  FKD_CHECK(kernel.size() == 2 && pads.explicit_pad.empty(), FormatError,
            "{}: only 2-D pooling with symmetric pads is evaluated", node_label(source, n));
  if (n.op_type() == "MaxPool") {
    const auto dilations = spatial(n, "dilations", 1);
    return [=](const Inputs& in) {
      return torch::max_pool2d(in[0], kernel, strides, pads.sym, dilations, ceil);
    };
  }
  const bool include_pad = attr_int(n, "count_include_pad", 0) != 0;
  return [=](const Inputs& in) {
    return torch::avg_pool2d(in[0], kernel, strides, pads.sym, ceil, include_pad);
  };
}

OpFn make_quantize(const onnx::NodeProto& n, bool quantize) {
  const int64_t axis = attr_int(n, "axis", 1);
  return [=](const Inputs& in) {
    const torch::Tensor zp = in.size() > 2 ? in[2] : torch::Tensor();
    return quantize ? quantize_linear(in[0], in[1], zp, axis)
                    : dequantize_linear(in[0], in[1], zp, axis);
  };
}

OpFn make_reshape() {
  return [](const Inputs& in) {
    std::vector<int64_t> shape(in[1].data_ptr<int64_t>(),
                               in[1].data_ptr<int64_t>() + in[1].numel());
    for (size_t i = 0; i < shape.size(); ++i)
      if (shape[i] == 0) shape[i] = in[0].size(int64_t(i));
    return in[0].reshape(shape);
  };
}

OpFn make_op(const onnx::NodeProto& n, const std::string& source) {
  const std::string& op = n.op_type();
  FKD_CHECK(attr_ints(n, "auto_pad").empty() && attr_int(n, "storage_order", 0) == 0, FormatError,
            "{}: auto_pad and storage_order are not evaluated", node_label(source, n));
  if (op == "Conv") return make_conv(n);
  if (op == "Gemm") return make_gemm(n);
  if (op == "MaxPool" || op == "AveragePool") return make_pool(n, source);
  if (op == "QuantizeLinear" || op == "DequantizeLinear")
    return make_quantize(n, op == "QuantizeLinear");
  if (op == "Reshape") return make_reshape();
  if (op == "MatMul") return [](const Inputs& in) { return torch::matmul(in[0], in[1]); };
  if (op == "Relu") return [](const Inputs& in) { return torch::relu(in[0]); };
  if (op == "Sigmoid") return [](const Inputs& in) { return torch::sigmoid(in[0]); };
  if (op == "Tanh") return [](const Inputs& in) { return torch::tanh(in[0]); };
  if (op == "Erf") return [](const Inputs& in) { return torch::erf(in[0]); };
  if (op == "Sqrt") return [](const Inputs& in) { return torch::sqrt(in[0]); };
  if (op == "Identity") return [](const Inputs& in) { return in[0]; };
  if (op == "Add") return [](const Inputs& in) { return in[0] + in[1]; };
  if (op == "Sub") return [](const Inputs& in) { return in[0] - in[1]; };
  if (op == "Mul") return [](const Inputs& in) { return in[0] * in[1]; };
  if (op == "Div") return [](const Inputs& in) { return in[0] / in[1]; };
  if (op == "GlobalAveragePool")
    return [](const Inputs& in) { return in[0].mean({2, 3}, /*keepdim=*/true); };
  if (op == "Clip") {
    return [](const Inputs& in) {
      c10::optional<c10::Scalar> lo, hi;
      if (in.size() > 1 && in[1].defined()) lo = in[1].item();
      if (in.size() > 2 && in[2].defined()) hi = in[2].item();
      return torch::clamp(in[0], lo, hi);
    };
  }
  if (op == "HardSigmoid") {
    const float alpha = attr_float(n, "alpha", 0.2f), beta = attr_float(n, "beta", 0.5f);
    return [=](const Inputs& in) { return (in[0] * alpha + beta).clamp(0, 1); };
  }
  if (op == "Flatten") {
    const int64_t axis = attr_int(n, "axis", 1);
    return [=](const Inputs& in) {
      const int64_t a = axis < 0 ? axis + in[0].dim() : axis;
      int64_t outer = 1;
      for (int64_t i = 0; i < a; ++i) outer *= in[0].size(i);
      return in[0].reshape({outer, -1});
    };
  }
  if (op == "Concat") {
    const int64_t axis = attr_int(n, "axis", 0);
    return [=](const Inputs& in) { return torch::cat(in, axis); };
  }
  if (op == "Softmax" || op == "LogSoftmax") {
    const int64_t axis = attr_int(n, "axis", -1);
    const bool log = op == "LogSoftmax";
    return [=](const Inputs& in) {
      return log ? torch::log_softmax(in[0], axis) : torch::softmax(in[0], axis);
    };
  }
  if (op == "ReduceMean") {
    const auto axes = attr_ints(n, "axes");
    const bool keep = attr_int(n, "keepdims", 1) != 0;
    return [=](const Inputs& in) { return in[0].mean(axes, keep); };
  }
  fail<FormatError>("{}: fkd does not evaluate this operator (docs/edge.md lists those it does)",
                    node_label(source, n));
}

/// One node as evaluated.
struct Step {
  std::string output;
  std::vector<std::string> inputs;
  OpFn fn;
  std::shared_ptr<PreparedLayer> layer;  ///< set: an integer Conv/Gemm reading int8 inputs[0]
  std::vector<std::string> release;      ///< values last read here
};

class Runner final : public OnnxModel {
 public:
  Runner(const onnx::ModelProto& m, std::string source);
  OnnxInputSpec input_spec() const override { return read_input_spec(model_, source_); }
  bool quantized() const override { return quantized_; }
  size_t integer_layers() const override { return integer_layers_; }
  torch::Tensor forward(const torch::Tensor& x, const OnnxObserver& observe) const override;

 private:
  void check_opset() const;
  void find_io();
  void prepare();
  const onnx::NodeProto* producer(const std::string& name) const;
  bool constant(const std::string& name) const { return name.empty() || consts_.count(name); }
  const torch::Tensor* const_tensor(const std::string& name) const;
  std::shared_ptr<PreparedLayer> integer_layer(const onnx::NodeProto& n, std::string* q_out) const;
  bool dq_of(const std::string& name, torch::ScalarType type, bool const_input,
             const onnx::NodeProto** dq) const;

  onnx::ModelProto model_;
  std::string source_;
  std::string input_, output_;
  std::vector<int64_t> input_dims_;  ///< declared [C, H, W] (0 = symbolic)
  std::unordered_map<std::string, torch::Tensor> consts_;
  std::unordered_map<std::string, int> producer_;  ///< value -> node index
  std::unordered_map<std::string, int> readers_;   ///< value -> nodes reading it
  std::vector<Step> steps_;
  bool quantized_ = false;
  size_t integer_layers_ = 0;
};

Runner::Runner(const onnx::ModelProto& m, std::string source)
    : model_(m), source_(std::move(source)) {
  check_opset();
  for (const auto& init : model_.graph().initializer())
    consts_[init.name()] = from_proto(init, source_);
  find_io();
  const auto& nodes = model_.graph().node();
  for (int i = 0; i < nodes.size(); ++i) {
    for (const auto& out : nodes[i].output()) producer_[out] = i;
    for (const auto& in : nodes[i].input()) ++readers_[in];
    quantized_ |= nodes[i].op_type() == "QuantizeLinear";
  }
  prepare();
}

void Runner::check_opset() const {
  int64_t version = 0;
  for (const auto& o : model_.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") version = o.version();
  FKD_CHECK(version >= 13 && version <= 17, FormatError,
            "{}: operator set {}; fkd evaluates opsets 13 to 17", source_, version);
}

void Runner::find_io() {
  const auto& g = model_.graph();
  std::vector<const onnx::ValueInfoProto*> inputs;
  for (const auto& in : g.input())
    if (!consts_.count(in.name())) inputs.push_back(&in);
  FKD_CHECK(inputs.size() == 1 && g.output_size() >= 1, FormatError,
            "{}: {} inputs and {} outputs; fkd evaluates models of one image input", source_,
            inputs.size(), g.output_size());
  input_ = inputs[0]->name();
  output_ = g.output(0).name();
  const auto& dims = inputs[0]->type().tensor_type().shape().dim();
  FKD_CHECK(dims.size() == 4, FormatError,
            "{}: input '{}' has {} dimensions, expected [N, C, H, W]", source_, input_,
            dims.size());
  for (int i = 1; i < 4; ++i)
    input_dims_.push_back(dims[i].has_dim_value() ? dims[i].dim_value() : 0);
}

const onnx::NodeProto* Runner::producer(const std::string& name) const {
  auto it = producer_.find(name);
  return it == producer_.end() ? nullptr : &model_.graph().node(it->second);
}

const torch::Tensor* Runner::const_tensor(const std::string& name) const {
  auto it = consts_.find(name);
  return it == consts_.end() ? nullptr : &it->second;
}

/// True when `name` is made by a DequantizeLinear (*dq) of a `type` value that is a
/// constant (weights) or not (activations), with a constant scale and zero point.
bool Runner::dq_of(const std::string& name, torch::ScalarType type, bool const_input,
                   const onnx::NodeProto** dq) const {
  const onnx::NodeProto* p = producer(name);
  if (!p || p->op_type() != "DequantizeLinear" || p->input_size() < 3) return false;
  const bool is_const = consts_.count(p->input(0)) > 0;
  if (is_const != const_input || !constant(p->input(1)) || !constant(p->input(2))) return false;
  if (is_const && consts_.at(p->input(0)).scalar_type() != type) return false;
  if (!is_const) {  // the activation must come from a QuantizeLinear to int8
    const onnx::NodeProto* q = producer(p->input(0));
    const torch::Tensor* zp = q && q->input_size() > 2 ? const_tensor(q->input(2)) : nullptr;
    if (!q || q->op_type() != "QuantizeLinear" || !zp || zp->scalar_type() != type) return false;
  }
  *dq = p;
  return true;
}

/// The int8 layer a Conv/Gemm node computes, when the QDQ pattern around it holds; *q_out
/// then names the QuantizeLinear result it produces directly.
std::shared_ptr<PreparedLayer> Runner::integer_layer(const onnx::NodeProto& n,
                                                     std::string* q_out) const {
  const onnx::NodeProto *dx = nullptr, *dw = nullptr, *db = nullptr;
  if ((n.op_type() != "Conv" && n.op_type() != "Gemm") || n.input_size() < 2) return nullptr;
  if (!dq_of(n.input(0), torch::kInt8, false, &dx) || !dq_of(n.input(1), torch::kInt8, true, &dw))
    return nullptr;
  if (n.input_size() > 2 && !dq_of(n.input(2), torch::kInt32, true, &db)) return nullptr;
  // The one reader of the result must be a QuantizeLinear to int8.
  if (readers_.count(n.output(0)) == 0 || readers_.at(n.output(0)) != 1 || n.output(0) == output_)
    return nullptr;
  const onnx::NodeProto* q = nullptr;
  for (const auto& node : model_.graph().node())
    if (node.input_size() > 0 && node.input(0) == n.output(0)) q = &node;
  if (!q || q->op_type() != "QuantizeLinear" || q->input_size() < 3) return nullptr;
  const torch::Tensor *qs = const_tensor(q->input(1)), *qz = const_tensor(q->input(2));
  const torch::Tensor *xs = const_tensor(dx->input(1)), *xz = const_tensor(dx->input(2));
  if (!qs || !qz || !xs || !xz || qs->numel() != 1 || xs->numel() != 1 ||
      qz->scalar_type() != torch::kInt8)
    return nullptr;
  if (n.op_type() == "Gemm" && (attr_int(n, "transA", 0) != 0 || attr_int(n, "transB", 0) != 1 ||
                                attr_float(n, "alpha", 1) != 1 || attr_float(n, "beta", 1) != 1))
    return nullptr;

  QuantizedLayer l;
  l.op = n.op_type();
  l.where = n.name();
  l.input = QParams{xs->item<float>(), xz->to(torch::kInt32).item<int32_t>()};
  l.output = QParams{qs->item<float>(), qz->to(torch::kInt32).item<int32_t>()};
  const torch::Tensor w = consts_.at(dw->input(0)).contiguous();
  const torch::Tensor ws = consts_.at(dw->input(1)).to(torch::kFloat32).reshape({-1});
  const torch::Tensor wz = consts_.at(dw->input(2));
  if (wz.ne(0).any().item<bool>() || (attr_int(*dw, "axis", 1) != 0 && ws.numel() > 1))
    return nullptr;
  l.weight.shape = w.sizes().vec();
  l.weight.values.assign(w.data_ptr<int8_t>(), w.data_ptr<int8_t>() + w.numel());
  l.weight.scales.assign(ws.data_ptr<float>(), ws.data_ptr<float>() + ws.numel());
  if (ws.numel() != 1 && ws.numel() != l.weight.channels()) return nullptr;
  if (db) {
    const torch::Tensor b = consts_.at(db->input(0)).contiguous();
    const torch::Tensor bs = consts_.at(db->input(1)).to(torch::kFloat32).reshape({-1});
    if (b.numel() != l.weight.channels() || consts_.at(db->input(2)).ne(0).any().item<bool>())
      return nullptr;
    // The integer kernel adds the bias to the accumulator: its scale must be input x weight.
    for (int64_t c = 0; c < b.numel(); ++c)
      if (bs[bs.numel() == 1 ? 0 : c].item<float>() != l.bias_scale(c)) return nullptr;
    l.bias.assign(b.data_ptr<int32_t>(), b.data_ptr<int32_t>() + b.numel());
  }
  if (l.op == "Conv") {
    l.strides = spatial(n, "strides", 1);
    l.dilations = spatial(n, "dilations", 1);
    l.pads = attr_ints(n, "pads", {0, 0, 0, 0});
    l.group = attr_int(n, "group", 1);
  }
  *q_out = q->output(0);
  return std::make_shared<PreparedLayer>(prepare_layer(std::move(l)));
}

void Runner::prepare() {
  torch::NoGradGuard no_grad;
  std::unordered_set<std::string> skip;  // QuantizeLinear results made by an integer layer
  const auto& nodes = model_.graph().node();
  for (const auto& n : nodes) {
    FKD_CHECK(n.domain().empty() || n.domain() == "ai.onnx", FormatError,
              "{}: operator domain '{}' is not evaluated", node_label(source_, n), n.domain());
    FKD_CHECK(n.output_size() == 1, FormatError,
              "{}: {} results; fkd evaluates operators of one result", node_label(source_, n),
              n.output_size());
    if (skip.count(n.output(0))) continue;
    Step s;
    s.output = n.output(0);
    s.inputs.assign(n.input().begin(), n.input().end());
    std::string q_out;
    if ((s.layer = integer_layer(n, &q_out))) {
      s.inputs = {producer(n.input(0))->input(0)};
      s.output = q_out;
      skip.insert(q_out);
      ++integer_layers_;
    } else {
      s.fn = make_op(n, source_);
    }
    bool all_const = !s.layer;
    for (const auto& in : s.inputs) all_const &= constant(in);
    if (all_const) {  // weights' DequantizeLinear, shape constants: computed once here
      Inputs in;
      for (const auto& name : s.inputs)
        in.push_back(name.empty() ? torch::Tensor() : consts_.at(name));
      consts_[s.output] = s.fn(in);
      continue;
    }
    steps_.push_back(std::move(s));
  }
  // Free each value after its last reader.
  std::unordered_map<std::string, size_t> last;
  for (size_t i = 0; i < steps_.size(); ++i)
    for (const auto& in : steps_[i].inputs) last[in] = i;
  for (const auto& [name, i] : last)
    if (!consts_.count(name) && name != output_) steps_[i].release.push_back(name);
}

torch::Tensor Runner::forward(const torch::Tensor& x, const OnnxObserver& observe) const {
  torch::NoGradGuard no_grad;
  FKD_CHECK(x.dim() == 4, DataError, "{}: input of shape [{}], expected [N, C, H, W]", source_,
            fmt::join(x.sizes(), ", "));
  for (int i = 0; i < 3; ++i)
    FKD_CHECK(input_dims_[size_t(i)] == 0 || input_dims_[size_t(i)] == x.size(i + 1), DataError,
              "{}: input of shape [{}], the model takes [N, {}]", source_,
              fmt::join(x.sizes(), ", "), fmt::join(input_dims_, ", "));
  std::unordered_map<std::string, torch::Tensor> env;
  env[input_] = x.to(torch::kCPU, torch::kFloat32).contiguous();
  for (const Step& s : steps_) {
    Inputs in;
    for (const auto& name : s.inputs) {
      if (name.empty()) {
        in.emplace_back();
        continue;
      }
      auto it = env.find(name);
      in.push_back(it != env.end() ? it->second : consts_.at(name));
    }
    torch::Tensor out = s.layer ? run_integer_layer(*s.layer, in[0]) : s.fn(in);
    if (observe && out.scalar_type() == torch::kFloat32) observe(s.output, out);
    env[s.output] = std::move(out);
    for (const auto& r : s.release) env.erase(r);
  }
  auto it = env.find(output_);
  if (it != env.end()) return it->second;
  return consts_.at(output_);
}

}  // namespace

std::unique_ptr<OnnxModel> make_onnx_model(const onnx::ModelProto& model,
                                           const std::string& source) {
  return std::make_unique<Runner>(model, source);
}

std::unique_ptr<OnnxModel> OnnxModel::open(const std::string& path) {
  return make_onnx_model(read_model(path), path);
}

std::string input_spec_json(const OnnxInputSpec& s) {
  nlohmann::json j = {
      {"channels", s.channels},     {"size", s.size},      {"eval_resize", s.eval_resize},
      {"interp", s.interp},         {"mean", s.mean},      {"std", s.std},
      {"raw_pixels", s.raw_pixels}, {"classes", s.classes}};
  return j.dump();
}

OnnxInputSpec read_input_spec(const onnx::ModelProto& model, const std::string& source) {
  const std::string text = metadata(model, "fkd.input");
  FKD_CHECK(!text.empty(), FormatError,
            "{}: no fkd.input metadata (not written by fkd export), so its input transform is "
            "unknown",
            source);
  try {
    const auto j = nlohmann::json::parse(text);
    OnnxInputSpec s;
    s.channels = j.at("channels").get<int>();
    s.size = j.at("size").get<int>();
    s.eval_resize = j.at("eval_resize").get<int>();
    s.interp = j.at("interp").get<std::string>();
    s.mean = j.at("mean").get<std::vector<float>>();
    s.std = j.at("std").get<std::vector<float>>();
    s.raw_pixels = j.at("raw_pixels").get<bool>();
    s.classes = j.at("classes").get<std::vector<std::string>>();
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail<FormatError>("{}: bad fkd.input metadata: {}", source, e.what());
  }
}

}  // namespace fkd::edge
