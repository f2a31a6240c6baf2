// Label types, precisions and the pure kernels: quantize a softmax output, round a value as
// it is stored, recover a dense soft label (the reference's formulas).
#include <algorithm>
#include <cmath>
#include <limits>

#include "fkd/enum_names.h"
#include "fkd/error.h"
#include "fkd/store.h"
#include "store/record.h"

namespace fkd {

namespace {
constexpr EnumNames<LabelType, 5> kLabelTypes({{{LabelType::kHard, "hard"},
                                                {LabelType::kSmoothing, "smoothing"},
                                                {LabelType::kMarginalSmoothing,
                                                 "marginal_smoothing"},
                                                {LabelType::kMarginalRenorm, "marginal_renorm"},
                                                {LabelType::kFull, "full"}}});
constexpr EnumNames<Precision, 3> kPrecisions(
    {{{Precision::kFp32, "fp32"}, {Precision::kFp16, "fp16"}, {Precision::kU8, "u8"}}});
}  // namespace

const char* label_type_name(LabelType t) { return kLabelTypes.name(t); }
LabelType parse_label_type(const std::string& name) {
  return kLabelTypes.parse(name, "label type");
}
const char* precision_name(Precision p) { return kPrecisions.name(p); }
Precision parse_precision(const std::string& name) { return kPrecisions.parse(name, "precision"); }

int stored_indices(LabelType t, int k) {
  switch (t) {
    case LabelType::kHard:
    case LabelType::kSmoothing:
      return 1;
    case LabelType::kMarginalSmoothing:
    case LabelType::kMarginalRenorm:
      return k;
    case LabelType::kFull:
      return 0;
  }
  return 0;
}

int stored_values(LabelType t, int k, int num_classes) {
  switch (t) {
    case LabelType::kHard:
      return 0;
    case LabelType::kSmoothing:
      return 1;
    case LabelType::kMarginalSmoothing:
    case LabelType::kMarginalRenorm:
      return k;
    case LabelType::kFull:
      return num_classes;
  }
  return 0;
}

namespace {

/// Sort key: NaN ranks below every number, so a bad softmax cannot break the ordering.
inline float rank_key(float p) {
  return std::isnan(p) ? -std::numeric_limits<float>::infinity() : p;
}

/// True when class a (probability pa) ranks before class b: higher probability, then lower id.
inline bool ranks_before(float pa, int a, float pb, int b) {
  return pa > pb || (pa == pb && a < b);
}

/// The top `k` classes of probs, best first (ties by lower id).
void top_k(const float* probs, int num_classes, int k, int32_t* out) {
  if (k <= 16) {
    // Insertion into a short sorted list: one pass over the classes.
    int n = 0;
    float keys[16];
    for (int c = 0; c < num_classes; ++c) {
      const float p = rank_key(probs[c]);
      if (n == k && !ranks_before(p, c, keys[n - 1], out[n - 1])) continue;
      int pos = n < k ? n++ : k - 1;
      while (pos > 0 && ranks_before(p, c, keys[pos - 1], out[pos - 1])) {
        keys[pos] = keys[pos - 1];
        out[pos] = out[pos - 1];
        --pos;
      }
      keys[pos] = p;
      out[pos] = c;
    }
    return;
  }
  std::vector<int32_t> ids(static_cast<size_t>(num_classes));
  for (int c = 0; c < num_classes; ++c) ids[size_t(c)] = c;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return ranks_before(rank_key(probs[a]), a, rank_key(probs[b]), b);
  });
  std::copy(ids.begin(), ids.begin() + k, out);
}

}  // namespace

void quantize_crop(const float* probs, int num_classes, LabelType t, int k, int32_t* indices,
                   float* values) {
  FKD_CHECK(num_classes >= 1, ConfigError, "quantize_crop: num_classes {} must be >= 1",
            num_classes);
  switch (t) {
    case LabelType::kHard:
      top_k(probs, num_classes, 1, indices);
      return;
    case LabelType::kSmoothing:
      top_k(probs, num_classes, 1, indices);
      values[0] = probs[indices[0]];
      return;
    case LabelType::kMarginalSmoothing:
    case LabelType::kMarginalRenorm:
      FKD_CHECK(k >= 1 && k <= num_classes, ConfigError,
                "quantize_crop: k = {} must be in [1, num_classes = {}]", k, num_classes);
      // marginal_renorm stores the raw top-k probabilities too: recover_dense renormalizes.
      top_k(probs, num_classes, k, indices);
      for (int i = 0; i < k; ++i) values[i] = probs[indices[i]];
      return;
    case LabelType::kFull:
      std::copy(probs, probs + num_classes, values);
      return;
  }
}

namespace store {

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN, quiet
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (a >= 0x38800000u) {                                 // normal half: >= 2^-14
    uint32_t h = ((a >> 23) - 112u) << 10 | ((a >> 13) & 0x3ffu);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carries into the exponent
    return uint16_t(sign | h);
  }
  if (a <= 0x33000000u) return sign;  // <= 2^-25: rounds (ties to even) to zero
  // Subnormal half: value / 2^-24 = mantissa * 2^(e - 126), a right shift of 14..24 bits.
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - (a >> 23);
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

uint8_t float_to_u8(float p) {
  if (!(p > 0)) return 0;  // also NaN
  const double q = std::floor(double(p) * 255.0 + 0.5);
  return q >= 255 ? uint8_t(255) : uint8_t(q);
}

}  // namespace store

float round_to_precision(float v, Precision p) {
  switch (p) {
    case Precision::kFp32:
      return v;
    case Precision::kFp16:
      return store::half_to_float(store::float_to_half(v));
    case Precision::kU8:
      return store::u8_to_float(store::float_to_u8(v));
  }
  return v;
}

void recover_dense(LabelType t, int k, int num_classes, const int32_t* indices, const float* values,
                   float* out) {
  const int n_idx = stored_indices(t, k);
  for (int i = 0; i < n_idx; ++i) {
    FKD_CHECK(indices[i] >= 0 && indices[i] < num_classes, DataError,
              "recover_dense: class index {} out of range [0, {})", indices[i], num_classes);
  }
  switch (t) {
    case LabelType::kHard:
      std::fill(out, out + num_classes, 0.0f);
      out[indices[0]] = 1.0f;
      return;
    case LabelType::kSmoothing: {
      const float p = values[0];
      const float rest = num_classes > 1 ? std::max(0.0f, 1.0f - p) / float(num_classes - 1) : 0.0f;
      std::fill(out, out + num_classes, rest);
      out[indices[0]] = p;
      return;
    }
    case LabelType::kMarginalSmoothing: {
      float sum = 0.0f;
      for (int i = 0; i < k; ++i) sum += values[i];
      const float rest =
          num_classes > k ? std::max(0.0f, 1.0f - sum) / float(num_classes - k) : 0.0f;
      std::fill(out, out + num_classes, rest);
      for (int i = 0; i < k; ++i) out[indices[i]] = values[i];
      return;
    }
    case LabelType::kMarginalRenorm: {
      float sum = 0.0f;
      for (int i = 0; i < k; ++i) sum += values[i];
      std::fill(out, out + num_classes, 0.0f);
      for (int i = 0; i < k; ++i) out[indices[i]] = sum > 0 ? values[i] / sum : 1.0f / float(k);
      return;
    }
    case LabelType::kFull:
      std::copy(values, values + num_classes, out);
      return;
  }
}

}  // namespace fkd
