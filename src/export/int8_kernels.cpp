#include "export/int8_kernels.h"

#include <limits>

#include <torch/torch.h>

#include "fkd/error.h"

namespace fkd::edge {
namespace {

/// A per-axis parameter shaped to broadcast along `axis` of a `dim`-D tensor.
torch::Tensor along(const torch::Tensor& p, int64_t axis, int64_t dim) {
  if (p.dim() == 0 || p.numel() == 1) return p.reshape({});
  std::vector<int64_t> shape(size_t(dim), 1);
  shape[size_t(axis < 0 ? axis + dim : axis)] = p.numel();
  return p.reshape(shape);
}

}  // namespace

PreparedLayer prepare_layer(QuantizedLayer layer) {
  PreparedLayer p;
  const auto& w = layer.weight;
  p.weight = torch::from_blob(const_cast<int8_t*>(w.values.data()), w.shape, torch::kInt8)
                 .to(torch::kFloat32);
  const int64_t o = w.channels();
  if (!layer.bias.empty())
    p.bias = torch::from_blob(layer.bias.data(), {o}, torch::kInt32).to(torch::kInt64);
  std::vector<float> m(static_cast<size_t>(o));
  for (int64_t c = 0; c < o; ++c) m[size_t(c)] = layer.multiplier(c);
  p.multipliers = torch::tensor(m, torch::kFloat32)
                      .reshape(layer.op == "Conv" ? std::vector<int64_t>{1, o, 1, 1}
                                                  : std::vector<int64_t>{1, o});
  p.layer = std::move(layer);
  return p;
}

namespace {

/// Sums of products of integers, exactly, from float32 convolutions: x (values in
/// [-255, 255]) is split as 16 h + l with l in [0, 15] and h in [-16, 15], so that with int8
/// weights every partial sum of w h and of w l stays below 2^24 in magnitude for up to
/// kExactTerms products per output, where float32 arithmetic is exact in any order of
/// summation. The convolutions are oneDNN's direct ones (no Winograd or FFT transforms).
constexpr int64_t kExactTerms = (int64_t(1) << 24) / (16 * 127);

torch::Tensor exact_conv(const torch::Tensor& x, const torch::Tensor& w, const QuantizedLayer& l) {
  const torch::Tensor h = torch::floor(x / 16.0f);
  const torch::Tensor lo = x - h * 16.0f;
  auto conv = [&](const torch::Tensor& t) {
    return at::mkldnn_convolution(t.contiguous(), w, c10::nullopt, {0, 0}, l.strides, l.dilations,
                                  l.group)
        .to(torch::kInt64);
  };
  return conv(h) * 16 + conv(lo);
}

}  // namespace

torch::Tensor run_integer_layer(const PreparedLayer& p, const torch::Tensor& x_q) {
  const QuantizedLayer& l = p.layer;
  const auto& ws = l.weight.shape;
  int64_t terms = 1;
  for (size_t i = 1; i < ws.size(); ++i) terms *= ws[i];
  const bool conv = l.op == "Conv";
  const auto& pd = l.pads;  // ONNX order: top, left, bottom, right; padding is x_q = zp
  // A Gemm is the 1x1 convolution of [N, K, 1, 1].
  torch::Tensor x = conv ? x_q : x_q.reshape({x_q.size(0), x_q.size(1), 1, 1});
  const torch::Tensor w = conv ? p.weight : p.weight.reshape({ws[0], ws[1], 1, 1});
  torch::Tensor acc64;
  if (terms <= kExactTerms) {
    x = x.to(torch::kFloat32) - float(l.input.zero_point);
    if (conv) x = torch::constant_pad_nd(x, {pd[1], pd[3], pd[0], pd[2]}, 0.0);
    acc64 = exact_conv(x, w, l);
  } else {  // longer sums: float64, exact for every partial sum below 2^53
    x = x.to(torch::kFloat64) - double(l.input.zero_point);
    if (conv) x = torch::constant_pad_nd(x, {pd[1], pd[3], pd[0], pd[2]}, 0.0);
    acc64 = torch::conv2d(x, w.to(torch::kFloat64), torch::Tensor(), l.strides,
                          std::vector<int64_t>{0, 0}, l.dilations, l.group)
                .round()
                .to(torch::kInt64);
  }
  if (!conv) acc64 = acc64.reshape({acc64.size(0), acc64.size(1)});
  if (p.bias.defined())
    acc64 = acc64 + (conv ? p.bias.reshape({1, -1, 1, 1}) : p.bias.reshape({1, -1}));
  const auto lo = acc64.min().item<int64_t>(), hi = acc64.max().item<int64_t>();
  FKD_CHECK(lo >= std::numeric_limits<int32_t>::min() && hi <= std::numeric_limits<int32_t>::max(),
            FormatError, "int8 {} at {}: an int32 accumulator overflows ({} to {})", l.op, l.where,
            lo, hi);
  return requantize(acc64, p.multipliers, l.output.zero_point);
}

torch::Tensor requantize(const torch::Tensor& acc, const torch::Tensor& multipliers,
                         int32_t zero_point) {
  // float(acc) * m in float32, clamped to the int8 range around the zero point, rounded half
  // to even (torch.round), shifted by the zero point: the order of onnxruntime's x86 kernels.
  torch::Tensor y = acc.to(torch::kInt32).to(torch::kFloat32) * multipliers;
  y = y.clamp(float(-128 - zero_point), float(127 - zero_point)).round();
  return (y + float(zero_point)).to(torch::kInt8);
}

torch::Tensor quantize_linear(const torch::Tensor& x, const torch::Tensor& scale,
                              const torch::Tensor& zero_point, int64_t axis) {
  const bool u8 = zero_point.defined() && zero_point.scalar_type() == torch::kUInt8;
  const int64_t dim = x.dim();
  const torch::Tensor s = along(scale.to(torch::kFloat32), axis, dim);
  const torch::Tensor zp = zero_point.defined() ? along(zero_point.to(torch::kFloat32), axis, dim)
                                                : torch::zeros({}, torch::kFloat32);
  torch::Tensor q = (x.to(torch::kFloat32) / s).round() + zp;
  return u8 ? q.clamp(0, 255).to(torch::kUInt8) : q.clamp(-128, 127).to(torch::kInt8);
}

torch::Tensor dequantize_linear(const torch::Tensor& q, const torch::Tensor& scale,
                                const torch::Tensor& zero_point, int64_t axis) {
  const int64_t dim = q.dim();
  torch::Tensor v = q.to(torch::kInt32);
  if (zero_point.defined()) v = v - along(zero_point.to(torch::kInt32), axis, dim);
  return v.to(torch::kFloat32) * along(scale.to(torch::kFloat32), axis, dim);
}

}  // namespace fkd::edge
