// fkd's BatchNorm2d: torch::nn::BatchNorm2d's state and arithmetic, with an optional
// BatchNormSync for training-mode statistics over the ranks of a data-parallel run.
#include <fmt/core.h>

#include "fkd/error.h"
#include "zoo_internal.h"

namespace fkd::models {

std::string float_literal(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

BatchNorm2dImpl::BatchNorm2dImpl(const torch::nn::BatchNormOptions& options_) : options(options_) {
  reset();
}

void BatchNorm2dImpl::reset() {
  // Registration order and names as torch::nn::BatchNorm2d's, so state dicts and checkpoints
  // read either way.
  const int64_t c = options.num_features();
  if (options.affine()) {
    weight = register_parameter("weight", torch::ones({c}));
    bias = register_parameter("bias", torch::zeros({c}));
  }
  if (options.track_running_stats()) {
    running_mean = register_buffer("running_mean", torch::zeros({c}));
    running_var = register_buffer("running_var", torch::ones({c}));
    num_batches_tracked = register_buffer("num_batches_tracked", torch::tensor(0, torch::kLong));
  }
}

torch::Tensor BatchNorm2dImpl::forward(const torch::Tensor& x) {
  const bool track = options.track_running_stats();
  double factor = options.momentum().value_or(0.0);
  if (is_training() && track) {
    if (sync_)
      return sync_->forward(x, {weight, bias, running_mean, running_var, num_batches_tracked,
                                options.momentum().value_or(0.1), options.eps()});
    num_batches_tracked += 1;
    // momentum None: the cumulative moving average, as PyTorch.
    if (!options.momentum()) factor = 1.0 / num_batches_tracked.item<double>();
  }
  return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training() || !track,
                           factor, options.eps(), /*cudnn_enabled=*/true);
}

void BatchNorm2dImpl::pretty_print(std::ostream& stream) const {
  stream << fmt::format("BatchNorm2d({}, eps={}, momentum={}, affine={}, track_running_stats={})",
                        options.num_features(), options.eps(),
                        options.momentum() ? fmt::format("{}", *options.momentum()) : "None",
                        options.affine(), options.track_running_stats());
}

std::string BatchNorm2dImpl::script_forward() const {
  FKD_CHECK(options.track_running_stats(), ConfigError,
            "export_torchscript: BatchNorm2d without running statistics is not supported");
  return fmt::format(
      "\ndef forward(self, x: Tensor) -> Tensor:\n"
      "    return torch.batch_norm(x, {}, {}, self.running_mean, self.running_var, False, {}, "
      "{}, True)\n",
      weight.defined() ? "self.weight" : "None", bias.defined() ? "self.bias" : "None",
      float_literal(options.momentum().value_or(0.1)), float_literal(options.eps()));
}

}  // namespace fkd::models
