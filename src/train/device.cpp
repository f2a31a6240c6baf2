#include "device.h"

#include <thread>

#include "fkd/error.h"
#include "fkd/launch.h"
#include "fkd/train.h"

namespace fkd {

int configure_threads(int threads) {
  FKD_CHECK(threads >= 0, ConfigError, "--threads {}: expected >= 0 (0 = all cores)", threads);
  // 0: every core, or this node's cores shared among its ranks in a distributed run.
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  const int n =
      threads > 0 ? threads : std::max(1, cores / dist_env_from_environment().local_world);
  torch::set_num_threads(n);
  return n;
}

torch::Device parse_device(const std::string& spec) {
  std::unique_ptr<torch::Device> d;
  try {
    d = std::make_unique<torch::Device>(spec);
  } catch (const c10::Error&) {
    fail<ConfigError>("--device '{}': expected cpu, cuda or cuda:N", spec);
  }
  if (d->is_cuda()) {
    FKD_CHECK(torch::cuda::is_available(), ConfigError,
              "--device {}: this fkd was built against a LibTorch without CUDA, or no GPU is "
              "visible (build with CMAKE_PREFIX_PATH pointing to a CUDA LibTorch)",
              spec);
    const int idx = d->has_index() ? d->index() : 0;
    FKD_CHECK(idx < int(torch::cuda::device_count()), ConfigError,
              "--device {}: only {} CUDA device(s) visible", spec, torch::cuda::device_count());
  } else {
    FKD_CHECK(d->is_cpu(), ConfigError, "--device '{}': expected cpu, cuda or cuda:N", spec);
  }
  return *d;
}

torch::Device rank_device(const torch::Device& d, int local_rank) {
  if (!d.is_cuda() || d.has_index() || local_rank == 0) return d;
  FKD_CHECK(local_rank < int(torch::cuda::device_count()), ConfigError,
            "--device cuda: rank {} on this node needs GPU {}, but only {} are visible", local_rank,
            local_rank, torch::cuda::device_count());
  return torch::Device(torch::kCUDA, c10::DeviceIndex(local_rank));
}

torch::Tensor batch_images(const Batch& b, const torch::Device& device, bool channels_last) {
  if (b.pixels) return normalize_pixels(batch_pixels(b, device), b.norm, channels_last);
  auto keep = b.images;
  auto t = torch::from_blob(
      b.images.get(), {b.n, b.c, b.h, b.w}, [keep](void*) {}, torch::kFloat32);
  if (!device.is_cpu()) t = t.to(device, /*non_blocking=*/true);
  return channels_last ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}

torch::Tensor batch_pixels(const Batch& b, const torch::Device& device) {
  FKD_CHECK(b.pixels, Error, "internal: batch {} carries no uint8 pixels", b.index);
  auto keep = b.pixels;
  auto t = torch::from_blob(
      b.pixels.get(), {b.n, b.h, b.w, b.c}, [keep](void*) {}, torch::kUInt8);
  return device.is_cpu() ? t : t.to(device, /*non_blocking=*/true);
}

torch::Tensor normalize_pixels(const torch::Tensor& nhwc, const Normalize& norm,
                               bool channels_last) {
  const int64_t c = nhwc.size(3);
  const auto opts = torch::TensorOptions(nhwc.device()).dtype(torch::kFloat32);
  const auto mean = torch::from_blob(const_cast<float*>(norm.mean), {1, c, 1, 1}, torch::kFloat32);
  const auto std = torch::from_blob(const_cast<float*>(norm.std), {1, c, 1, 1}, torch::kFloat32);
  // The permuted view has channels-last strides, which the float tensor keeps; the same
  // operations in the same order as the loader's float path, (v / 255 - mean) / std.
  auto x = nhwc.permute({0, 3, 1, 2}).to(torch::kFloat32);
  if (!channels_last) x = x.contiguous();
  return x.div_(255.0f).sub_(mean.to(opts)).div_(std.to(opts));
}

torch::Tensor batch_targets(const Batch& b, const torch::Device& device) {
  auto t = torch::tensor(b.targets, torch::kLong);
  return device.is_cpu() ? t : t.to(device);
}

torch::Tensor batch_soft_labels(const Batch& b, const torch::Device& device) {
  FKD_CHECK(b.soft_classes > 0 && b.soft.size() == size_t(b.n) * size_t(b.soft_classes), Error,
            "internal: batch {} carries no soft labels", b.index);
  return torch::from_blob(const_cast<float*>(b.soft.data()), {b.n, b.soft_classes}, torch::kFloat32)
      .to(device);
}

void place_model(torch::nn::Module& net, const torch::Device& device, bool channels_last) {
  net.to(device);
  if (!channels_last) return;
  torch::NoGradGuard no_grad;
  for (auto& p : net.parameters()) {
    // Fresh channels-last strides even where a 1x1 kernel's would be ambiguous, so that
    // every weight has the strides its gradient will have (the gradient all-reduce copies
    // gradients into buckets laid out like the weights).
    if (p.dim() == 4) {
      p.set_data(torch::empty(p.sizes(), p.options().memory_format(at::MemoryFormat::ChannelsLast))
                     .copy_(p.data()));
    }
  }
}

}  // namespace fkd
