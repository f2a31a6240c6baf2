// Post-training static quantization of a converted float model: activation ranges from a
// calibration set, the QuantPlan they give, and the QDQ (opset 13) model that carries it.
#pragma once
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <onnx/onnx_pb.h>
#include <torch/types.h>

#include "export/graph_walk.h"
#include "export/onnx_model.h"
#include "export/quant_plan.h"

namespace fkd::edge {

/// Where the quantization points of a converted model are.
struct QuantLayout {
  std::vector<std::string> points;               ///< values that get a Q/DQ pair, in order
  std::map<std::string, std::string> same_as;    ///< point -> the point whose parameters it takes
  std::map<std::string, std::string> folded;     ///< activation node -> layer node
  std::map<std::string, std::string> layer_out;  ///< layer node -> the point it writes
};
QuantLayout quant_layout(const onnx::ModelProto& fp32, const std::vector<ConvertedOp>& ops);

/// [lo, hi] of each named value over the calibration inputs, by "minmax" (the extremes)
/// or "percentile" (the values at 100 - p and p percent, from a 2048-bin histogram between
/// the extremes).
std::map<std::string, std::pair<float, float>> calibrate_ranges(
    const OnnxModel& fp32, const std::string& input_name, const torch::Tensor& inputs,
    const std::set<std::string>& names, const std::string& method, double percentile);

/// The plan: activation parameters from the ranges, weights and biases quantized.
QuantPlan make_quant_plan(const onnx::ModelProto& fp32, const std::vector<ConvertedOp>& ops,
                          const QuantLayout& layout,
                          const std::map<std::string, std::pair<float, float>>& ranges,
                          bool per_channel);

/// The QDQ model: the float model with each point quantized and dequantized, layers' weights
/// as int8 and biases as int32 behind DequantizeLinear, folded activations removed.
onnx::ModelProto write_qdq(const onnx::ModelProto& fp32, const std::vector<ConvertedOp>& ops,
                           const QuantLayout& layout, const QuantPlan& plan);

}  // namespace fkd::edge
