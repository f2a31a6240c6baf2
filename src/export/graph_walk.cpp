// The graph walk (graph_walk.h): runs a frozen TorchScript graph node by node on an example
// input, folding what is constant and converting what depends on the input.
#include "export/graph_walk.h"

#include <optional>
#include <set>
#include <unordered_map>

#include <torch/csrc/jit/passes/remove_mutation.h>
#include <torch/torch.h>

#include "export/walk_internal.h"
#include "fkd/error.h"
#include "models/zoo_internal.h"

namespace fkd::edge {
namespace {

using torch::jit::Block;
using torch::jit::Node;
using torch::jit::Value;

/// Operators whose result depends only on the shape, type or device of their tensor inputs
/// (fixed by the static input shape), never on the values.
bool shape_only(const std::string& kind) {
  static const std::set<std::string> kinds = {
      "aten::size",  "aten::dim",       "aten::numel",   "aten::len",
      "prim::dtype", "prim::device",    "prim::is_cuda", "aten::is_floating_point",
      "prim::shape", "aten::__isnot__", "aten::__is__"};
  return kinds.count(kind) > 0;
}

/// Operators with nothing to compute in an inference graph.
bool side_effect_only(const std::string& kind) {
  return kind == "aten::warn" || kind == "prim::Print";
}

bool is_inplace(const Node* n) {
  const std::string k = n->kind().toUnqualString();
  return k.size() > 1 && k.back() == '_' && k[k.size() - 2] != '_';
}

/// "features.3.conv.0": the submodules the node was inlined from (a method a module calls on
/// itself, named SELF in the call stack, adds nothing).
std::string module_path(const Node* n) {
  std::string path;
  if (auto cs = n->callstack()) {
    for (const auto& entry : (*cs)->vec()) {
      const auto& info = std::get<2>(entry);
      if (!info || info->instance_name().empty() || info->instance_name() == "SELF") continue;
      path += (path.empty() ? "" : ".") + info->instance_name();
    }
  }
  return path;
}

/// "features.3.conv.0 (torchvision/models/mobilenetv2.py:64)": the module path the node was
/// inlined from, and its source line when the model's source had a file.
std::string where_of(const Node* n) {
  std::string path = module_path(n);
  std::string line;
  if (auto flc = n->sourceRange().file_line_col())
    line = fmt::format("{}:{}", std::get<0>(*flc), std::get<1>(*flc));
  if (path.empty()) path = "the model's forward";
  return line.empty() ? path : fmt::format("{} ({})", path, line);
}

/// A node-name prefix: the module path, or the operator's name at the top level.
std::string prefix_of(const Node* n) {
  const std::string path = module_path(n);
  return path.empty() ? n->kind().toUnqualString() : path;
}

/// Lists and tuples: the interpreter builds them itself (they have no operator schema).
std::optional<std::vector<c10::IValue>> run_container_op(const Node* n,
                                                         const torch::jit::Stack& in) {
  const std::string kind = n->kind().toQualString();
  if (kind == "prim::ListConstruct") {
    c10::impl::GenericList list(n->output()->type()->expectRef<c10::ListType>().getElementType());
    for (const auto& v : in) list.push_back(v);
    return std::vector<c10::IValue>{c10::IValue(list)};
  }
  if (kind == "prim::TupleConstruct")
    return std::vector<c10::IValue>{c10::ivalue::Tuple::create(std::vector<c10::IValue>(in))};
  if (kind == "prim::ListUnpack") {
    const auto items = in.at(0).toListRef();
    return std::vector<c10::IValue>(items.begin(), items.end());
  }
  if (kind == "prim::TupleUnpack") {
    const auto& items = in.at(0).toTupleRef().elements();
    return std::vector<c10::IValue>(items.begin(), items.end());
  }
  return std::nullopt;
}

class Walker {
 public:
  Walker(GraphBuilder& g, std::vector<ConvertedOp>& ops,
         std::unordered_map<std::string, std::vector<int64_t>>& shapes)
      : g_(g), ops_(ops), shapes_(shapes) {}

  void bind(const Value* v, WalkValue w) { values_[v] = std::move(w); }
  const WalkValue& get(const Value* v) const {
    auto it = values_.find(v);
    FKD_CHECK(it != values_.end(), Error, "internal: ONNX export reached %{} before its definition",
              v->debugName());
    return it->second;
  }

  void run_block(Block* b) {
    for (Node* n : b->nodes()) visit(n);
  }

 private:
  void visit(Node* n);
  void visit_if(Node* n);
  void visit_loop(Node* n);
  std::vector<c10::IValue> run_concrete(Node* n) const;
  void convert(Node* n, const std::vector<c10::IValue>& outs);
  WalkValue list_value(Node* n, const c10::IValue& out) const;

  GraphBuilder& g_;
  std::vector<ConvertedOp>& ops_;
  std::unordered_map<std::string, std::vector<int64_t>>& shapes_;
  std::unordered_map<const Value*, WalkValue> values_;
};

void Walker::visit(Node* n) {
  const std::string kind = n->kind().toQualString();
  if (kind == "prim::Constant") {
    bind(n->output(), WalkValue::constant(torch::jit::toIValue(n->output()).value()));
    return;
  }
  if (kind == "prim::If") return visit_if(n);
  if (kind == "prim::Loop") return visit_loop(n);
  if (kind == "prim::RaiseException")
    fail<ConfigError>(
        "ONNX export: the model raises an exception at {} on the export's input "
        "shape",
        where_of(n));
  if (side_effect_only(kind)) return;
  if (kind == "prim::GetAttr" || kind == "prim::CallMethod" || kind == "prim::CallFunction")
    fail<ConfigError>(
        "ONNX export: {} at {}: the frozen graph still reads module state or calls "
        "a method (a mutated attribute?), which is not exported",
        kind, where_of(n));

  bool dynamic = false;
  for (const Value* in : n->inputs()) dynamic |= get(in).kind != WalkValue::kConst;
  const std::vector<c10::IValue> outs = run_concrete(n);
  if (!dynamic || shape_only(kind)) {
    for (size_t i = 0; i < outs.size(); ++i) bind(n->output(i), WalkValue::constant(outs[i]));
    return;
  }
  if (kind == "prim::ListConstruct" || kind == "prim::TupleConstruct") {
    bind(n->output(), list_value(n, outs[0]));
    return;
  }
  if (kind == "prim::ListUnpack" || kind == "prim::TupleUnpack") {
    const WalkValue& list = get(n->input());
    for (size_t i = 0; i < outs.size(); ++i)
      bind(n->output(i), list.names.at(i).empty() ? WalkValue::constant(outs[i])
                                                  : WalkValue::tensor(outs[i], list.names[i]));
    return;
  }
  if (kind == "aten::__getitem__" && get(n->input(0)).kind == WalkValue::kTensorList &&
      get(n->input(1)).kind == WalkValue::kConst) {
    const WalkValue& list = get(n->input(0));
    int64_t i = get(n->input(1)).value.toInt();
    if (i < 0) i += int64_t(list.names.size());
    const std::string& name = list.names.at(size_t(i));
    bind(n->output(),
         name.empty() ? WalkValue::constant(outs[0]) : WalkValue::tensor(outs[0], name));
    return;
  }
  convert(n, outs);
}

WalkValue Walker::list_value(Node* n, const c10::IValue& out) const {
  WalkValue list = WalkValue::constant(out);
  list.kind = WalkValue::kTensorList;
  for (const Value* in : n->inputs()) {
    const WalkValue& v = get(in);
    if (v.kind == WalkValue::kTensorList)
      fail<ConfigError>("ONNX export: {} at {}: nested lists of tensors are not exported",
                        n->kind().toQualString(), where_of(n));
    list.names.push_back(v.kind == WalkValue::kTensor ? v.name : "");
  }
  if (n->kind().toQualString() == std::string("prim::TupleConstruct")) {
    // Tuples are kept as lists of tensors; their concrete value is rebuilt as a list.
    std::vector<at::Tensor> items;
    for (const auto& e : out.toTupleRef().elements()) {
      if (!e.isTensor())
        fail<ConfigError>("ONNX export: a tuple holding a {} at {} is not exported", e.tagKind(),
                          where_of(n));
      items.push_back(e.toTensor());
    }
    list.value = c10::IValue(items);
  } else if (!out.isTensorList()) {
    fail<ConfigError>("ONNX export: {} at {}: a list mixing tensors and other values",
                      n->kind().toQualString(), where_of(n));
  }
  return list;
}

std::vector<c10::IValue> Walker::run_concrete(Node* n) const {
  torch::jit::Stack stack;
  const bool inplace = is_inplace(n);
  for (const Value* in : n->inputs()) {
    const c10::IValue& v = get(in).value;
    // An in-place operator must not change the example value another node reads.
    stack.push_back(inplace && v.isTensor() ? c10::IValue(v.toTensor().clone()) : v);
  }
  if (std::optional<std::vector<c10::IValue>> out = run_container_op(n, stack)) return *out;
  try {
    n->getOperation()(stack);
  } catch (const std::exception& e) {
    fail<ConfigError>("ONNX export: {} at {} fails on the export's input: {}",
                      n->kind().toQualString(), where_of(n), torch_failure_line(e));
  }
  FKD_CHECK(stack.size() == n->outputs().size(), Error, "internal: {} left {} values, expected {}",
            n->kind().toQualString(), stack.size(), n->outputs().size());
  return std::vector<c10::IValue>(stack.begin(), stack.end());
}

void Walker::convert(Node* n, const std::vector<c10::IValue>& outs) {
  const std::string where = where_of(n);
  std::vector<const WalkValue*> inputs;
  for (const Value* in : n->inputs()) inputs.push_back(&get(in));
  Call call(n, inputs, outs, where, prefix_of(n), g_);
  const auto& table = converters();
  auto it = table.find(call.kind());
  if (it == table.end() && !outs.empty() && !outs[0].isTensor())
    fail<ConfigError>(
        "ONNX export: {} at {} reads a value of the input data: dynamic control "
        "flow and shapes computed from data are not exported",
        n->kind().toQualString(), where);
  if (it == table.end())
    fail<ConfigError>(
        "ONNX export: unsupported operator {} at {} (docs/edge.md lists the "
        "operators fkd exports)",
        n->kind().toQualString(), where);
  if (outs.size() != 1 || !outs[0].isTensor())
    call.refuse("only operators with one tensor result are exported");
  const int first = g_.graph().node_size();
  const std::string out = it->second(call);
  ConvertedOp op;
  op.aten = n->kind().toQualString();
  op.where = where;
  op.role = call.role;
  for (const WalkValue* v : inputs)
    if (v->kind == WalkValue::kTensor) op.inputs.push_back(v->name);
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i]->kind == WalkValue::kTensorList)
      for (const auto& name : inputs[i]->names)
        if (!name.empty()) op.inputs.push_back(name);
  op.output = out;
  op.weight = call.weight_name;
  op.bias = call.bias_name;
  for (int i = first; i < g_.graph().node_size(); ++i)
    op.nodes.push_back(g_.graph().node(i).name());
  if (!op.nodes.empty()) {
    ops_.push_back(op);
    shapes_[out] = outs[0].toTensor().sizes().vec();
  }
  WalkValue result = WalkValue::tensor(outs[0], out);
  // An in-place operator changed its input: later readers of that value see the result.
  if (is_inplace(n)) bind(n->input(0), result);
  bind(n->output(), std::move(result));
}

void Walker::visit_if(Node* n) {
  const WalkValue& cond = get(n->input(0));
  if (cond.kind != WalkValue::kConst)
    fail<ConfigError>(
        "ONNX export: dynamic control flow at {}: a branch on input data "
        "(prim::If) is not exported",
        where_of(n));
  Block* taken = n->blocks()[cond.value.toBool() ? 0 : 1];
  run_block(taken);
  for (size_t i = 0; i < n->outputs().size(); ++i) bind(n->output(i), get(taken->outputs()[i]));
}

void Walker::visit_loop(Node* n) {
  // A loop whose trip count and condition are fixed by the input shape is unrolled.
  const WalkValue& trips = get(n->input(0));
  const WalkValue& start = get(n->input(1));
  if (trips.kind != WalkValue::kConst || start.kind != WalkValue::kConst)
    fail<ConfigError>(
        "ONNX export: dynamic control flow at {}: a loop on input data (prim::Loop) "
        "is not exported",
        where_of(n));
  const int64_t max_trips = trips.value.toInt();
  FKD_CHECK(max_trips <= 100000, ConfigError,
            "ONNX export: a loop of {} iterations at {} is too long to unroll", max_trips,
            where_of(n));
  Block* body = n->blocks()[0];
  std::vector<WalkValue> carried;
  for (size_t i = 2; i < n->inputs().size(); ++i) carried.push_back(get(n->input(i)));
  bool go = start.value.toBool();
  for (int64_t it = 0; go && it < max_trips; ++it) {
    bind(body->inputs()[0], WalkValue::constant(c10::IValue(it)));
    for (size_t k = 0; k < carried.size(); ++k) bind(body->inputs()[k + 1], carried[k]);
    run_block(body);
    const WalkValue& cond = get(body->outputs()[0]);
    if (cond.kind != WalkValue::kConst)
      fail<ConfigError>(
          "ONNX export: dynamic control flow at {}: a loop whose condition depends "
          "on input data is not exported",
          where_of(n));
    go = cond.value.toBool();
    for (size_t k = 0; k < carried.size(); ++k) carried[k] = get(body->outputs()[k + 1]);
  }
  for (size_t k = 0; k < carried.size(); ++k) bind(n->output(k), carried[k]);
}

/// Renames value `from` to `to` in every node and record.
void rename_value(onnx::GraphProto& g, std::vector<ConvertedOp>& ops, const std::string& from,
                  const std::string& to) {
  for (auto& node : *g.mutable_node()) {
    for (auto& in : *node.mutable_input())
      if (in == from) in = to;
    for (auto& out : *node.mutable_output())
      if (out == from) out = to;
  }
  for (auto& op : ops) {
    if (op.output == from) op.output = to;
    for (auto& in : op.inputs)
      if (in == from) in = to;
  }
}

/// x -> x * (1 / (255 std)) - mean / std per channel: raw pixels to the model's input.
std::pair<torch::Tensor, torch::Tensor> pixel_affine(const WalkOptions& o, int64_t channels) {
  FKD_CHECK(int64_t(o.mean.size()) == channels && int64_t(o.std.size()) == channels, ConfigError,
            "--normalize-inside: the model takes {} channels but the normalization has {} "
            "means and {} stds",
            channels, o.mean.size(), o.std.size());
  auto mean = torch::tensor(o.mean, torch::kFloat32).to(torch::kFloat64);
  auto std = torch::tensor(o.std, torch::kFloat32).to(torch::kFloat64);
  auto scale = (1.0 / (255.0 * std)).to(torch::kFloat32).reshape({1, channels, 1, 1});
  auto shift = (-mean / std).to(torch::kFloat32).reshape({1, channels, 1, 1});
  return {scale, shift};
}

/// Checks the shapes shape inference gave every converted result against the example's.
void check_shapes(const onnx::ModelProto& m,
                  const std::unordered_map<std::string, std::vector<int64_t>>& shapes,
                  const std::vector<ConvertedOp>& ops) {
  std::unordered_map<std::string, const onnx::ValueInfoProto*> infos;
  for (const auto& v : m.graph().value_info()) infos[v.name()] = &v;
  for (const auto& v : m.graph().output()) infos[v.name()] = &v;
  for (const auto& op : ops) {
    auto want = shapes.find(op.output);
    auto got = infos.find(op.output);
    if (want == shapes.end() || got == infos.end()) continue;
    const auto& dims = got->second->type().tensor_type().shape().dim();
    std::vector<int64_t> have;
    for (int i = 0; i < dims.size(); ++i)
      have.push_back(dims[i].has_dim_value() ? dims[i].dim_value() : want->second.at(size_t(i)));
    FKD_CHECK(have == want->second, ConfigError,
              "ONNX export: {} at {}: ONNX computes a result of shape [{}] where the model's is "
              "[{}]",
              op.aten, op.where, fmt::join(have, ", "), fmt::join(want->second, ", "));
  }
}

}  // namespace

WalkResult walk_graph(torch::jit::Module& frozen, const torch::Tensor& example,
                      const WalkOptions& o) {
  torch::NoGradGuard no_grad;
  std::shared_ptr<torch::jit::Graph> graph = frozen.get_method("forward").graph();
  torch::jit::RemoveTensorMutation(graph);
  FKD_CHECK(graph->inputs().size() == 2, ConfigError,
            "ONNX export: the model's forward takes {} arguments, expected one image tensor",
            graph->inputs().size() - 1);

  WalkResult r;
  onnx::ModelProto& m = r.model;
  m.set_ir_version(kIrVersion);
  m.add_opset_import()->set_version(kOpset);
  onnx::GraphProto& g = *m.mutable_graph();
  g.set_name("fkd");
  GraphBuilder builder(g);
  builder.reserve(o.input_name);
  builder.reserve(o.output_name);
  set_float_value_info(*g.add_input(), o.input_name, o.input_shape, o.batch_name);

  std::unordered_map<std::string, std::vector<int64_t>> shapes;
  Walker walker(builder, r.ops, shapes);
  walker.bind(graph->inputs()[0], WalkValue::constant(c10::IValue()));
  torch::Tensor x = example;
  std::string x_name = o.input_name;
  if (!o.mean.empty()) {
    const auto [scale, shift] = pixel_affine(o, o.input_shape.at(1));
    const std::string scaled =
        builder.op("Mul", {x_name, builder.constant("normalize/scale", scale)}, "normalize/Mul");
    const std::string shifted =
        builder.op("Add", {scaled, builder.constant("normalize/shift", shift)}, "normalize/Add");
    r.ops.push_back(ConvertedOp{"normalize",
                                "the input's normalization",
                                QuantRole::kFloat,
                                {x_name},
                                shifted,
                                {g.node(0).name(), g.node(1).name()},
                                "",
                                ""});
    x = example * scale + shift;
    x_name = shifted;
  }
  walker.bind(graph->inputs()[1], WalkValue::tensor(x, x_name));
  walker.run_block(graph->block());

  FKD_CHECK(graph->outputs().size() == 1, ConfigError,
            "ONNX export: the model returns {} values, expected one logits tensor",
            graph->outputs().size());
  const WalkValue& out = walker.get(graph->outputs()[0]);
  FKD_CHECK(out.kind == WalkValue::kTensor, ConfigError,
            "ONNX export: the model returns a {}, expected a logits tensor computed from its input",
            out.kind == WalkValue::kTensorList ? "tuple or list" : "constant");
  r.example_output = out.value.toTensor();
  if (out.name == x_name) {  // a model that computes nothing in eval mode
    builder.node("Identity", {x_name}, {o.output_name}, "Identity");
  } else {
    rename_value(g, r.ops, out.name, o.output_name);
  }
  shapes[o.output_name] = r.example_output.sizes().vec();
  set_float_value_info(*g.add_output(), o.output_name, r.example_output.sizes().vec(),
                       o.batch_name);
  check_model(m, "ONNX export");
  check_shapes(m, shapes, r.ops);
  return r;
}

}  // namespace fkd::edge
