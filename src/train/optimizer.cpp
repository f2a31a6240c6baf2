#include "optimizer.h"

namespace fkd {

namespace {

template <typename Optimizer, typename Options>
std::unique_ptr<torch::optim::Optimizer> build(const TrainConfig& cfg, Net& net,
                                               const Options& defaults) {
  if (!cfg.no_decay_norm_bias) return std::make_unique<Optimizer>(net.parameters(), defaults);
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : net.parameters()) (p.dim() <= 1 ? no_decay : decay).push_back(p);
  Options without = defaults;
  without.weight_decay(0);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<Options>(defaults));
  groups.emplace_back(no_decay, std::make_unique<Options>(without));
  return std::make_unique<Optimizer>(std::move(groups), defaults);
}

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& cfg, Net& net) {
  if (cfg.optimizer == "adamw") {
    return build<torch::optim::AdamW>(
        cfg, net, torch::optim::AdamWOptions(cfg.lr).weight_decay(cfg.weight_decay));
  }
  return build<torch::optim::SGD>(cfg, net,
                                  torch::optim::SGDOptions(cfg.lr)
                                      .momentum(cfg.momentum)
                                      .nesterov(cfg.nesterov)
                                      .weight_decay(cfg.weight_decay));
}

}  // namespace fkd
