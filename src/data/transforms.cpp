#include "fkd/transforms.h"

#include <algorithm>
#include <cmath>

#include "fkd/enum_names.h"
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

PixelBox sample_padded_crop(Rng& rng, int height, int width, int out_h, int out_w, int padding) {
  const int ph = height + 2 * padding, pw = width + 2 * padding;
  FKD_CHECK(ph >= out_h && pw >= out_w, DataError,
            "random crop {}x{} is larger than the padded image {}x{} (a {}x{} image with "
            "padding {})",
            out_h, out_w, ph, pw, height, width, padding);
  const int top = int(rng.below(uint64_t(ph - out_h + 1))) - padding;
  const int left = int(rng.below(uint64_t(pw - out_w + 1))) - padding;
  return {left, top, out_w, out_h};
}

namespace {
constexpr EnumNames<CropKind, 4> kCropKinds({{{CropKind::kAuto, "auto"},
                                              {CropKind::kRandomResized, "rrc"},
                                              {CropKind::kPadded, "crop"},
                                              {CropKind::kNone, "none"}}});
}  // namespace

const char* crop_kind_name(CropKind k) { return kCropKinds.name(k); }
CropKind parse_crop_kind(const std::string& name) { return kCropKinds.parse(name, "--aug"); }

CropKind resolve_crop_kind(const CropSampler& s, bool images_at_size) {
  if (s.kind != CropKind::kAuto) return s.kind;
  FKD_CHECK(s.size > 0, ConfigError, "--aug auto needs the input size, which is not set");
  return s.size <= 64 && images_at_size ? CropKind::kPadded : CropKind::kRandomResized;
}

std::string crop_sampler_problem(const CropSampler& s) {
  if (s.size < 1) return fmt::format("--input-size {}: expected at least 1", s.size);
  if (!(std::isfinite(s.scale[0]) && std::isfinite(s.scale[1]) && s.scale[0] > 0 &&
        s.scale[0] <= s.scale[1] && s.scale[1] <= 1)) {
    return fmt::format("--scale {} {}: expected 0 < min <= max <= 1", s.scale[0], s.scale[1]);
  }
  if (!(std::isfinite(s.ratio[0]) && std::isfinite(s.ratio[1]) && s.ratio[0] > 0 &&
        s.ratio[0] <= s.ratio[1])) {
    return fmt::format("--ratio {} {}: expected 0 < min <= max", s.ratio[0], s.ratio[1]);
  }
  if (s.padding < 0 || s.padding > 4096)
    return fmt::format("--padding {}: expected 0 to 4096", s.padding);
  if (!(s.flip >= 0 && s.flip <= 1)) return fmt::format("--flip {}: expected 0 to 1", s.flip);
  return "";
}

std::vector<std::string> crop_differences(const CropSampler& a, const CropSampler& b) {
  std::vector<std::string> d;
  const CropKind ka = resolve_crop_kind(a), kb = resolve_crop_kind(b);
  if (ka != kb) {
    d.push_back(fmt::format("crop sampler ({} vs {})", crop_kind_name(ka), crop_kind_name(kb)));
    return d;
  }
  auto pair = [](const std::array<float, 2>& v) { return fmt::format("{} {}", v[0], v[1]); };
  if (ka == CropKind::kRandomResized) {
    if (a.scale[0] != b.scale[0] || a.scale[1] != b.scale[1])
      d.push_back(fmt::format("scale ({} vs {})", pair(a.scale), pair(b.scale)));
    if (a.ratio[0] != b.ratio[0] || a.ratio[1] != b.ratio[1])
      d.push_back(fmt::format("ratio ({} vs {})", pair(a.ratio), pair(b.ratio)));
  }
  if (ka == CropKind::kPadded) {
    if (a.size != b.size) d.push_back(fmt::format("input size ({} vs {})", a.size, b.size));
    if (a.padding != b.padding)
      d.push_back(fmt::format("padding ({} vs {})", a.padding, b.padding));
  }
  if (a.flip != b.flip) d.push_back(fmt::format("flip ({} vs {})", a.flip, b.flip));
  return d;
}

std::string describe_crops(const CropSampler& s) {
  std::string box;
  switch (s.kind) {
    case CropKind::kRandomResized:
      box = fmt::format("RandomResizedCrop({}, scale [{}, {}], ratio [{:.4f}, {:.4f}])", s.size,
                        s.scale[0], s.scale[1], s.ratio[0], s.ratio[1]);
      break;
    case CropKind::kPadded:
      box = fmt::format("RandomCrop({}, padding {})", s.size, s.padding);
      break;
    case CropKind::kNone:
      box = fmt::format("Resize({})", s.size);
      break;
    case CropKind::kAuto:
      box = fmt::format("auto({})", s.size);
      break;
  }
  return fmt::format("{} + flip {}", box, s.flip);
}

CropPlan sample_crop(const CropSampler& s, Rng& rng, int height, int width) {
  CropPlan p;
  switch (s.kind) {
    case CropKind::kRandomResized:
      p.box = sample_random_resized_crop(rng, height, width, s.scale.data(), s.ratio.data());
      break;
    case CropKind::kPadded:
      p.box = sample_padded_crop(rng, height, width, s.size, s.size, s.padding);
      break;
    case CropKind::kNone:
      p.box = {0, 0, width, height};
      break;
    case CropKind::kAuto:
      fail<ConfigError>("sample_crop: the crop kind is not resolved (auto)");
  }
  p.flip = rng.bernoulli(s.flip);
  return p;
}

CropPlan derive_label_crop(const CropSampler& s, uint64_t seed, uint64_t image, uint32_t crop,
                           int height, int width) {
  Rng rng(seed, RngStream::kLabelCrops, {image, crop});
  CropPlan p = sample_crop(s, rng, height, width);
  p.id = crop;
  return p;
}

}  // namespace fkd
