// The int8 scheme of fkd's edge export as plain data (docs/edge.md, "The int8 scheme"): the
// quantizer fills it from calibration ranges, the QDQ writer writes it into the ONNX file,
// and the int8 evaluator computes with it (read back from such a file). No torch, no onnx:
// a C code generator can take it as it is.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fkd::edge {

/// One int8 tensor's parameters: real = scale * (q - zero_point), q in [-128, 127].
struct QParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
  bool operator==(const QParams& o) const { return scale == o.scale && zero_point == o.zero_point; }
};

/// The parameters of an activation whose values lie in [lo, hi]: the range is widened to
/// hold 0 (so that 0, and zero padding, is exact), scale = (hi - lo) / 255 and
/// zero_point = round_half_even(-128 - lo / scale), clamped to [-128, 127]. A range of
/// width 0 (a tensor of zeros) gives scale 1, zero point 0.
QParams activation_params(float lo, float hi);

/// A layer's weights as int8: symmetric (zero point 0), values in [-127, 127], one scale
/// per output channel (dimension 0) or one for the whole tensor.
struct QuantizedWeights {
  std::vector<int64_t> shape;  ///< [O, I / groups, kh, kw] (Conv) or [O, I] (Gemm)
  std::vector<int8_t> values;  ///< row-major
  /// O scales, or 1 (per-tensor); scale = max |w| / 127 over the channel (1 for zeros).
  std::vector<float> scales;
  int64_t channels() const { return shape.empty() ? 0 : shape[0]; }
  float scale(int64_t c) const { return scales.size() == 1 ? scales[0] : scales[size_t(c)]; }
};

/// Quantizes float weights of `shape` (row-major, output channels first):
/// q = clamp(round_half_even(w / scale), -127, 127).
QuantizedWeights quantize_weights(const std::vector<float>& w, const std::vector<int64_t>& shape,
                                  bool per_channel);

/// A Conv or Gemm layer computed in integers: acc[c] = bias[c] + sum (x_q - input.zp) * w_q
/// in int32, then y_q = clamp(round_half_even(float(acc[c]) * multiplier(c)) + output.zp,
/// -128, 127). A ReLU or ReLU6 after the layer is folded into `output`'s range.
struct QuantizedLayer {
  std::string op;     ///< "Conv" or "Gemm" (y = x W^T + b)
  std::string where;  ///< where it is in the model, for people
  QParams input, output;
  QuantizedWeights weight;
  /// O int32 values at scale bias_scale(c) with zero point 0, or empty (no bias):
  /// round_half_even(b / bias_scale(c)), clamped to int32.
  std::vector<int32_t> bias;
  // Conv geometry, as ONNX Conv's attributes.
  std::vector<int64_t> strides{1, 1}, pads{0, 0, 0, 0}, dilations{1, 1};
  int64_t group = 1;

  /// input.scale * weight.scale(c), in float32 arithmetic.
  float bias_scale(int64_t c) const;
  /// bias_scale(c) / output.scale, in float32 arithmetic (as onnxruntime computes it).
  float multiplier(int64_t c) const;
};

/// Quantizes a float bias for a layer whose input and weights are already set.
std::vector<int32_t> quantize_bias(const QuantizedLayer& layer, const std::vector<float>& bias);

/// Everything an int8 model adds to its float twin.
struct QuantPlan {
  std::string method;       ///< "minmax" or "percentile"
  double percentile = 0;    ///< the percentile method's kept share, in percent
  bool per_channel = true;  ///< weights: one scale per output channel
  size_t calibration = 0;   ///< calibration tensors the ranges came from
  /// Every quantized activation by ONNX value name (the float model's names).
  std::map<std::string, QParams> activations;
  /// Every integer layer by the name of its node in the float model.
  std::map<std::string, QuantizedLayer> layers;
  /// Activation nodes folded into a layer's output range: node name -> layer node name.
  std::map<std::string, std::string> folded;
};

}  // namespace fkd::edge
