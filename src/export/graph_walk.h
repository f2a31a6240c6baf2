// From a frozen TorchScript module to an ONNX graph (float32, opset 13, static shapes).
//
// The graph walk runs the module's graph once on an example input, node by node, and keeps
// every value either as a constant (weights, and everything computed from constants or from
// the static input shape: sizes, branch conditions, list arguments) or as a tensor that
// depends on the input, which becomes an ONNX value made by the node's ONNX operators. A
// branch taken on a constant is inlined; a branch or loop on input data is refused.
#pragma once
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>
#include <torch/script.h>

namespace fkd::edge {

/// How an operator's result takes part in int8 quantization (quantize.h).
enum class QuantRole {
  kLayer,      ///< Conv or Gemm with constant weights: integer kernel, int8 weights, int32 bias
  kFoldable,   ///< ReLU, ReLU6, hardtanh(lo <= 0 <= hi): folded into its layer's output range
  kSameScale,  ///< MaxPool, Flatten, Reshape: the output keeps the input's parameters
  kFloat,      ///< anything else: computed in float between dequantize and quantize
};

/// One operator of the model as converted: the ONNX nodes it became, its activation inputs
/// and its result. The quantizer decides from these where the Q/DQ pairs go.
struct ConvertedOp {
  std::string aten;   ///< the TorchScript operator ("aten::conv2d")
  std::string where;  ///< where it is in the model (module path, source line)
  QuantRole role = QuantRole::kFloat;
  std::vector<std::string> inputs;  ///< its input-dependent ONNX inputs
  std::string output;               ///< its ONNX result
  std::vector<std::string> nodes;   ///< names of the ONNX nodes it emitted, in order
  std::string weight, bias;         ///< kLayer: initializer names (bias may be empty)
};

struct WalkOptions {
  /// [B, C, H, W]: the static input shape (B is the example's batch when batch_name is set).
  std::vector<int64_t> input_shape;
  std::string batch_name;  ///< a symbolic batch dimension, or empty for a static one
  /// When set (3 or 1 values each), the graph takes raw pixels in [0, 255] and begins with
  /// x * (1 / (255 std)) - mean / std, per channel.
  std::vector<float> mean, std;
  std::string input_name = "input", output_name = "logits";
};

struct WalkResult {
  onnx::ModelProto model;  ///< opset 13, float32, not yet checked
  std::vector<ConvertedOp> ops;
  torch::Tensor example_output;  ///< the module's output on the example input
};

/// Converts `frozen` (torch::jit::freeze of a module in eval mode) on `example`
/// ([B, C, H, W] float32, the model's input: raw pixels when mean/std are set). ConfigError
/// naming the operator and where it is for anything outside the supported set, for control
/// flow on input data, and for a model that does not return one tensor.
WalkResult walk_graph(torch::jit::Module& frozen, const torch::Tensor& example,
                      const WalkOptions& o);

/// The TorchScript operators walk_graph converts, for messages and docs.
std::vector<std::string> supported_operators();

}  // namespace fkd::edge
