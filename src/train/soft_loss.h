// Losses and batch mixing of the distillation modes (FKD and online KD).
#pragma once
#include <cstdint>

#include <torch/torch.h>

#include "fkd/rng.h"

namespace fkd {

/// Soft cross-entropy: mean over the batch of -sum_c q_c * log softmax(logits / T)_c.
/// logits and q are [n, C].
torch::Tensor soft_cross_entropy(const torch::Tensor& logits, const torch::Tensor& q, double T);

/// One-hot targets [n, C] (float32) of class indices y [n], smoothed as
/// torch.nn.CrossEntropyLoss(label_smoothing=s) does: (1 - s) * onehot + s / C.
torch::Tensor one_hot_targets(const torch::Tensor& y, int64_t num_classes, double smoothing);

/// A sample of Beta(a, a) (a > 0) from `rng` (Marsaglia-Tsang gamma variates). Pure in rng.
double sample_beta(Rng& rng, double a);

/// How one batch is mixed (timm's Mixup/CutMix in "batch" mode): row r is mixed with row
/// n - 1 - r, images by `lam` (Mixup) or by pasting the box [y0, y1) x [x0, x1) (CutMix),
/// targets by lam (for CutMix, the box's actual area share).
struct MixPlan {
  bool mixed = false;
  bool cutmix = false;
  double lam = 1;
  int y0 = 0, y1 = 0, x0 = 0, x1 = 0;
};

/// Draws a batch's mix for images of h x w: with probability mix_prob it is mixed; CutMix
/// with probability switch_prob when both alphas are set. Pure in rng.
MixPlan sample_mix(Rng& rng, double mixup_alpha, double cutmix_alpha, double mix_prob,
                   double switch_prob, int h, int w);

/// Applies a mix to images x [n, c, h, w] and to any number of target tensors [n, C]
/// (each mixed with the same partner rows and weight). Returns the mixed images; targets
/// are replaced by their mixes (undefined ones are left alone).
torch::Tensor apply_mix(const MixPlan& p, const torch::Tensor& x,
                        std::initializer_list<torch::Tensor*> targets);

}  // namespace fkd
