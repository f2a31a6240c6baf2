#include "fkd/transforms.h"

#include <algorithm>
#include <cmath>

#include "fkd/error.h"

namespace fkd {

namespace {
/// Python's round(): half to even (the default floating-point rounding mode).
int py_round(double x) { return static_cast<int>(std::nearbyint(x)); }
}  // namespace

double portable_exp(double x) {
  FKD_CHECK(x > -700 && x < 700, ConfigError, "portable_exp: argument {} out of range", x);
  // x = n ln2 + r, |r| <= ln2/2; ln2 split so n*kLn2Hi is exact.
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  const double n = std::nearbyint(x / 0.6931471805599453);
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;
  // Taylor series to r^14: truncation < 1e-17 for |r| <= 0.347.
  double term = 1, sum = 1;
  for (int i = 1; i <= 14; ++i) {
    term = term * r / i;
    sum = sum + term;
  }
  return std::ldexp(sum, int(n));
}

double portable_log(double x) {
  FKD_CHECK(x > 0 && std::isfinite(x), ConfigError, "portable_log: argument {} out of range", x);
  int e;
  double m = std::frexp(x, &e);  // x = m 2^e, m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m = m * 2;
    e = e - 1;
  }
  // log m = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.1716: odd series to s^27.
  const double s = (m - 1) / (m + 1), s2 = s * s;
  double power = s, sum = 0;
  for (int i = 1; i <= 27; i += 2) {
    sum = sum + power / i;
    power = power * s2;
  }
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  return (e * kLn2Hi + 2 * sum) + e * kLn2Lo;
}

PixelBox sample_random_resized_crop(Rng& rng, int height, int width, const float scale[2],
                                    const float ratio[2]) {
  const double area = double(height) * double(width);
  const double log_r0 = portable_log(ratio[0]), log_r1 = portable_log(ratio[1]);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * rng.uniform(scale[0], scale[1]);
    const double aspect = portable_exp(rng.uniform(log_r0, log_r1));
    const int w = py_round(std::sqrt(target_area * aspect));
    const int h = py_round(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int top = int(rng.below(uint64_t(height - h + 1)));
      const int left = int(rng.below(uint64_t(width - w + 1)));
      return {left, top, w, h};
    }
  }
  // Fallback: the whole image, clamped to the ratio range, centred.
  const double in_ratio = double(width) / double(height);
  const double rmin = std::min(ratio[0], ratio[1]), rmax = std::max(ratio[0], ratio[1]);
  int w = width, h = height;
  if (in_ratio < rmin) {
    h = py_round(w / rmin);
  } else if (in_ratio > rmax) {
    w = py_round(h * rmax);
  }
  return {(width - w) / 2, (height - h) / 2, w, h};
}

PixelBox sample_padded_crop(Rng& rng, int height, int width, int out_h, int out_w,
                            int padding) {
  const int ph = height + 2 * padding, pw = width + 2 * padding;
  FKD_CHECK(ph >= out_h && pw >= out_w, ConfigError,
            "random crop {}x{} is larger than the padded image {}x{}", out_h, out_w, ph, pw);
  const int top = int(rng.below(uint64_t(ph - out_h + 1))) - padding;
  const int left = int(rng.below(uint64_t(pw - out_w + 1))) - padding;
  return {left, top, out_w, out_h};
}

CropPlan sample_train_crop(const TrainTransform& t, Rng& rng, int height, int width) {
  CropPlan p;
  switch (t.crop) {
    case TrainTransform::Crop::kRandomResized:
      p.box = sample_random_resized_crop(rng, height, width, t.scale, t.ratio);
      break;
    case TrainTransform::Crop::kPadded:
      p.box = sample_padded_crop(rng, height, width, t.size, t.size, t.padding);
      break;
    case TrainTransform::Crop::kNone:
      p.box = {0, 0, width, height};
      break;
  }
  p.flip = t.flip_prob > 0 && rng.bernoulli(t.flip_prob);
  return p;
}

CropPlan derive_label_crop(uint64_t seed, const float scale[2], const float ratio[2],
                           float flip_prob, uint64_t image, uint32_t crop, int height,
                           int width) {
  Rng rng(seed, RngStream::kLabelCrops, {image, crop});
  CropPlan p;
  p.box = sample_random_resized_crop(rng, height, width, scale, ratio);
  p.flip = rng.uniform() < flip_prob;
  p.id = crop;
  return p;
}

TrainTransform::Crop parse_crop_kind(const std::string& name) {
  if (name == "rrc") return TrainTransform::Crop::kRandomResized;
  if (name == "crop") return TrainTransform::Crop::kPadded;
  if (name == "none") return TrainTransform::Crop::kNone;
  fail<ConfigError>("unknown augmentation '{}': expected rrc, crop or none", name);
}

}  // namespace fkd
