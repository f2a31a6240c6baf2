// The teacher batcher of `fkd label`: crops stream through fixed-size teacher batches, each
// at the batch position it has in one uninterrupted, unsharded run.
//
// Crop c of image i is row r = i * crops + c of that run, at position r mod B of its
// teacher batch (B rows). A run that starts at image `first` (a shard, a resumed run, a
// repaired record) leaves the first (first * crops) mod B rows of its first batch zero and
// drops their outputs; the last batch is zero-padded. Kernels may round a row differently by
// its position (vector tails), so only this way do resumed, sharded and repaired runs write
// bit-identical labels.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include <torch/torch.h>

namespace fkd {

class TeacherBatcher {
 public:
  /// [B, channels, size, size] float32 (CPU) -> probabilities [B, num_classes] float32 (any
  /// device): the teacher and its softmax.
  using Forward = std::function<torch::Tensor(const torch::Tensor&)>;
  /// Called once per image, in image order, when all of its crops are labeled:
  /// `probs` holds [crops, num_classes] float32.
  using Emit =
      std::function<void(uint64_t image, uint32_t height, uint32_t width, const float* probs)>;

  TeacherBatcher(int64_t batch, int channels, int size, int crops_per_image, int num_classes,
                 uint64_t first_image, Forward forward, Emit emit);

  /// Adds the crops of consecutive images: x [n, channels, size, size] float32 on the CPU,
  /// rows grouped by image (crops_per_image each); image[k], height[k], width[k] describe
  /// the k-th image of the rows. Runs the teacher on every batch this fills.
  void add(const torch::Tensor& x, const std::vector<uint64_t>& image,
           const std::vector<uint32_t>& height, const std::vector<uint32_t>& width);
  /// Runs the last, partial batch; throws when an image's crops were not all given.
  void finish();
  /// Teacher batches run so far.
  int64_t batches_run() const { return batches_; }

 private:
  void run(int64_t valid);

  struct Pending {
    uint64_t image;
    uint32_t height, width;
  };
  int64_t batch_;
  int crops_, classes_;
  Forward forward_;
  Emit emit_;
  torch::Tensor in_;             ///< [B, channels, size, size] the batch being filled
  int64_t fill_ = 0;             ///< rows of in_ filled (or skipped)
  int64_t skip_ = 0;             ///< leading rows of in_ that hold no crop of this run
  std::vector<float> probs_;     ///< [rows, classes] of images not yet complete
  std::deque<Pending> pending_;  ///< images whose rows are in flight, in order
  int64_t batches_ = 0;
};

}  // namespace fkd
