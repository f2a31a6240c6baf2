// Private pieces of the graph walk shared by graph_walk.cpp (the walk) and aten_ops.cpp (one
// converter per TorchScript operator).
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/script.h>

#include "export/graph_walk.h"
#include "export/onnx_build.h"

namespace fkd::edge {

/// A value of the walked graph: its value on the example input, and whether it depends on
/// the input (then it is an ONNX value too).
struct WalkValue {
  enum Kind {
    kConst,       ///< weights, sizes, flags: anything fixed once the input shape is
    kTensor,      ///< a tensor computed from the input: the ONNX value `name`
    kTensorList,  ///< a list holding such tensors: `names` per item ("" for a constant item)
  };
  Kind kind = kConst;
  c10::IValue value;  ///< the value on the example input
  std::string name;
  std::vector<std::string> names;

  static WalkValue constant(c10::IValue v) {
    WalkValue w;
    w.value = std::move(v);
    return w;
  }
  static WalkValue tensor(c10::IValue v, std::string onnx_name) {
    WalkValue w;
    w.kind = kTensor;
    w.value = std::move(v);
    w.name = std::move(onnx_name);
    return w;
  }
};

/// One TorchScript node being converted: its inputs, its outputs on the example, and the
/// graph it emits ONNX nodes into.
class Call {
 public:
  Call(torch::jit::Node* node, std::vector<const WalkValue*> inputs,
       std::vector<c10::IValue> outputs, std::string where, std::string prefix, GraphBuilder& g)
      : node_(node),
        inputs_(std::move(inputs)),
        outputs_(std::move(outputs)),
        where_(std::move(where)),
        prefix_(std::move(prefix)),
        g_(g) {}

  /// "aten::conv2d", without a trailing '_' of an in-place variant.
  std::string kind() const;
  const std::string& where() const { return where_; }
  size_t num_inputs() const { return inputs_.size(); }
  bool dynamic(size_t i) const { return inputs_.at(i)->kind == WalkValue::kTensor; }
  const c10::IValue& value(size_t i) const { return inputs_.at(i)->value; }
  bool none(size_t i) const { return i >= inputs_.size() || value(i).isNone(); }
  int64_t i64(size_t i) const;
  double f64(size_t i) const;
  bool flag(size_t i) const;
  std::vector<int64_t> ints(size_t i) const;
  /// A constant tensor argument as float32 (ConfigError when it depends on the input).
  torch::Tensor weight(size_t i, const char* what) const;
  /// The ONNX name of input i: its value, or an initializer for a constant tensor or number.
  std::string tensor(size_t i);
  /// The ONNX names of a list input's items (constant items become initializers).
  std::vector<std::string> tensors(size_t i);
  /// Output 0 on the example input.
  const torch::Tensor& out() const { return outputs_.at(0).toTensor(); }
  /// Input i's example tensor.
  torch::Tensor in(size_t i) const { return value(i).toTensor(); }

  /// A node named after where the operator is; returns its one output.
  std::string emit(const std::string& op, const std::vector<std::string>& inputs);
  onnx::NodeProto& emit_node(const std::string& op, const std::vector<std::string>& inputs,
                             const std::vector<std::string>& outputs);
  std::string fresh(const std::string& what) { return g_.fresh(prefix_ + "/" + what); }
  std::string scalar(float v) { return g_.scalar(prefix_ + "/c", v); }
  std::string constant(const torch::Tensor& t) { return g_.constant(prefix_ + "/c", t); }
  GraphBuilder& graph() { return g_; }

  [[noreturn]] void refuse(const std::string& why) const;

  // What the converter tells the quantizer.
  QuantRole role = QuantRole::kFloat;
  std::string weight_name, bias_name;

 private:
  torch::jit::Node* node_;
  std::vector<const WalkValue*> inputs_;
  std::vector<c10::IValue> outputs_;
  std::string where_, prefix_;
  GraphBuilder& g_;
};

/// Converts one operator; returns the ONNX name of its result (the input's own name for
/// operators that compute nothing in eval mode, such as dropout).
using Converter = std::function<std::string(Call&)>;

/// Converters by operator kind ("aten::conv2d").
const std::map<std::string, Converter>& converters();

}  // namespace fkd::edge
