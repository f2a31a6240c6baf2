#include "objective.h"

#include "device.h"
#include "fkd/rng.h"
#include "soft_loss.h"

namespace fkd {

Objective::Objective(const TrainConfig& cfg, int num_classes, const torch::Device& device)
    : cfg_(cfg),
      num_classes_(num_classes),
      device_(device),
      amp_(resolve_amp(parse_amp(cfg.amp), device)) {
  if (cfg.mode == TrainMode::kKd)
    teacher_ = std::make_unique<OnlineTeacher>(cfg, num_classes, device, amp_);
}

std::pair<torch::Tensor, torch::Tensor> Objective::operator()(const Batch& b, torch::Tensor x,
                                                              const torch::Tensor& y,
                                                              const torch::Tensor& stored,
                                                              int64_t step, Net& net) const {
  const bool soft = cfg_.mode != TrainMode::kSupervised;
  const bool mixing = cfg_.mixup > 0 || cfg_.cutmix > 0;
  // The networks run under autocast; every loss is computed from float32 logits.
  auto student = [&](const torch::Tensor& in) {
    const Autocast autocast(amp_, device_);
    return net.forward(in);
  };
  if (!soft && !mixing) {
    torch::Tensor logits = student(x).to(torch::kFloat32);
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        logits, y,
        torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(cfg_.label_smoothing));
    return {loss, logits};
  }
  torch::Tensor q, hard;
  if (cfg_.mode == TrainMode::kFkd) q = stored.defined() ? stored : batch_soft_labels(b, device_);
  if (!soft || cfg_.hard_weight > 0) hard = one_hot_targets(y, num_classes_, cfg_.label_smoothing);
  if (mixing) {
    Rng rng(cfg_.seed, RngStream::kMix, {uint64_t(step)});
    const MixPlan plan =
        sample_mix(rng, cfg_.mixup, cfg_.cutmix, cfg_.mix_prob, cfg_.switch_prob, b.h, b.w);
    x = apply_mix(plan, x, {&q, &hard});
  }
  if (teacher_) q = teacher_->soft_targets(x);  // in the run's precision
  torch::Tensor logits = student(x).to(torch::kFloat32);
  if (!soft) return {soft_cross_entropy(logits, hard, 1.0), logits};
  torch::Tensor loss = soft_cross_entropy(logits, q, cfg_.temperature);
  if (cfg_.hard_weight > 0) {
    loss =
        loss * (1.0 - cfg_.hard_weight) + soft_cross_entropy(logits, hard, 1.0) * cfg_.hard_weight;
  }
  return {loss, logits};
}

}  // namespace fkd
