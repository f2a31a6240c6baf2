#include "soft_loss.h"

#include <algorithm>
#include <cmath>

namespace fkd {

torch::Tensor soft_cross_entropy(const torch::Tensor& logits, const torch::Tensor& q, double T) {
  const auto z = T == 1.0 ? logits : logits / T;
  return -(q * torch::log_softmax(z, 1)).sum(1).mean();
}

torch::Tensor one_hot_targets(const torch::Tensor& y, int64_t num_classes, double smoothing) {
  auto t = torch::one_hot(y, num_classes).to(torch::kFloat32);
  if (smoothing > 0) t = t * (1.0 - smoothing) + smoothing / double(num_classes);
  return t;
}

namespace {

double standard_normal(Rng& rng) {
  // Box-Muller; 1 - uniform() is in (0, 1], so the log is finite.
  const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

/// Gamma(shape a, scale 1), Marsaglia and Tsang (2000); a < 1 through the boost
/// Gamma(a) = Gamma(a + 1) * U^(1/a).
double sample_gamma(Rng& rng, double a) {
  if (a < 1.0) {
    const double u = 1.0 - rng.uniform();
    return sample_gamma(rng, a + 1.0) * std::pow(u, 1.0 / a);
  }
  const double d = a - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = standard_normal(rng);
      v = 1.0 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = 1.0 - rng.uniform();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

}  // namespace

double sample_beta(Rng& rng, double a) {
  const double x = sample_gamma(rng, a), y = sample_gamma(rng, a);
  return x + y > 0 ? x / (x + y) : 0.5;
}

MixPlan sample_mix(Rng& rng, double mixup_alpha, double cutmix_alpha, double mix_prob,
                   double switch_prob, int h, int w) {
  MixPlan p;
  if (mixup_alpha <= 0 && cutmix_alpha <= 0) return p;
  if (!(rng.uniform() < mix_prob)) return p;
  p.mixed = true;
  p.cutmix = cutmix_alpha > 0 && (mixup_alpha <= 0 || rng.uniform() < switch_prob);
  p.lam = sample_beta(rng, p.cutmix ? cutmix_alpha : mixup_alpha);
  if (p.cutmix) {
    // A box of area (1 - lam) of the image at a uniform centre, clipped to the image.
    const double cut = std::sqrt(1.0 - p.lam);
    const int ch = int(h * cut), cw = int(w * cut);
    const int cy = int(rng.below(uint64_t(h))), cx = int(rng.below(uint64_t(w)));
    p.y0 = std::clamp(cy - ch / 2, 0, h);
    p.y1 = std::clamp(cy + ch / 2, 0, h);
    p.x0 = std::clamp(cx - cw / 2, 0, w);
    p.x1 = std::clamp(cx + cw / 2, 0, w);
    p.lam = 1.0 - double(p.y1 - p.y0) * double(p.x1 - p.x0) / (double(h) * double(w));
  }
  return p;
}

torch::Tensor apply_mix(const MixPlan& p, const torch::Tensor& x,
                        std::initializer_list<torch::Tensor*> targets) {
  if (!p.mixed) return x;
  torch::Tensor out;
  if (p.cutmix) {
    out = x.clone();
    using torch::indexing::Slice;
    out.index_put_({Slice(), Slice(), Slice(p.y0, p.y1), Slice(p.x0, p.x1)},
                   x.flip(0).index({Slice(), Slice(), Slice(p.y0, p.y1), Slice(p.x0, p.x1)}));
  } else {
    out = x * p.lam + x.flip(0) * (1.0 - p.lam);
  }
  for (torch::Tensor* t : targets) {
    if (t->defined()) *t = *t * p.lam + t->flip(0) * (1.0 - p.lam);
  }
  return out;
}

}  // namespace fkd
