#include "export/quantize.h"

#include <torch/torch.h>

#include "export/onnx_build.h"
#include "fkd/error.h"

namespace fkd::edge {
namespace {

constexpr int kBins = 2048;

/// [lo, hi] holding `percentile` percent of a histogram's mass at each end.
std::pair<float, float> percentile_range(const torch::Tensor& hist, float lo, float hi,
                                         double percentile) {
  const auto cum = hist.cumsum(0);
  const auto c = cum.accessor<double, 1>();
  const double total = c[kBins - 1];
  const double q_hi = total * percentile / 100.0, q_lo = total * (1.0 - percentile / 100.0);
  const double width = (double(hi) - double(lo)) / kBins;
  int first = 0, last = kBins - 1;
  while (first < kBins - 1 && c[first] <= q_lo) ++first;
  for (int i = 0; i < kBins; ++i) {
    if (c[i] >= q_hi) {
      last = i;
      break;
    }
  }
  return {float(lo + first * width), float(lo + (last + 1) * width)};
}

const onnx::TensorProto& initializer(const onnx::GraphProto& g, const std::string& name) {
  for (const auto& t : g.initializer())
    if (t.name() == name) return t;
  fail<Error>("internal: no initializer '{}'", name);
}

const onnx::NodeProto& node_named(const onnx::GraphProto& g, const std::string& name) {
  for (const auto& n : g.node())
    if (n.name() == name) return n;
  fail<Error>("internal: no node '{}'", name);
}

std::vector<float> float_values(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

/// Appends Q and DQ nodes for `value` with `p`; the DequantizeLinear writes `dq_name`.
void add_qdq(GraphBuilder& b, const std::string& value, const QParams& p,
             const std::string& dq_name) {
  const std::string scale = b.constant(value + "/scale", torch::tensor(p.scale));
  const std::string zp =
      b.constant(value + "/zero_point", torch::tensor(int8_t(p.zero_point), torch::kInt8));
  const std::string q = b.fresh(value + "/quantized");
  b.node("QuantizeLinear", {value, scale, zp}, {q}, value + "/QuantizeLinear");
  b.node("DequantizeLinear", {q, scale, zp}, {dq_name}, value + "/DequantizeLinear");
}

/// DequantizeLinear of a layer's int8 weights; returns its output.
std::string weight_dq(GraphBuilder& b, const std::string& base, const QuantizedWeights& w) {
  const std::string q = b.constant(
      base + "/int8",
      torch::from_blob(const_cast<int8_t*>(w.values.data()), w.shape, torch::kInt8).clone());
  const bool per_channel = w.scales.size() > 1;
  const torch::Tensor scales = torch::tensor(w.scales, torch::kFloat32);
  const std::string s = b.constant(base + "/scale", per_channel ? scales : scales.reshape({}));
  const std::string z = b.constant(
      base + "/zero_point", per_channel ? torch::zeros({int64_t(w.scales.size())}, torch::kInt8)
                                        : torch::zeros({}, torch::kInt8));
  const std::string out = b.fresh(base + "/dequantized");
  auto& n = b.node("DequantizeLinear", {q, s, z}, {out}, base + "/DequantizeLinear");
  if (per_channel) set_attr(n, "axis", int64_t(0));
  return out;
}

/// DequantizeLinear of a layer's int32 bias at input scale x weight scale.
std::string bias_dq(GraphBuilder& b, const std::string& base, const QuantizedLayer& l) {
  const int64_t o = int64_t(l.bias.size());
  const std::string q =
      b.constant(base + "/int32",
                 torch::from_blob(const_cast<int32_t*>(l.bias.data()), {o}, torch::kInt32).clone());
  const bool per_channel = l.weight.scales.size() > 1;
  std::vector<float> scales;
  for (int64_t c = 0; c < (per_channel ? o : 1); ++c) scales.push_back(l.bias_scale(c));
  const torch::Tensor st = torch::tensor(scales, torch::kFloat32);
  const std::string s = b.constant(base + "/scale", per_channel ? st : st.reshape({}));
  const std::string z =
      b.constant(base + "/zero_point",
                 per_channel ? torch::zeros({o}, torch::kInt32) : torch::zeros({}, torch::kInt32));
  const std::string out = b.fresh(base + "/dequantized");
  auto& n = b.node("DequantizeLinear", {q, s, z}, {out}, base + "/DequantizeLinear");
  if (per_channel) set_attr(n, "axis", int64_t(0));
  return out;
}

}  // namespace

QuantLayout quant_layout(const onnx::ModelProto& fp32, const std::vector<ConvertedOp>& ops) {
  const auto& g = fp32.graph();
  std::map<std::string, int> readers;
  for (const auto& n : g.node())
    for (const auto& in : n.input()) ++readers[in];
  std::map<std::string, const ConvertedOp*> by_output;
  for (const auto& op : ops) by_output[op.output] = &op;
  const std::string graph_out = g.output(0).name();

  QuantLayout l;
  std::set<const ConvertedOp*> folded_layers;
  for (const auto& op : ops) {
    if (op.role != QuantRole::kFoldable || op.inputs.size() != 1) continue;
    auto it = by_output.find(op.inputs[0]);
    if (it == by_output.end() || it->second->role != QuantRole::kLayer) continue;
    if (readers[op.inputs[0]] != 1 || op.inputs[0] == graph_out) continue;
    for (const auto& node : op.nodes) l.folded[node] = it->second->nodes.at(0);
    l.layer_out[it->second->nodes.at(0)] = op.output;
    folded_layers.insert(it->second);
  }
  l.points.push_back(g.input(0).name());
  for (const auto& op : ops) {
    if (folded_layers.count(&op)) continue;
    l.points.push_back(op.output);
    if (op.role == QuantRole::kLayer) l.layer_out[op.nodes.at(0)] = op.output;
    if (op.role == QuantRole::kSameScale && op.inputs.size() == 1) {
      auto root = l.same_as.find(op.inputs[0]);
      l.same_as[op.output] = root == l.same_as.end() ? op.inputs[0] : root->second;
    }
  }
  return l;
}

std::map<std::string, std::pair<float, float>> calibrate_ranges(
    const OnnxModel& fp32, const std::string& input_name, const torch::Tensor& inputs,
    const std::set<std::string>& names, const std::string& method, double percentile) {
  torch::NoGradGuard no_grad;
  std::map<std::string, std::pair<float, float>> range;
  auto extremes = [&](const std::string& name, const torch::Tensor& t) {
    if (!names.count(name)) return;
    const float lo = t.min().item<float>(), hi = t.max().item<float>();
    auto it = range.find(name);
    if (it == range.end()) {
      range[name] = {lo, hi};
    } else {
      it->second = {std::min(it->second.first, lo), std::max(it->second.second, hi)};
    }
  };
  const auto batches = inputs.split(32);
  for (const auto& b : batches) {
    extremes(input_name, b);
    fp32.forward(b, extremes);
  }
  if (method == "minmax") return range;

  std::map<std::string, torch::Tensor> hist;
  auto histogram = [&](const std::string& name, const torch::Tensor& t) {
    auto it = range.find(name);
    if (it == range.end() || it->second.second <= it->second.first) return;
    const torch::Tensor h =
        torch::histc(t.reshape({-1}), kBins, it->second.first, it->second.second)
            .to(torch::kFloat64);
    auto hi = hist.find(name);
    if (hi == hist.end()) {
      hist[name] = h;
    } else {
      hi->second += h;
    }
  };
  for (const auto& b : batches) {
    histogram(input_name, b);
    fp32.forward(b, histogram);
  }
  for (auto& [name, r] : range) {
    auto h = hist.find(name);
    if (h != hist.end()) r = percentile_range(h->second, r.first, r.second, percentile);
  }
  return range;
}

QuantPlan make_quant_plan(const onnx::ModelProto& fp32, const std::vector<ConvertedOp>& ops,
                          const QuantLayout& layout,
                          const std::map<std::string, std::pair<float, float>>& ranges,
                          bool per_channel) {
  const auto& g = fp32.graph();
  QuantPlan plan;
  plan.per_channel = per_channel;
  plan.folded = layout.folded;
  for (const auto& p : layout.points) {
    if (layout.same_as.count(p)) continue;
    auto r = ranges.find(p);
    FKD_CHECK(r != ranges.end(), Error, "internal: no calibration range for '{}'", p);
    plan.activations[p] = activation_params(r->second.first, r->second.second);
  }
  for (const auto& [p, root] : layout.same_as) plan.activations[p] = plan.activations.at(root);

  for (const auto& op : ops) {
    if (op.role != QuantRole::kLayer) continue;
    const onnx::NodeProto& n = node_named(g, op.nodes.at(0));
    QuantizedLayer l;
    l.op = n.op_type();
    l.where = op.where;
    l.input = plan.activations.at(op.inputs.at(0));
    l.output = plan.activations.at(layout.layer_out.at(n.name()));
    const torch::Tensor w = from_proto(initializer(g, op.weight), "ONNX export");
    l.weight = quantize_weights(float_values(w), w.sizes().vec(), per_channel);
    if (!op.bias.empty())
      l.bias = quantize_bias(l, float_values(from_proto(initializer(g, op.bias), "ONNX export")));
    if (l.op == "Conv") {
      l.strides = attr_ints(n, "strides", {1, 1});
      l.pads = attr_ints(n, "pads", {0, 0, 0, 0});
      l.dilations = attr_ints(n, "dilations", {1, 1});
      l.group = attr_int(n, "group", 1);
    }
    plan.layers[n.name()] = std::move(l);
  }
  return plan;
}

onnx::ModelProto write_qdq(const onnx::ModelProto& fp32, const std::vector<ConvertedOp>& ops,
                           const QuantLayout& layout, const QuantPlan& plan) {
  const onnx::GraphProto& src = fp32.graph();
  onnx::ModelProto q = fp32;
  onnx::GraphProto& g = *q.mutable_graph();
  g.clear_node();
  g.clear_initializer();
  g.clear_value_info();
  GraphBuilder b(g);
  for (const auto& n : src.node()) {
    b.reserve_node(n.name());
    for (const auto& o : n.output()) b.reserve(o);
  }
  for (const auto& in : src.input()) b.reserve(in.name());

  // The float layers' weights and biases give way to their int8/int32 twins.
  std::set<std::string> replaced;
  for (const auto& op : ops)
    if (op.role == QuantRole::kLayer) replaced.insert({op.weight, op.bias});
  for (const auto& init : src.initializer()) {
    b.reserve(init.name());
    if (!replaced.count(init.name())) *g.add_initializer() = init;
  }

  const std::set<std::string> points(layout.points.begin(), layout.points.end());
  const std::string graph_out = src.output(0).name();
  std::map<std::string, std::string> reads;  // value -> the name its readers use
  auto quantize_value = [&](const std::string& value) {
    if (value == graph_out) return;  // handled where it is produced
    const std::string dq = b.fresh(value + "/dequantized");
    add_qdq(b, value, plan.activations.at(value), dq);
    reads[value] = dq;
  };
  quantize_value(src.input(0).name());

  for (const auto& n : src.node()) {
    if (plan.folded.count(n.name())) continue;
    onnx::NodeProto node = n;
    for (auto& in : *node.mutable_input()) {
      auto it = reads.find(in);
      if (it != reads.end()) in = it->second;
    }
    auto layer = plan.layers.find(n.name());
    if (layer != plan.layers.end()) {
      node.set_input(1, weight_dq(b, n.name() + "/weight", layer->second.weight));
      if (node.input_size() > 2) node.set_input(2, bias_dq(b, n.name() + "/bias", layer->second));
      node.set_output(0, layout.layer_out.at(n.name()));
    }
    const std::string out = node.output(0);
    const bool point = points.count(out) > 0;
    if (point && out == graph_out) node.set_output(0, b.fresh(out + "/float"));
    *g.add_node() = node;
    if (point && out == graph_out) {
      add_qdq(b, node.output(0), plan.activations.at(out), out);
    } else if (point) {
      quantize_value(out);
    }
  }
  // Constants only folded activations read (Clip's bounds) leave with them.
  std::set<std::string> read;
  for (const auto& n : g.node()) read.insert(n.input().begin(), n.input().end());
  auto* inits = g.mutable_initializer();
  for (int i = inits->size() - 1; i >= 0; --i)
    if (!read.count(inits->Get(i).name())) inits->DeleteSubrange(i, 1);
  return q;
}

}  // namespace fkd::edge
