// The evaluator of onnx_model.h built from a ModelProto in memory (what the export checks
// before it writes anything), and the pieces of an int8 file it reads back.
#pragma once
#include <memory>
#include <string>

#include <onnx/onnx_pb.h>

#include "export/onnx_model.h"
#include "export/quant_plan.h"

namespace fkd::edge {

/// An evaluator of `model`; `source` names it in messages.
std::unique_ptr<OnnxModel> make_onnx_model(const onnx::ModelProto& model,
                                           const std::string& source);

/// The input spec stored in a model's metadata (OnnxModel::input_spec).
OnnxInputSpec read_input_spec(const onnx::ModelProto& model, const std::string& source);
/// The metadata value that input_spec reads back.
std::string input_spec_json(const OnnxInputSpec& spec);

}  // namespace fkd::edge
