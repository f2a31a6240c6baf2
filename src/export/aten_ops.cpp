// One converter per supported TorchScript operator: the ONNX opset-13 nodes that compute it
// on float32 tensors of static shape.
#include <cmath>

#include <torch/torch.h>

#include "export/walk_internal.h"
#include "fkd/error.h"

namespace fkd::edge {

// --- Call ---------------------------------------------------------------------------------

std::string Call::kind() const {
  std::string k = node_->kind().toQualString();
  if (k.size() > 1 && k.back() == '_' && k[k.size() - 2] != '_') k.pop_back();
  return k;
}

void Call::refuse(const std::string& why) const {
  fail<ConfigError>("ONNX export: {} at {}: {}", node_->kind().toQualString(), where_, why);
}

int64_t Call::i64(size_t i) const {
  if (dynamic(i) || !value(i).isInt()) refuse(fmt::format("argument {} must be a constant int", i));
  return value(i).toInt();
}

double Call::f64(size_t i) const {
  if (dynamic(i) || !(value(i).isDouble() || value(i).isInt()))
    refuse(fmt::format("argument {} must be a constant number", i));
  return value(i).isInt() ? double(value(i).toInt()) : value(i).toDouble();
}

bool Call::flag(size_t i) const {
  if (dynamic(i) || !value(i).isBool())
    refuse(fmt::format("argument {} must be a constant bool", i));
  return value(i).toBool();
}

std::vector<int64_t> Call::ints(size_t i) const {
  if (dynamic(i) || !value(i).isIntList())
    refuse(fmt::format("argument {} must be a constant int list", i));
  return value(i).toIntVector();
}

torch::Tensor Call::weight(size_t i, const char* what) const {
  if (dynamic(i) || !value(i).isTensor())
    refuse(fmt::format("its {} must be a constant tensor, not one computed from the input", what));
  return value(i).toTensor().detach().to(torch::kFloat32);
}

std::string Call::tensor(size_t i) {
  if (dynamic(i)) return inputs_.at(i)->name;
  const c10::IValue& v = value(i);
  if (v.isTensor()) return constant(v.toTensor().to(torch::kFloat32));
  if (v.isDouble() || v.isInt()) return scalar(float(f64(i)));
  refuse(fmt::format("argument {} is a {}, expected a tensor or a number", i, v.tagKind()));
}

std::vector<std::string> Call::tensors(size_t i) {
  const WalkValue& list = *inputs_.at(i);
  std::vector<std::string> names;
  if (list.kind == WalkValue::kTensorList) {
    const auto items = list.value.toTensorVector();
    for (size_t k = 0; k < items.size(); ++k)
      names.push_back(list.names[k].empty() ? constant(items[k].to(torch::kFloat32))
                                            : list.names[k]);
    return names;
  }
  if (!list.value.isTensorList()) refuse(fmt::format("argument {} must be a list of tensors", i));
  for (const auto& t : list.value.toTensorVector())
    names.push_back(constant(t.to(torch::kFloat32)));
  return names;
}

std::string Call::emit(const std::string& op, const std::vector<std::string>& inputs) {
  const std::string out = fresh(op);
  emit_node(op, inputs, {out});
  return out;
}

onnx::NodeProto& Call::emit_node(const std::string& op, const std::vector<std::string>& inputs,
                                 const std::vector<std::string>& outputs) {
  return g_.node(op, inputs, outputs, prefix_ + "/" + op);
}

namespace {

// --- helpers ------------------------------------------------------------------------------

/// A one- or two-element int list as two values (PyTorch repeats a single one).
std::vector<int64_t> pair(std::vector<int64_t> v, const Call& c, const char* what) {
  if (v.size() == 1) v.push_back(v[0]);
  if (v.size() != 2) c.refuse(fmt::format("{} has {} values, expected 2", what, v.size()));
  return v;
}

/// Per-channel constant of shape [1, C, 1, ...] for an input of `dim` dimensions.
torch::Tensor channel_constant(const torch::Tensor& v, int64_t dim) {
  std::vector<int64_t> shape(size_t(std::max<int64_t>(dim, 2)), 1);
  shape[1] = v.numel();
  return v.to(torch::kFloat32).reshape(shape);
}

int64_t norm_axis(int64_t axis, int64_t dim) { return axis < 0 ? axis + dim : axis; }

// --- convolution and linear layers --------------------------------------------------------

/// aten::conv2d(x, w, b, stride, padding, dilation, groups), padding an int list or
/// "same"/"valid"; aten::convolution / aten::_convolution(x, w, b, stride, padding, dilation,
/// transposed, output_padding, groups, ...).
std::string conv(Call& c) {
  if (!c.dynamic(0)) c.refuse("its input must depend on the model input");
  const bool generic = c.kind() != "aten::conv2d";
  const torch::Tensor w = c.weight(1, "weight");
  if (w.dim() != 4)
    c.refuse(
        fmt::format("only 2-D convolutions are exported, this one has a "
                    "{}-D weight",
                    w.dim()));
  if (generic && c.flag(6)) c.refuse("transposed convolutions are not exported");
  const int64_t groups = c.i64(generic ? 8 : 6);
  const auto stride = pair(c.ints(3), c, "stride");
  const auto dilation = pair(c.ints(5), c, "dilation");
  std::vector<int64_t> pads;
  if (c.value(4).isString()) {  // padding="same" (stride 1 only, as PyTorch) or "valid"
    for (int d = 0; d < 2; ++d) {
      const int64_t total =
          c.value(4).toStringRef() == "same" ? dilation[d] * (w.size(2 + d) - 1) : 0;
      pads.push_back(total / 2);
    }
    for (int d = 0; d < 2; ++d) {
      const int64_t total =
          c.value(4).toStringRef() == "same" ? dilation[d] * (w.size(2 + d) - 1) : 0;
      pads.push_back(total - total / 2);
    }
  } else {
    const auto p = pair(c.ints(4), c, "padding");
    pads = {p[0], p[1], p[0], p[1]};
  }
  std::vector<std::string> inputs{c.tensor(0), c.constant(w)};
  c.weight_name = inputs[1];
  if (!c.none(2)) {
    inputs.push_back(c.constant(c.weight(2, "bias")));
    c.bias_name = inputs[2];
  }
  const std::string out = c.fresh("Conv");
  auto& n = c.emit_node("Conv", inputs, {out});
  set_attr(n, "kernel_shape", std::vector<int64_t>{w.size(2), w.size(3)});
  set_attr(n, "strides", stride);
  set_attr(n, "pads", pads);
  set_attr(n, "dilations", dilation);
  set_attr(n, "group", groups);
  c.role = QuantRole::kLayer;
  return out;
}

/// y = x W^T + b as Gemm (2-D x: a layer the quantizer turns into an integer kernel), else
/// MatMul + Add.
std::string gemm(Call& c, const torch::Tensor& w, const torch::Tensor& b) {
  const std::string x = c.tensor(0);
  if (c.in(0).dim() == 2) {
    std::vector<std::string> inputs{x, c.constant(w)};
    c.weight_name = inputs[1];
    if (b.defined()) {
      inputs.push_back(c.constant(b.reshape({-1})));
      c.bias_name = inputs[2];
    }
    const std::string out = c.fresh("Gemm");
    set_attr(c.emit_node("Gemm", inputs, {out}), "transB", int64_t(1));
    c.role = QuantRole::kLayer;
    return out;
  }
  std::string y = c.emit("MatMul", {x, c.constant(w.t().contiguous())});
  return b.defined() ? c.emit("Add", {y, c.constant(b.reshape({-1}))}) : y;
}

/// aten::linear(x, w, b).
std::string linear(Call& c) {
  return gemm(c, c.weight(1, "weight"), c.none(2) ? torch::Tensor() : c.weight(2, "bias"));
}

/// aten::addmm(b, x, w, beta, alpha) = beta b + alpha x w, with constant b and w.
std::string addmm(Call& c) {
  if (!c.dynamic(1) || c.dynamic(2)) c.refuse("only x @ W + b with a constant W is exported");
  const double beta = c.none(3) ? 1.0 : c.f64(3), alpha = c.none(4) ? 1.0 : c.f64(4);
  if (beta != 1.0 || alpha != 1.0) c.refuse("only beta = alpha = 1 is exported");
  // Gemm reads input 0; addmm's x is input 1.
  const std::string x = c.tensor(1);
  const torch::Tensor w = c.weight(2, "weight").t().contiguous(), b = c.weight(0, "bias");
  if (c.in(1).dim() != 2) c.refuse("expected a 2-D input");
  std::vector<std::string> inputs{x, c.constant(w), c.constant(b.reshape({-1}))};
  c.weight_name = inputs[1];
  c.bias_name = inputs[2];
  const std::string out = c.fresh("Gemm");
  set_attr(c.emit_node("Gemm", inputs, {out}), "transB", int64_t(1));
  c.role = QuantRole::kLayer;
  return out;
}

/// aten::matmul(x, y): with a constant 2-D y, a linear layer without bias; else MatMul.
std::string matmul(Call& c) {
  if (c.dynamic(0) && !c.dynamic(1) && c.value(1).isTensor() && c.value(1).toTensor().dim() == 2)
    return gemm(c, c.weight(1, "weight").t().contiguous(), torch::Tensor());
  return c.emit("MatMul", {c.tensor(0), c.tensor(1)});
}

/// aten::batch_norm in eval mode (one that freezing did not fold into a convolution): a
/// per-channel scale and shift.
std::string batch_norm(Call& c) {
  if (c.flag(5)) c.refuse("batch norm in training mode is not exported");
  const torch::Tensor mean = c.weight(3, "running mean"), var = c.weight(4, "running variance");
  const double eps = c.f64(7);
  torch::Tensor scale = (var + eps).rsqrt();
  if (!c.none(1)) scale = scale * c.weight(1, "weight");
  torch::Tensor shift = -mean * scale;
  if (!c.none(2)) shift = shift + c.weight(2, "bias");
  const int64_t dim = c.in(0).dim();
  const std::string y = c.emit("Mul", {c.tensor(0), c.constant(channel_constant(scale, dim))});
  return c.emit("Add", {y, c.constant(channel_constant(shift, dim))});
}

// --- activations --------------------------------------------------------------------------

std::string unary(Call& c, const char* op) { return c.emit(op, {c.tensor(0)}); }

/// hardtanh(x, lo, hi) (ReLU6: lo 0, hi 6) as Clip, as torch.onnx writes it at opset 13.
std::string clip(Call& c, double lo, double hi) {
  c.role = lo <= 0 && hi >= 0 ? QuantRole::kFoldable : QuantRole::kFloat;
  return c.emit("Clip", {c.tensor(0), c.scalar(float(lo)), c.scalar(float(hi))});
}

/// torch's hardsigmoid, relu6(x + 3) / 6, as ONNX HardSigmoid(alpha 1/6, beta 1/2).
std::string hard_sigmoid(Call& c, const std::string& x) {
  const std::string out = c.fresh("HardSigmoid");
  auto& n = c.emit_node("HardSigmoid", {x}, {out});
  set_attr(n, "alpha", float(1.0 / 6.0));
  set_attr(n, "beta", 0.5f);
  return out;
}

std::string hardswish(Call& c) {
  const std::string x = c.tensor(0);
  return c.emit("Mul", {x, hard_sigmoid(c, x)});
}

std::string silu(Call& c) {
  const std::string x = c.tensor(0);
  return c.emit("Mul", {x, c.emit("Sigmoid", {x})});
}

/// gelu(x) = x/2 (1 + erf(x / sqrt 2)), or with approximate="tanh"
/// x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (opset 13 has no Gelu).
std::string gelu(Call& c) {
  const std::string x = c.tensor(0);
  const bool tanh =
      c.num_inputs() > 1 && c.value(1).isString() && c.value(1).toStringRef() == "tanh";
  std::string inner;
  if (tanh) {
    const std::string cube = c.emit("Mul", {x, c.emit("Mul", {x, x})});
    const std::string sum = c.emit("Add", {x, c.emit("Mul", {cube, c.scalar(0.044715f)})});
    inner = c.emit("Tanh", {c.emit("Mul", {sum, c.scalar(float(std::sqrt(2.0 / M_PI)))})});
  } else {
    inner = c.emit("Erf", {c.emit("Mul", {x, c.scalar(float(M_SQRT1_2))})});
  }
  const std::string one_plus = c.emit("Add", {inner, c.scalar(1.0f)});
  return c.emit("Mul", {c.emit("Mul", {x, c.scalar(0.5f)}), one_plus});
}

// --- arithmetic ---------------------------------------------------------------------------

/// aten::add / aten::sub(a, b, alpha): a op alpha * b.
std::string add_sub(Call& c, const char* op) {
  const double alpha = c.num_inputs() > 2 ? c.f64(2) : 1.0;
  std::string b;
  if (alpha == 1.0) {
    b = c.tensor(1);
  } else if (!c.dynamic(1)) {
    const c10::IValue& v = c.value(1);
    b = v.isTensor() ? c.constant(v.toTensor().to(torch::kFloat32) * alpha)
                     : c.scalar(float(c.f64(1) * alpha));
  } else {
    b = c.emit("Mul", {c.tensor(1), c.scalar(float(alpha))});
  }
  return c.emit(op, {c.tensor(0), b});
}

std::string binary(Call& c, const char* op) { return c.emit(op, {c.tensor(0), c.tensor(1)}); }

std::string div(Call& c) {
  if (c.num_inputs() > 2 && !c.none(2)) c.refuse("division with a rounding mode is not exported");
  return binary(c, "Div");
}

// --- pooling ------------------------------------------------------------------------------

/// aten::max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).
std::string max_pool(Call& c) {
  const auto kernel = pair(c.ints(1), c, "kernel_size");
  const auto stride = c.ints(2).empty() ? kernel : pair(c.ints(2), c, "stride");
  const auto pad = pair(c.ints(3), c, "padding");
  const std::string out = c.fresh("MaxPool");
  auto& n = c.emit_node("MaxPool", {c.tensor(0)}, {out});
  set_attr(n, "kernel_shape", kernel);
  set_attr(n, "strides", stride);
  set_attr(n, "pads", std::vector<int64_t>{pad[0], pad[1], pad[0], pad[1]});
  set_attr(n, "dilations", pair(c.ints(4), c, "dilation"));
  set_attr(n, "ceil_mode", int64_t(c.flag(5)));
  c.role = QuantRole::kSameScale;
  return out;
}

/// aten::avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor).
std::string avg_pool(Call& c) {
  if (!c.none(6)) c.refuse("divisor_override is not exported");
  const auto kernel = pair(c.ints(1), c, "kernel_size");
  const auto stride = c.ints(2).empty() ? kernel : pair(c.ints(2), c, "stride");
  const auto pad = pair(c.ints(3), c, "padding");
  const std::string out = c.fresh("AveragePool");
  auto& n = c.emit_node("AveragePool", {c.tensor(0)}, {out});
  set_attr(n, "kernel_shape", kernel);
  set_attr(n, "strides", stride);
  set_attr(n, "pads", std::vector<int64_t>{pad[0], pad[1], pad[0], pad[1]});
  set_attr(n, "ceil_mode", int64_t(c.flag(4)));
  set_attr(n, "count_include_pad", int64_t(c.flag(5)));
  return out;
}

/// aten::adaptive_avg_pool2d(x, size): GlobalAveragePool for 1x1, else an AveragePool when
/// the input divides evenly into the output.
std::string adaptive_avg_pool(Call& c) {
  const auto size = pair(c.ints(1), c, "output_size");
  const torch::Tensor x = c.in(0);
  if (x.dim() != 4) c.refuse("expected a 4-D input");
  if (size[0] == 1 && size[1] == 1) return unary(c, "GlobalAveragePool");
  const int64_t h = x.size(2), w = x.size(3);
  if (h % size[0] || w % size[1])
    c.refuse(fmt::format("a {}x{} input does not divide into {}x{} equal windows", h, w, size[0],
                         size[1]));
  const std::vector<int64_t> kernel{h / size[0], w / size[1]};
  const std::string out = c.fresh("AveragePool");
  auto& n = c.emit_node("AveragePool", {c.tensor(0)}, {out});
  set_attr(n, "kernel_shape", kernel);
  set_attr(n, "strides", kernel);
  return out;
}

/// aten::mean(x, dims, keepdim, dtype).
std::string mean(Call& c) {
  const int64_t dim = c.in(0).dim();
  std::vector<int64_t> axes = c.ints(1);
  for (auto& a : axes) a = norm_axis(a, dim);
  std::sort(axes.begin(), axes.end());
  const bool keep = c.flag(2);
  if (dim == 4 && axes == std::vector<int64_t>{2, 3}) {
    const std::string pooled = unary(c, "GlobalAveragePool");
    if (keep) return pooled;
    const std::string out = c.fresh("Flatten");
    set_attr(c.emit_node("Flatten", {pooled}, {out}), "axis", int64_t(1));
    return out;
  }
  const std::string out = c.fresh("ReduceMean");
  auto& n = c.emit_node("ReduceMean", {c.tensor(0)}, {out});
  set_attr(n, "axes", axes);
  set_attr(n, "keepdims", int64_t(keep));
  return out;
}

// --- shapes -------------------------------------------------------------------------------

/// The result's shape as a Reshape target; a batch dimension it keeps is written 0 (copied
/// from the input), so the target holds for any batch.
std::string reshape(Call& c) {
  std::vector<int64_t> shape(c.out().sizes().begin(), c.out().sizes().end());
  if (!shape.empty() && c.in(0).dim() > 0 && shape[0] == c.in(0).size(0)) shape[0] = 0;
  c.role = QuantRole::kSameScale;
  return c.emit("Reshape", {c.tensor(0), c.constant(torch::tensor(shape, torch::kInt64))});
}

/// aten::flatten(x, start, end): ONNX Flatten when it keeps the batch and merges the rest.
std::string flatten(Call& c) {
  const int64_t dim = c.in(0).dim();
  const int64_t start = norm_axis(c.i64(1), dim), end = norm_axis(c.i64(2), dim);
  if (start == 1 && end == dim - 1) {
    if (dim == 2) return c.tensor(0);
    const std::string out = c.fresh("Flatten");
    set_attr(c.emit_node("Flatten", {c.tensor(0)}, {out}), "axis", int64_t(1));
    c.role = QuantRole::kSameScale;
    return out;
  }
  return reshape(c);
}

std::string cat(Call& c) {
  const std::string out = c.fresh("Concat");
  const int64_t axis = norm_axis(c.i64(1), c.out().dim());
  set_attr(c.emit_node("Concat", c.tensors(0), {out}), "axis", axis);
  return out;
}

std::string identity(Call& c) { return c.tensor(0); }

/// dropout and its variants: nothing in eval mode.
std::string dropout(Call& c) {
  if (c.flag(2)) c.refuse("dropout in training mode is not exported");
  return c.tensor(0);
}

/// aten::to: only a float32 tensor staying float32.
std::string to(Call& c) {
  if (c.in(0).scalar_type() != torch::kFloat32 || c.out().scalar_type() != torch::kFloat32)
    c.refuse(fmt::format("converts {} to {}; only float32 models are exported",
                         c10::toString(c.in(0).scalar_type()),
                         c10::toString(c.out().scalar_type())));
  return c.tensor(0);
}

// --- normalization and probabilities -------------------------------------------------------

/// aten::layer_norm(x, normalized_shape, weight, bias, eps) over the last dimensions, as
/// ReduceMean / Sub / Mul / Sqrt / Div (opset 13 has no LayerNormalization).
std::string layer_norm(Call& c) {
  const int64_t dim = c.in(0).dim(), k = int64_t(c.ints(1).size());
  std::vector<int64_t> axes;
  for (int64_t a = dim - k; a < dim; ++a) axes.push_back(a);
  auto reduce = [&](const std::string& v) {
    const std::string out = c.fresh("ReduceMean");
    auto& n = c.emit_node("ReduceMean", {v}, {out});
    set_attr(n, "axes", axes);
    set_attr(n, "keepdims", int64_t(1));
    return out;
  };
  const std::string x = c.tensor(0);
  const std::string centred = c.emit("Sub", {x, reduce(x)});
  const std::string var = reduce(c.emit("Mul", {centred, centred}));
  const std::string denom = c.emit("Sqrt", {c.emit("Add", {var, c.scalar(float(c.f64(4)))})});
  std::string y = c.emit("Div", {centred, denom});
  if (!c.none(2)) y = c.emit("Mul", {y, c.constant(c.weight(2, "weight"))});
  if (!c.none(3)) y = c.emit("Add", {y, c.constant(c.weight(3, "bias"))});
  return y;
}

std::string softmax(Call& c, const char* op) {
  if (c.num_inputs() > 2 && !c.none(2)) c.refuse("a dtype argument is not exported");
  const std::string out = c.fresh(op);
  set_attr(c.emit_node(op, {c.tensor(0)}, {out}), "axis", norm_axis(c.i64(1), c.in(0).dim()));
  return out;
}

}  // namespace

const std::map<std::string, Converter>& converters() {
  static const std::map<std::string, Converter> table = [] {
    std::map<std::string, Converter> t;
    t["aten::conv2d"] = conv;
    t["aten::convolution"] = conv;
    t["aten::_convolution"] = conv;
    t["aten::linear"] = linear;
    t["aten::addmm"] = addmm;
    t["aten::matmul"] = matmul;
    t["aten::batch_norm"] = batch_norm;
    t["aten::relu"] = [](Call& c) {
      c.role = QuantRole::kFoldable;
      return unary(c, "Relu");
    };
    t["aten::relu6"] = [](Call& c) { return clip(c, 0, 6); };
    t["aten::hardtanh"] = [](Call& c) { return clip(c, c.f64(1), c.f64(2)); };
    t["aten::hardsigmoid"] = [](Call& c) { return hard_sigmoid(c, c.tensor(0)); };
    t["aten::hardswish"] = hardswish;
    t["aten::silu"] = silu;
    t["aten::gelu"] = gelu;
    t["aten::sigmoid"] = [](Call& c) { return unary(c, "Sigmoid"); };
    t["aten::tanh"] = [](Call& c) { return unary(c, "Tanh"); };
    t["aten::add"] = [](Call& c) { return add_sub(c, "Add"); };
    t["aten::sub"] = [](Call& c) { return add_sub(c, "Sub"); };
    t["aten::mul"] = [](Call& c) { return binary(c, "Mul"); };
    t["aten::div"] = div;
    t["aten::max_pool2d"] = max_pool;
    t["aten::avg_pool2d"] = avg_pool;
    t["aten::adaptive_avg_pool2d"] = adaptive_avg_pool;
    t["aten::mean"] = mean;
    t["aten::flatten"] = flatten;
    t["aten::view"] = reshape;
    t["aten::reshape"] = reshape;
    t["aten::cat"] = cat;
    t["aten::layer_norm"] = layer_norm;
    t["aten::softmax"] = [](Call& c) { return softmax(c, "Softmax"); };
    t["aten::log_softmax"] = [](Call& c) { return softmax(c, "LogSoftmax"); };
    for (const char* k : {"aten::dropout", "aten::feature_dropout", "aten::alpha_dropout",
                          "aten::feature_alpha_dropout"})
      t[k] = dropout;
    for (const char* k : {"aten::contiguous", "aten::clone", "aten::detach"}) t[k] = identity;
    t["aten::to"] = to;
    return t;
  }();
  return table;
}

std::vector<std::string> supported_operators() {
  std::vector<std::string> names;
  for (const auto& kv : converters()) names.push_back(kv.first);
  return names;
}

}  // namespace fkd::edge
