// Building, checking, reading and writing ONNX models (libonnx's protobuf classes). Only the
// export's .cpp files include this header: it brings in protobuf and onnx.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include <onnx/onnx_pb.h>
#include <torch/types.h>

namespace fkd::edge {

/// The operator set every file fkd writes declares (QDQ with per-channel scales needs 13).
inline constexpr int64_t kOpset = 13;
/// The ONNX IR version of the files (what opset 13's release wrote).
inline constexpr int64_t kIrVersion = 7;

/// Appends nodes and initializers to one graph, with names unique in it.
class GraphBuilder {
 public:
  explicit GraphBuilder(onnx::GraphProto& graph);
  /// A value name not taken yet, made from `hint` ("features.0/Conv" -> "features.0/Conv_3").
  std::string fresh(const std::string& hint);
  /// Marks a value name as taken (graph inputs, names the caller chose).
  void reserve(const std::string& name) { values_.insert(name); }
  /// Marks a node name as taken.
  void reserve_node(const std::string& name) { nodes_.insert(name); }
  /// Appends a node; its name is made unique (among nodes) from `name`.
  onnx::NodeProto& node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::vector<std::string>& outputs, const std::string& name);
  /// A node with one fresh output named from `name`; returns the output's name.
  std::string op(const std::string& op, const std::vector<std::string>& inputs,
                 const std::string& name);
  /// Adds `t` (float32, int8, int32 or int64; any device, any layout) as an initializer
  /// under a fresh name made from `hint`; returns the name.
  std::string constant(const std::string& hint, const torch::Tensor& t);
  /// A float32 scalar (shape []) initializer.
  std::string scalar(const std::string& hint, float v);
  onnx::GraphProto& graph() { return graph_; }

 private:
  onnx::GraphProto& graph_;
  std::unordered_set<std::string> values_, nodes_;  ///< names taken (ONNX keeps them apart)
};

void set_attr(onnx::NodeProto& n, const std::string& name, int64_t v);
void set_attr(onnx::NodeProto& n, const std::string& name, float v);
void set_attr(onnx::NodeProto& n, const std::string& name, const std::vector<int64_t>& v);

/// Reading a node's attributes, with the value ONNX defines when it is absent.
int64_t attr_int(const onnx::NodeProto& n, const std::string& name, int64_t fallback);
float attr_float(const onnx::NodeProto& n, const std::string& name, float fallback);
std::vector<int64_t> attr_ints(const onnx::NodeProto& n, const std::string& name,
                               const std::vector<int64_t>& fallback = {});

/// A tensor as a TensorProto named `name`.
onnx::TensorProto to_proto(const std::string& name, const torch::Tensor& t);
/// A TensorProto's values (raw_data or typed fields) as a CPU tensor of its type and shape.
/// FormatError naming `source` for a type fkd does not read or a size that does not match.
torch::Tensor from_proto(const onnx::TensorProto& p, const std::string& source);

/// A graph input or output of type float32 with the given dimensions; a dimension given as
/// a name (`batch_name` at position 0) is symbolic.
void set_float_value_info(onnx::ValueInfoProto& v, const std::string& name,
                          const std::vector<int64_t>& dims, const std::string& batch_name = "");

/// Validates `model` as onnx::checker does and runs strict shape inference on it (which
/// adds the inferred shapes as value_info). Any inconsistency is a FormatError naming `what`
/// and the checker's first line.
void check_model(onnx::ModelProto& model, const std::string& what);

/// The model's bytes as written to a file.
std::string serialize_model(const onnx::ModelProto& model, const std::string& what);
/// Reads an ONNX file. IoError when it cannot be read, FormatError when it is no ONNX model.
onnx::ModelProto read_model(const std::string& path);

/// The model's metadata_props value under `key` ("" when absent).
std::string metadata(const onnx::ModelProto& m, const std::string& key);
void set_metadata(onnx::ModelProto& m, const std::string& key, const std::string& value);

}  // namespace fkd::edge
