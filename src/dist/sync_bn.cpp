#include "sync_bn.h"

#include <torch/torch.h>

#include "fkd/error.h"

namespace fkd {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

/// y = (x - mean) * invstd * weight + bias, where mean and invstd are the global batch's;
/// backward reduces sum(dy) and sum(dy * x_hat) over the ranks (PyTorch's SyncBatchNorm).
struct SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& mean, const torch::Tensor& invstd, double total,
                               Distributed* dist) {
    const int64_t c = x.size(1);
    const auto x_hat = (x - mean.view({1, c, 1, 1})) * invstd.view({1, c, 1, 1});
    ctx->save_for_backward({x_hat, weight, invstd});
    ctx->saved_data["total"] = total;
    ctx->saved_data["dist"] = int64_t(reinterpret_cast<intptr_t>(dist));
    return x_hat * weight.view({1, c, 1, 1}) + bias.view({1, c, 1, 1});
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto &x_hat = saved[0], &weight = saved[1], &invstd = saved[2];
    const double total = ctx->saved_data["total"].toDouble();
    auto* dist = reinterpret_cast<Distributed*>(intptr_t(ctx->saved_data["dist"].toInt()));
    const auto dy = grad_outputs[0];
    const int64_t c = x_hat.size(1);
    const auto sum_dy = dy.sum({0, 2, 3});
    const auto sum_dy_xhat = (dy * x_hat).sum({0, 2, 3});
    // Gradient statistics of the whole batch; the parameters' own gradients stay local
    // (the gradient all-reduce averages them like every other parameter's).
    std::vector<torch::Tensor> global = {torch::cat({sum_dy, sum_dy_xhat}).contiguous()};
    dist->all_reduce_sum(global, "the SyncBatchNorm backward pass");
    const auto g_dy = global[0].narrow(0, 0, c) / total;
    const auto g_dy_xhat = global[0].narrow(0, c, c) / total;
    const auto dx = (weight * invstd).view({1, c, 1, 1}) *
                    (dy - g_dy.view({1, c, 1, 1}) - x_hat * g_dy_xhat.view({1, c, 1, 1}));
    return {dx,
            sum_dy_xhat,
            sum_dy,
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

class SyncBatchNorm final : public BatchNormSync {
 public:
  explicit SyncBatchNorm(Distributed& dist) : dist_(dist) {}

  torch::Tensor forward(const torch::Tensor& x, const Layer& bn) override {
    const int64_t c = x.size(1);
    torch::Tensor mean, invstd;
    double total = 0;
    {
      torch::NoGradGuard no_grad;
      // Each rank's count, mean and sum of squared deviations, combined exactly (Chan et
      // al.): sums of squares of the raw values would lose the variance to cancellation.
      const double n = double(x.numel() / std::max<int64_t>(c, 1));
      const auto xd = x.to(torch::kDouble);
      const auto local_mean = n > 0 ? xd.mean({0, 2, 3}) : torch::zeros({c}, xd.options());
      const auto local_m2 = n > 0 ? (xd - local_mean.view({1, c, 1, 1})).pow(2).sum({0, 2, 3})
                                  : torch::zeros({c}, xd.options());
      std::vector<torch::Tensor> sums = {
          torch::cat({torch::full({1}, n, xd.options()), local_mean * n, local_m2})};
      dist_.all_reduce_sum(sums, "the SyncBatchNorm statistics");
      total = sums[0][0].item<double>();
      FKD_CHECK(total > 1, DataError, "SyncBatchNorm: {} values per channel in the whole batch",
                total);
      const auto global_mean = sums[0].narrow(0, 1, c) / total;
      // M2 = sum_r M2_r + n_r (mean_r - mean)^2: the second term needs each rank's mean
      // against the global one, one more reduction of C values.
      std::vector<torch::Tensor> spread = {(local_mean - global_mean).pow(2) * n};
      dist_.all_reduce_sum(spread, "the SyncBatchNorm statistics");
      const auto m2 = sums[0].narrow(0, 1 + c, c) + spread[0];
      const auto var = m2 / total;
      const double eps = bn.eps;
      mean = global_mean.to(x.scalar_type());
      invstd = (var + eps).rsqrt().to(x.scalar_type());
      if (bn.running_mean.defined()) {
        const double momentum = bn.momentum;
        bn.running_mean.mul_(1 - momentum).add_(mean, momentum);
        bn.running_var.mul_(1 - momentum).add_((m2 / (total - 1)).to(x.scalar_type()), momentum);
        bn.num_batches_tracked.add_(1);
      }
    }
    return SyncBatchNormFunction::apply(x, bn.weight, bn.bias, mean, invstd, total, &dist_);
  }

 private:
  Distributed& dist_;
};

}  // namespace

std::shared_ptr<BatchNormSync> make_sync_batch_norm(Distributed& dist) {
  return std::make_shared<SyncBatchNorm>(dist);
}

}  // namespace fkd
