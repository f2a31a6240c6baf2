// An exponential moving average of a model's weights (timm's ModelEmaV3 semantics): after
// every optimizer step, each floating-point parameter and buffer e of the average moves
// toward the live value v as e = decay * e + (1 - decay) * v; integer buffers
// (num_batches_tracked) are copied.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace fkd {

class ModelEma {
 public:
  struct Options {
    double decay = 0.9998;  ///< --model-ema DECAY
    /// Decay warm-up (--model-ema-warmup): decay(t) = 1 - (1 + t / gamma)^-power, at most
    /// `decay`, so that early averages forget the random initialization quickly.
    bool warmup = false;
    double warmup_gamma = 1.0;
    double warmup_power = 2.0 / 3.0;
  };
  /// Starts the average at the model's current weights (same devices and layouts).
  ModelEma(const torch::nn::Module& net, Options o);

  /// The decay of the update after optimizer step `step` (1 = the first): 0 for the first
  /// update (the average starts as a copy), then `decay` or its warm-up (timm's get_decay
  /// with update_after_step 0 and min_decay 0). Pure.
  static double decay_at(const Options& o, int64_t step);
  /// Moves the average toward the model's weights after optimizer step `step`.
  void update(const torch::nn::Module& net, int64_t step);

  /// The averaged weights, by the model's state-dict names.
  const std::vector<std::pair<std::string, torch::Tensor>>& tensors() const { return avg_; }
  /// Replaces the average with `tensors` (from a checkpoint); every name of the model must be
  /// present with its shape (FormatError naming `source` and the entry otherwise).
  void load(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
            const std::string& source);

  /// While alive, `net` holds the averaged weights (evaluation, export); its own come back
  /// when it ends.
  class Swap {
   public:
    Swap(const ModelEma& ema, torch::nn::Module& net);
    ~Swap();
    Swap(const Swap&) = delete;
    Swap& operator=(const Swap&) = delete;

   private:
    std::vector<torch::Tensor> live_, saved_;
  };

 private:
  Options o_;
  std::vector<std::pair<std::string, torch::Tensor>> avg_;
};

}  // namespace fkd
