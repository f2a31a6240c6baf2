// fkd's own evaluator of the ONNX files it writes (float32 and int8 QDQ): what `fkd eval`
// runs on an .onnx file, the export checks its output with, and calibration observes.
//
// Float operators run as LibTorch ops in float32. In an int8 file, each Conv or Gemm between
// a DequantizeLinear of int8 activations and int8 weights (and int32 bias) and one
// QuantizeLinear runs as integer arithmetic (quant_plan.h: int32 accumulation, float32
// requantization with round-half-to-even, as onnxruntime on x86); every other operator
// computes what the QDQ graph says: dequantize, the float operator, quantize.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

namespace fkd::edge {

/// What an exported model expects as input (its "fkd.input" metadata).
struct OnnxInputSpec {
  int channels = 0;
  int size = 0;         ///< input side
  int eval_resize = 0;  ///< the evaluation transform's Resize (0 = none)
  std::string interp = "bilinear";
  std::vector<float> mean, std;
  bool raw_pixels = false;  ///< takes pixels in [0, 255] (--normalize-inside)
  std::vector<std::string> classes;
};

/// Called with each value the evaluator computes (ONNX name, float32 tensor).
using OnnxObserver = std::function<void(const std::string& name, const torch::Tensor& value)>;

class OnnxModel {
 public:
  /// Reads and prepares an ONNX file. FormatError naming the file for a file that is not
  /// ONNX, or holds an operator or attribute this evaluator does not compute.
  static std::unique_ptr<OnnxModel> open(const std::string& path);
  virtual ~OnnxModel() = default;

  /// The input it takes; FormatError when the file carries no fkd metadata (not written by
  /// fkd export): then the transform cannot be known.
  virtual OnnxInputSpec input_spec() const = 0;
  /// True when the model holds QuantizeLinear/DequantizeLinear nodes.
  virtual bool quantized() const = 0;
  /// Integer layers found (Conv/Gemm run in integers).
  virtual size_t integer_layers() const = 0;
  /// x [N, C, H, W] float32 (any N: the batch dimension of the file is not enforced) ->
  /// output 0 as float32.
  virtual torch::Tensor forward(const torch::Tensor& x,
                                const OnnxObserver& observe = nullptr) const = 0;
};

}  // namespace fkd::edge
