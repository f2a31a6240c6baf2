// The student's optimizer, built from a run's configuration.
#pragma once
#include <memory>

#include <torch/torch.h>

#include "fkd/models.h"
#include "fkd/train.h"

namespace fkd {

/// SGD or AdamW over the net's parameters at cfg.lr and cfg.weight_decay. With
/// cfg.no_decay_norm_bias, two parameter groups: param_groups()[0] holds the parameters of
/// two or more dimensions (weight decay cfg.weight_decay), [1] those of at most one (norm
/// weights and biases, weight decay 0), as timm's filter_bias_and_bn.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& cfg, Net& net);

}  // namespace fkd
