// The int8 arithmetic of quant_plan.h on LibTorch tensors: the reference fkd evaluates int8
// models with.
#pragma once
#include <torch/types.h>

#include "export/quant_plan.h"

namespace fkd::edge {

/// A QuantizedLayer with its tensors ready for computing.
struct PreparedLayer {
  QuantizedLayer layer;
  torch::Tensor weight;       ///< float32 holding the int8 values (exactly)
  torch::Tensor bias;         ///< int64 [O], or undefined
  torch::Tensor multipliers;  ///< float32 [1, O, 1, 1] (Conv) or [1, O] (Gemm)
};
PreparedLayer prepare_layer(QuantizedLayer layer);

/// The layer on int8 activations x_q ([N, C, H, W] for Conv, [N, K] for Gemm): the int32
/// accumulation, computed exactly (float32 convolutions of integer parts whose partial sums
/// stay below 2^24; float64 for sums of more than 8,256 products), then requantize().
/// FormatError when an accumulator leaves the int32 range.
torch::Tensor run_integer_layer(const PreparedLayer& p, const torch::Tensor& x_q);

/// int32 accumulators (int64 tensor) -> int8: clamp(round_half_even(float(acc) * m) + zp).
torch::Tensor requantize(const torch::Tensor& acc, const torch::Tensor& multipliers,
                         int32_t zero_point);

/// ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) to int8 (or uint8
/// when `zero_point` is uint8). Scale and zero point are scalars, or 1-D along `axis`.
torch::Tensor quantize_linear(const torch::Tensor& x, const torch::Tensor& scale,
                              const torch::Tensor& zero_point, int64_t axis);
/// ONNX DequantizeLinear: (float(q) - float(zero_point)) * scale, in float32.
torch::Tensor dequantize_linear(const torch::Tensor& q, const torch::Tensor& scale,
                                const torch::Tensor& zero_point, int64_t axis);

}  // namespace fkd::edge
