#include "export/quant_plan.h"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <limits>

#include "fkd/error.h"

namespace fkd::edge {
namespace {

/// Round half to even (the default IEEE rounding mode, which fkd never changes).
double round_even(double v) { return std::nearbyint(v); }

}  // namespace

QParams activation_params(float lo, float hi) {
  const double l = std::min(0.0, double(lo)), h = std::max(0.0, double(hi));
  FKD_CHECK(std::isfinite(l) && std::isfinite(h), ConfigError,
            "int8 calibration: a range [{}, {}] is not finite", lo, hi);
  if (h - l <= 0) return QParams{1.0f, 0};
  QParams p;
  p.scale = float((h - l) / 255.0);
  p.zero_point = int32_t(std::clamp(round_even(-128.0 - l / double(p.scale)), -128.0, 127.0));
  return p;
}

QuantizedWeights quantize_weights(const std::vector<float>& w, const std::vector<int64_t>& shape,
                                  bool per_channel) {
  QuantizedWeights q;
  q.shape = shape;
  const int64_t channels = shape.at(0);
  const size_t per = channels > 0 ? w.size() / size_t(channels) : 0;
  FKD_CHECK(channels > 0 && per * size_t(channels) == w.size(), Error,
            "internal: {} weights do not split into {} channels", w.size(), channels);
  const int64_t groups = per_channel ? channels : 1;
  const size_t group_size = w.size() / size_t(groups);
  q.values.resize(w.size());
  for (int64_t g = 0; g < groups; ++g) {
    const float* begin = w.data() + size_t(g) * group_size;
    float amax = 0;
    for (size_t i = 0; i < group_size; ++i) amax = std::max(amax, std::fabs(begin[i]));
    const float scale = amax > 0 ? amax / 127.0f : 1.0f;
    q.scales.push_back(scale);
    for (size_t i = 0; i < group_size; ++i)
      q.values[size_t(g) * group_size + i] =
          int8_t(std::clamp(round_even(double(begin[i]) / double(scale)), -127.0, 127.0));
  }
  return q;
}

float QuantizedLayer::bias_scale(int64_t c) const { return input.scale * weight.scale(c); }

float QuantizedLayer::multiplier(int64_t c) const { return bias_scale(c) / output.scale; }

std::vector<int32_t> quantize_bias(const QuantizedLayer& layer, const std::vector<float>& bias) {
  std::vector<int32_t> q(bias.size());
  constexpr double lo = std::numeric_limits<int32_t>::min(),
                   hi = std::numeric_limits<int32_t>::max();
  for (size_t c = 0; c < bias.size(); ++c)
    q[c] = int32_t(
        std::clamp(round_even(double(bias[c]) / double(layer.bias_scale(int64_t(c)))), lo, hi));
  return q;
}

}  // namespace fkd::edge
