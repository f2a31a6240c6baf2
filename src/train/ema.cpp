#include "ema.h"

#include <cmath>

#include "fkd/error.h"
#include "fkd/models.h"

namespace fkd {
namespace {

/// The model's tensors in state-dict order, checked against the average's names.
std::vector<torch::Tensor> live_tensors(
    const torch::nn::Module& net, const std::vector<std::pair<std::string, torch::Tensor>>& avg) {
  auto sd = state_dict(net);
  FKD_CHECK(sd.size() == avg.size(), ConfigError,
            "model EMA: the model has {} parameters and buffers, the average {}", sd.size(),
            avg.size());
  std::vector<torch::Tensor> out;
  out.reserve(sd.size());
  for (size_t i = 0; i < sd.size(); ++i) {
    FKD_CHECK(sd[i].first == avg[i].first, ConfigError,
              "model EMA: entry {} is '{}' in the model but '{}' in the average", i, sd[i].first,
              avg[i].first);
    out.push_back(std::move(sd[i].second));
  }
  return out;
}

}  // namespace

ModelEma::ModelEma(const torch::nn::Module& net, Options o) : o_(o) {
  FKD_CHECK(o.decay > 0 && o.decay < 1, ConfigError,
            "--model-ema {}: expected a decay in (0, 1), such as 0.9998", o.decay);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : state_dict(net)) avg_.emplace_back(name, t.detach().clone());
}

double ModelEma::decay_at(const Options& o, int64_t step) {
  const int64_t t = step - 1;
  if (t <= 0) return 0.0;
  if (!o.warmup) return o.decay;
  const double d = 1.0 - std::pow(1.0 + double(t) / o.warmup_gamma, -o.warmup_power);
  return std::max(std::min(d, o.decay), 0.0);
}

void ModelEma::update(const torch::nn::Module& net, int64_t step) {
  torch::NoGradGuard no_grad;
  const double decay = decay_at(o_, step);
  const auto live = live_tensors(net, avg_);
  for (size_t i = 0; i < live.size(); ++i) {
    torch::Tensor& e = avg_[i].second;
    if (e.is_floating_point()) {
      e.lerp_(live[i], 1.0 - decay);
    } else {
      e.copy_(live[i]);
    }
  }
}

void ModelEma::load(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                    const std::string& source) {
  torch::NoGradGuard no_grad;
  for (auto& [name, e] : avg_) {
    const torch::Tensor* found = nullptr;
    for (const auto& [n, t] : tensors)
      if (n == name) found = &t;
    FKD_CHECK(found, FormatError, "{}: the model EMA has no entry '{}'", source, name);
    FKD_CHECK(found->sizes() == e.sizes(), FormatError,
              "{}: the model EMA's '{}' has shape {}, the model {}", source, name,
              c10::str(found->sizes()), c10::str(e.sizes()));
    e.copy_(*found);
  }
}

ModelEma::Swap::Swap(const ModelEma& ema, torch::nn::Module& net)
    : live_(live_tensors(net, ema.avg_)) {
  torch::NoGradGuard no_grad;
  saved_.reserve(live_.size());
  for (size_t i = 0; i < live_.size(); ++i) {
    saved_.push_back(live_[i].detach().clone());
    live_[i].copy_(ema.avg_[i].second);
  }
}

ModelEma::Swap::~Swap() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < live_.size(); ++i) live_[i].copy_(saved_[i]);
}

}  // namespace fkd
