#include "device.h"

#include <map>
#include <mutex>
#include <thread>

#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstring>

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

HostAllocator pinned_host_memory(const torch::Device& device) {
  if (!device.is_cuda()) return {};
  // The pinned allocator hands out DataPtrs; the loader deals in raw pointers, so the
  // DataPtrs wait here until their buffers come back.
  struct Pinned {
    std::mutex mu;
    std::map<void*, c10::DataPtr> live;
  };
  auto pinned = std::make_shared<Pinned>();
  HostAllocator a;
  a.allocate = [pinned](size_t bytes) -> void* {
    c10::DataPtr p = at::detail::getCUDAHooks().getPinnedMemoryAllocator()->allocate(bytes);
    void* raw = p.get();
    std::lock_guard<std::mutex> lk(pinned->mu);
    pinned->live.emplace(raw, std::move(p));
    return raw;
  };
  a.release = [pinned](void* raw) {
    c10::DataPtr p;
    {
      std::lock_guard<std::mutex> lk(pinned->mu);
      auto it = pinned->live.find(raw);
      if (it == pinned->live.end()) return;
      p = std::move(it->second);
      pinned->live.erase(it);
    }
  };
  return a;
}

/// Blocks the host until the device has passed `e` (LibTorch 1.13's c10::Event has no
/// synchronize; by the time this is asked the copies are nearly always long done).
void wait_for(const c10::Event& e) {
  while (!e.query()) std::this_thread::yield();
}

struct DeviceFeed::Pending {
  DeviceBatch b;
  std::shared_ptr<void> host;          ///< the batch's pixel buffer, while a copy may read it
  std::unique_ptr<c10::Event> copied;  ///< recorded on the side stream after the copies
};

DeviceFeed::DeviceFeed(Loader& loader, const torch::Device& device, bool channels_last)
    : loader_(loader), device_(device), channels_last_(channels_last) {}

DeviceFeed::~DeviceFeed() {
  // Host buffers go back to the loader's pool only once no copy reads them.
  for (const auto* p : {&pending_, &retired_})
    if (*p && (*p)->copied) wait_for(*(*p)->copied);
}

void DeviceFeed::start_epoch(int64_t epoch) {
  if (pending_ && pending_->copied) wait_for(*pending_->copied);
  pending_.reset();
  loader_.start_epoch(epoch);
  done_ = false;
  issue();
}

/// Host data as a tensor on the device: through a pinned staging tensor on a GPU, so the
/// copy is asynchronous.
template <typename T>
torch::Tensor to_device_async(const std::vector<T>& v, std::vector<int64_t> shape,
                              torch::ScalarType dtype, const torch::Device& device) {
  auto host = torch::empty(shape, torch::TensorOptions().dtype(dtype).pinned_memory(true));
  std::memcpy(host.data_ptr(), v.data(), v.size() * sizeof(T));
  return host.to(device, /*non_blocking=*/true);
}

void DeviceFeed::issue() {
  auto p = std::make_unique<Pending>();
  if (!loader_.next(p->b.batch)) {
    done_ = true;
    return;
  }
  const Batch& b = p->b.batch;
  if (b.images) p->host = b.images;
  if (b.pixels) p->host = b.pixels;
  if (device_.is_cpu()) {
    p->b.x = batch_images(b, device_, channels_last_);
    p->b.y = batch_targets(b, device_);
    if (b.soft_classes > 0) p->b.soft = batch_soft_labels(b, device_);
    pending_ = std::move(p);
    return;
  }
  const c10::impl::VirtualGuardImpl impl(device_.type());
  const c10::Stream side = impl.getStreamFromGlobalPool(device_);
  {
    const c10::StreamGuard on_side(side);
    p->b.x = batch_images(b, device_, channels_last_);
    p->b.y = to_device_async(b.targets, {b.n}, torch::kLong, device_);
    if (b.soft_classes > 0) {
      p->b.soft = to_device_async(b.soft, {b.n, b.soft_classes}, torch::kFloat32, device_);
    }
  }
  p->copied = std::make_unique<c10::Event>(device_.type());
  p->copied->record(side);
  pending_ = std::move(p);
}

bool DeviceFeed::next(DeviceBatch& out) {
  if (!pending_) return false;
  std::unique_ptr<Pending> p = std::move(pending_);
  if (p->copied) {
    const c10::impl::VirtualGuardImpl impl(device_.type());
    const c10::Stream compute = impl.getStream(device_);
    p->copied->block(compute);
    // The tensors were made on the side stream and are used on the compute stream: the
    // caching allocator must not reuse their memory before the compute stream is done.
    for (const torch::Tensor* t : {&p->b.x, &p->b.y, &p->b.soft})
      if (t->defined()) t->record_stream(compute);
  }
  // The batch handed out before this one: its copies have completed by now (this one's
  // were queued after them), so its host memory may return to the loader.
  if (retired_ && retired_->copied) wait_for(*retired_->copied);
  out = std::move(p->b);
  retired_ = std::move(p);
  if (!done_) issue();
  return true;
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
