// Placing batches and models on the compute device.
#pragma once
#include <memory>
#include <string>

#include <torch/torch.h>

#include "fkd/loader.h"

namespace fkd {

/// Parses "cpu", "cuda", "cuda:N"; a clear ConfigError when CUDA is asked for but absent.
torch::Device parse_device(const std::string& spec);
/// The device of a data-parallel rank: "cuda" without an index is the GPU of the rank's
/// place on its node (LOCAL_RANK), one GPU per process as torchrun intends; anything else
/// as given.
torch::Device rank_device(const torch::Device& d, int local_rank);

/// A batch's images as a tensor on `device` ([n, c, h, w] float32); on the CPU a float
/// batch shares the batch's memory unless channels_last asks for NHWC strides. A uint8 batch
/// is copied as bytes and normalized on the device (normalize_pixels).
torch::Tensor batch_images(const Batch& b, const torch::Device& device, bool channels_last);
/// A uint8 batch's pixels (LoaderOptions::uint8_nhwc) as uint8 [n, h, w, c] on `device`
/// (on the CPU, the batch's memory).
torch::Tensor batch_pixels(const Batch& b, const torch::Device& device);
/// uint8 [n, h, w, c] pixels -> normalized float32 [n, c, h, w] on their device,
/// channels-last strides if asked: what the loader's float path computes, within rounding.
torch::Tensor normalize_pixels(const torch::Tensor& nhwc, const Normalize& norm,
                               bool channels_last);
/// A batch's class indices, int64 [n] on `device`.
torch::Tensor batch_targets(const Batch& b, const torch::Device& device);
/// A batch's stored soft labels, float32 [n, soft_classes] on `device` (the batch must
/// carry them); on the CPU it shares the batch's memory, so it lives as long as the batch.
torch::Tensor batch_soft_labels(const Batch& b, const torch::Device& device);

/// Page-locked host memory for loader batches when `device` is a GPU (copies from it run
/// asynchronously), else the heap (an empty HostAllocator).
HostAllocator pinned_host_memory(const torch::Device& device);

/// One training batch on the device: images (float32 [n, c, h, w], normalized), class
/// indices (int64 [n]) and, when the batch has them, soft labels (float32 [n, classes]).
struct DeviceBatch {
  Batch batch;  ///< the host batch (its rows' samples, crops, plans)
  torch::Tensor x, y, soft;
};

/// Feeds a loader's batches to the device one ahead. On a GPU the next batch's copies (from
/// pinned memory: images or uint8 pixels, class indices, soft labels) and its
/// normalization are queued on a side stream while the model works on the current one; the
/// compute stream waits for them through an event. On the CPU the batch's own memory is
/// used, with no copy.
class DeviceFeed {
 public:
  DeviceFeed(Loader& loader, const torch::Device& device, bool channels_last);
  ~DeviceFeed();
  DeviceFeed(const DeviceFeed&) = delete;
  DeviceFeed& operator=(const DeviceFeed&) = delete;
  /// Starts `epoch` of the loader.
  void start_epoch(int64_t epoch);
  /// The next batch, ready for use on the current stream; false when the epoch is done.
  bool next(DeviceBatch& out);

 private:
  struct Pending;
  void issue();  ///< takes the loader's next batch and queues its copies
  Loader& loader_;
  torch::Device device_;
  bool channels_last_;
  std::unique_ptr<Pending> pending_;  ///< the batch whose copies are in flight, if any
  std::unique_ptr<Pending> retired_;  ///< the batch handed out last: its pixel buffer
  bool done_ = true;
};

/// Moves a model to `device`, with its 4-D weights in channels-last layout if asked.
void place_model(torch::nn::Module& net, const torch::Device& device, bool channels_last);

}  // namespace fkd
