// The multi-threaded data loader: worker threads decode and augment whole batches, a
// bounded window of batches is in flight, and batches come out in order.
//
// Determinism: the sample order of an epoch and every crop/flip are pure functions of
// (seed, epoch, sample index, crop index) — see rng.h — so the sequence of batches is
// identical for any number of workers, and a resumed run sees the same data as an
// unbroken one.
//
// Memory: each batch's image buffer comes from a small pool the loader keeps and goes back
// to it when the last copy of the Batch's `images` is released, so batches after the first
// few reuse memory that is already mapped. A 128-crop batch at 224 px is 77 MB, above
// glibc's largest mmap threshold: allocated fresh, every batch would fault in 18,816 new
// pages. Each loader also applies fkd's malloc settings (allocator.h) once per process.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/transforms.h"

namespace fkd {

namespace detail {
class BatchBufferPool;
}

/// Decides the crops cut from one decoded image (random crops, or crops replayed from a
/// label store). Called concurrently from worker threads: implementations are pure.
class CropSource {
 public:
  virtual ~CropSource() = default;
  /// Crops cut from each decoded image (m >= 1).
  virtual int crops_per_image() const = 0;
  /// Width of the soft label paired with each crop (the class count), or 0 when the
  /// source gives none and batches carry only class indices.
  virtual int soft_label_classes() const { return 0; }
  /// Writes crops_per_image() crops of sample `index` (an image of height x width) for
  /// `epoch` into `out`, and, when soft_label_classes() > 0, their dense soft labels into
  /// `soft` [crops_per_image, soft_label_classes] (else `soft` is null).
  virtual void crops(size_t index, int64_t epoch, int height, int width, CropPlan* out,
                     float* soft) const = 0;
};

/// Random training crops drawn with a TrainTransform (RandomResizedCrop / padded RandomCrop,
/// flip), `per_image` independent crops of each decoded image.
class RandomCropSource final : public CropSource {
 public:
  RandomCropSource(TrainTransform t, uint64_t seed, int per_image = 1)
      : t_(t), seed_(seed), per_image_(per_image) {}
  int crops_per_image() const override { return per_image_; }
  void crops(size_t index, int64_t epoch, int height, int width, CropPlan* out,
             float* soft) const override;

 private:
  TrainTransform t_;
  uint64_t seed_;
  int per_image_;
};

/// Where batch buffers live: the heap by default; a consumer that copies batches to a GPU
/// supplies page-locked (pinned) memory, from which copies run asynchronously. Both set or
/// neither; allocate returns null when out of memory.
struct HostAllocator {
  std::function<void*(size_t bytes)> allocate;
  std::function<void(void* p)> release;
};

struct LoaderOptions {
  size_t batch_size = 128;  ///< samples (crops) per batch; a multiple of crops_per_image
  bool shuffle = true;      ///< a fresh permutation of the samples every epoch
  bool drop_last = false;   ///< drop the last, incomplete batch
  uint64_t seed = 0;        ///< seeds the sample order
  int workers = 1;          ///< worker threads; 0 = produce batches in the calling thread
  int prefetch = 4;         ///< batches decoded ahead (bounded memory); at least `workers`
  bool strict = false;      ///< a bad sample is fatal instead of skipped
  /// Only samples [range_begin, range_end) in id order (labeling a shard, resuming);
  /// range_end 0 = all samples. Requires shuffle = false.
  size_t range_begin = 0;
  size_t range_end = 0;
  /// Data parallelism: this process is rank `rank` of `world` and gets its slice of every
  /// batch (slice_of()); the batches, their samples and their crops are those of one
  /// process, for any world size.
  int rank = 0;
  int world = 1;
  /// Batches carry the crops' uint8 pixels, NHWC (Batch::pixels), instead of normalized
  /// float32 NCHW images: a quarter of the bytes to write and to copy to a device, which
  /// converts them (to_float = pixel / 255, then (x - mean) / std, as the float path).
  bool uint8_nhwc = false;
  HostAllocator host_memory;  ///< where batch buffers are allocated
};

/// Rank r's share of n items split over `world` ranks: [n * r / world, n * (r + 1) / world).
/// Contiguous and balanced (sizes differ by at most one); the shares tile [0, n).
inline std::pair<size_t, size_t> slice_of(size_t n, int rank, int world) {
  return {n * size_t(rank) / size_t(world), n * size_t(rank + 1) / size_t(world)};
}

/// One batch. Rows of a multi-crop batch are grouped by image: image k's crops are rows
/// k*m .. k*m+m-1.
struct Batch {
  int64_t index = 0;  ///< batch number within the epoch
  int n = 0, c = 0, h = 0, w = 0;
  /// Rows of the whole batch over every rank (LoaderOptions::world), skipped samples
  /// included: what a data-parallel step averages over. n when the loader is not sliced.
  int global_n = 0;
  /// [n, c, h, w] float32, normalized (null for uint8 batches). Holds room for a full batch;
  /// a pooled buffer that returns to its loader when the last copy of this pointer is
  /// released.
  std::shared_ptr<float[]> images;
  /// [n, h, w, c] uint8 pixels of the crops (LoaderOptions::uint8_nhwc; `images` is then
  /// null), to be normalized with `norm`. Pooled like `images`.
  std::shared_ptr<uint8_t[]> pixels;
  Normalize norm;                ///< the normalization `pixels` still need
  std::vector<int64_t> targets;  ///< [n] class indices
  std::vector<uint32_t> sample;  ///< [n] dataset index of each row
  std::vector<uint32_t> crop;    ///< [n] crop id of each row within its image (CropPlan::id)
  std::vector<CropPlan> plans;   ///< [n] crop box and flip of each row (empty in eval)
  int soft_classes = 0;          ///< width of each soft label; 0 = none
  std::vector<float> soft;       ///< [n, soft_classes] soft labels (FKD), else empty
  std::vector<int32_t> heights;  ///< [n] full height of each row's source image
  std::vector<int32_t> widths;   ///< [n] full width of each row's source image
};

/// A sample that failed to load.
struct BadSample {
  std::string name;   ///< dataset item name (path)
  std::string error;  ///< the decoder's one-line message
};

class Loader {
 public:
  /// Training loader: crops from `source`, pixels transformed with t's size/interp/norm.
  Loader(std::shared_ptr<const Dataset> ds, const TrainTransform& t,
         std::shared_ptr<const CropSource> source, const LoaderOptions& opts);
  /// Evaluation loader: Resize + CenterCrop, no randomness.
  Loader(std::shared_ptr<const Dataset> ds, const EvalTransform& t, const LoaderOptions& opts);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  /// Batches in one epoch.
  size_t num_batches() const;
  /// Starts producing the batches of `epoch` (stops any epoch in progress).
  void start_epoch(int64_t epoch);
  /// The next batch of the current epoch, in order; false when the epoch is done.
  /// A sample whose data is bad (DataError, IoError) is skipped and counted, or in strict
  /// mode stops the epoch; any other error of a worker (a damaged label store, say) is
  /// rethrown here.
  bool next(Batch& out);
  /// Distinct samples skipped so far because they failed to load (all epochs).
  size_t skipped() const;
  /// The first few bad samples, for the end-of-run summary.
  std::vector<BadSample> bad_samples() const;
  /// Batch image buffers allocated so far (all epochs): bounded by the batches alive at once
  /// (those in flight and those the consumer holds), not by the batches made.
  size_t buffers_allocated() const;
  const Dataset& dataset() const { return *ds_; }

 private:
  void stop();
  void worker_loop();
  /// A sample that failed with bad data: skipped and counted, or (strict) fatal.
  void bad_sample(uint32_t idx, const Error& e);
  Batch make_batch(int64_t b, std::vector<uint8_t>& scratch, std::vector<uint8_t>& hwc);

  std::shared_ptr<const Dataset> ds_;
  bool train_;
  TrainTransform train_t_;
  EvalTransform eval_t_;
  std::shared_ptr<const CropSource> source_;
  LoaderOptions opts_;
  int m_ = 1;  ///< crops per image
  int out_c_ = 0, out_h_ = 0, out_w_ = 0;
  ChwConverter to_chw_;  ///< the transform's normalization, prepared once
  std::shared_ptr<detail::BatchBufferPool> buffers_;

  // Epoch state.
  int64_t epoch_ = 0;
  std::vector<uint32_t> order_;  ///< sample order of this epoch
  size_t images_per_batch_ = 0;
  size_t batches_ = 0;

  // Producer/consumer state, guarded by mu_.
  mutable std::mutex mu_;
  std::condition_variable cv_ready_, cv_space_;
  std::map<int64_t, Batch> ready_;
  int64_t next_claim_ = 0, next_yield_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
  std::set<uint32_t> bad_ids_;  ///< distinct samples that failed to load
  std::vector<BadSample> bad_;
};

}  // namespace fkd
