#include "fkd/loader.h"

#include <algorithm>
#include <numeric>

#include "fkd/allocator.h"
#include "fkd/error.h"
#include "fkd/rng.h"

namespace fkd {

namespace {
constexpr size_t kMaxBadListed = 20;

void check_options(const LoaderOptions& o) {
  FKD_CHECK(o.batch_size >= 1, ConfigError, "batch size {}: expected at least 1", o.batch_size);
  FKD_CHECK(o.workers >= 0, ConfigError, "--workers {}: expected >= 0", o.workers);
  FKD_CHECK(o.prefetch >= 1, ConfigError, "loader prefetch {}: expected at least 1", o.prefetch);
  FKD_CHECK(o.world >= 1 && o.rank >= 0 && o.rank < o.world, ConfigError,
            "loader slice: rank {} of {} does not exist", o.rank, o.world);
  FKD_CHECK(!o.host_memory.allocate == !o.host_memory.release, ConfigError,
            "loader host memory: allocate and release must be given together");
}
}  // namespace

namespace detail {

/// Host buffers of one size, recycled. acquire() hands out a buffer whose shared_ptr
/// deleter gives it back; up to `keep` returned buffers wait for reuse, beyond that they are
/// freed. The deleters hold the pool, so buffers may outlive the loader that made them.
/// Memory comes from the loader's HostAllocator (the heap, or pinned memory for a GPU).
class BatchBufferPool : public std::enable_shared_from_this<BatchBufferPool> {
 public:
  BatchBufferPool(size_t bytes, size_t keep, HostAllocator alloc)
      : bytes_(bytes), keep_(keep), alloc_(std::move(alloc)) {}
  ~BatchBufferPool() {
    for (void* p : free_) release(p);
  }

  std::shared_ptr<uint8_t[]> acquire() {
    void* buf = nullptr;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!free_.empty()) {
        buf = free_.back();
        free_.pop_back();
      } else {
        ++allocated_;
      }
    }
    // Left uninitialized: make_batch writes every row a batch holds.
    if (!buf) buf = alloc_.allocate ? alloc_.allocate(bytes_) : ::operator new(bytes_, kAlign);
    FKD_CHECK(buf, IoError, "out of memory: cannot allocate a {}-byte batch buffer", bytes_);
    auto self = shared_from_this();
    return std::shared_ptr<uint8_t[]>(static_cast<uint8_t*>(buf),
                                      [self](uint8_t* p) { self->give_back(p); });
  }

  size_t allocated() const {
    std::lock_guard<std::mutex> lk(mu_);
    return allocated_;
  }

 private:
  static constexpr std::align_val_t kAlign{64};  ///< a cache line (and any SIMD load)

  void give_back(void* p) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (free_.size() < keep_) {
        free_.push_back(p);
        return;
      }
    }
    release(p);
  }
  void release(void* p) const {
    if (alloc_.allocate) {
      alloc_.release(p);
    } else {
      ::operator delete(p, kAlign);
    }
  }

  const size_t bytes_, keep_;
  const HostAllocator alloc_;
  mutable std::mutex mu_;
  std::vector<void*> free_;
  size_t allocated_ = 0;
};

}  // namespace detail

namespace {

/// Batches claimed by workers and not yet handed to the consumer, at most: the prefetch
/// depth, but never fewer than the workers, or workers beyond it would sit idle.
int64_t window(const LoaderOptions& o) { return std::max({o.prefetch, o.workers, 1}); }

/// A pool sized for the loader: the rows of this rank's largest slice of a batch (batch_size
/// rows of m crops, sliced over the ranks) of c x h x w floats (or bytes, for uint8
/// batches); it keeps the batches that can be in flight at once (the window, the one the
/// consumer holds, and one more it may still hold while taking the next).
std::shared_ptr<detail::BatchBufferPool> make_pool(const LoaderOptions& o, int m, int c, int h,
                                                   int w) {
  configure_malloc();  // any program that loads data runs with the fkd binary's settings
  const size_t images = o.batch_size / size_t(m);
  const size_t rows = (images + size_t(o.world) - 1) / size_t(o.world) * size_t(m);
  const size_t value_bytes = o.uint8_nhwc ? 1 : sizeof(float);
  return std::make_shared<detail::BatchBufferPool>(rows * size_t(c) * h * w * value_bytes,
                                                   size_t(window(o)) + 2, o.host_memory);
}

}  // namespace

void RandomCropSource::crops(size_t index, int64_t epoch, int height, int width, CropPlan* out,
                             float* /*soft*/) const {
  for (int k = 0; k < per_image_; ++k) {
    Rng rng(seed_, RngStream::kAugment, {uint64_t(epoch), uint64_t(index), uint64_t(k)});
    out[k] = sample_crop(t_.crop, rng, height, width);
    out[k].id = uint32_t(k);
  }
}

Loader::Loader(std::shared_ptr<const Dataset> ds, const TrainTransform& t,
               std::shared_ptr<const CropSource> source, const LoaderOptions& opts)
    : ds_(std::move(ds)),
      train_(true),
      train_t_(t),
      source_(std::move(source)),
      opts_(opts),
      to_chw_(t.norm, ds_->channels()) {
  check_options(opts_);
  m_ = source_->crops_per_image();
  FKD_CHECK(m_ >= 1, ConfigError, "crops per image must be at least 1, got {}", m_);
  FKD_CHECK(opts_.batch_size % size_t(m_) == 0, ConfigError,
            "batch size {} is not a multiple of the {} crops per image", opts_.batch_size, m_);
  out_c_ = ds_->channels();
  out_h_ = out_w_ = t.crop.size;
  buffers_ = make_pool(opts_, m_, out_c_, out_h_, out_w_);
}

Loader::Loader(std::shared_ptr<const Dataset> ds, const EvalTransform& t, const LoaderOptions& opts)
    : ds_(std::move(ds)), train_(false), eval_t_(t), opts_(opts), to_chw_(t.norm, ds_->channels()) {
  check_options(opts_);
  out_c_ = ds_->channels();
  out_h_ = out_w_ = t.size;
  buffers_ = make_pool(opts_, 1, out_c_, out_h_, out_w_);
}

Loader::~Loader() { stop(); }

size_t Loader::num_batches() const {
  const size_t ipb = opts_.batch_size / size_t(m_);
  const size_t end = opts_.range_end ? std::min(opts_.range_end, ds_->size()) : ds_->size();
  const size_t n = end - std::min(opts_.range_begin, end);
  return opts_.drop_last ? n / ipb : (n + ipb - 1) / ipb;
}

void Loader::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_space_.notify_all();
  cv_ready_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void Loader::start_epoch(int64_t epoch) {
  stop();
  FKD_CHECK(opts_.batch_size >= size_t(m_), ConfigError, "batch size {} below crops per image {}",
            opts_.batch_size, m_);
  epoch_ = epoch;
  const size_t end = opts_.range_end ? std::min(opts_.range_end, ds_->size()) : ds_->size();
  const size_t begin = std::min(opts_.range_begin, end);
  FKD_CHECK(!(opts_.shuffle && (begin > 0 || end < ds_->size())), ConfigError,
            "a sample range cannot be shuffled");
  order_.resize(end - begin);
  std::iota(order_.begin(), order_.end(), uint32_t(begin));
  if (opts_.shuffle) {
    Rng rng(opts_.seed, RngStream::kOrder, {uint64_t(epoch)});
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
  }
  images_per_batch_ = opts_.batch_size / size_t(m_);
  batches_ = num_batches();
  {
    std::lock_guard<std::mutex> lk(mu_);
    ready_.clear();
    next_claim_ = next_yield_ = 0;
    stopping_ = false;
    error_ = nullptr;
  }
  for (int i = 0; i < opts_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

void Loader::worker_loop() {
  std::vector<uint8_t> scratch, hwc;
  for (;;) {
    int64_t b;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_space_.wait(lk, [&] {
        return stopping_ || next_claim_ >= int64_t(batches_) ||
               next_claim_ < next_yield_ + window(opts_);
      });
      if (stopping_ || next_claim_ >= int64_t(batches_)) return;
      b = next_claim_++;
    }
    try {
      Batch batch = make_batch(b, scratch, hwc);
      std::lock_guard<std::mutex> lk(mu_);
      ready_.emplace(b, std::move(batch));
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
      stopping_ = true;
    }
    cv_ready_.notify_all();
    cv_space_.notify_all();
  }
}

bool Loader::next(Batch& out) {
  if (next_yield_ >= int64_t(batches_)) return false;
  if (opts_.workers == 0) {
    std::vector<uint8_t> scratch, hwc;
    out = make_batch(next_yield_++, scratch, hwc);
    return true;
  }
  std::unique_lock<std::mutex> lk(mu_);
  cv_ready_.wait(lk, [&] { return error_ || ready_.count(next_yield_) > 0; });
  if (error_) std::rethrow_exception(error_);
  auto it = ready_.find(next_yield_);
  out = std::move(it->second);
  ready_.erase(it);
  ++next_yield_;
  lk.unlock();
  cv_space_.notify_all();
  return true;
}

Batch Loader::make_batch(int64_t b, std::vector<uint8_t>& scratch, std::vector<uint8_t>& hwc) {
  const size_t global_first = size_t(b) * images_per_batch_;
  const size_t global_last = std::min(global_first + images_per_batch_, order_.size());
  // This rank's slice of the batch's images; with one rank, all of them.
  const auto [slice_begin, slice_end] =
      slice_of(global_last - global_first, opts_.rank, opts_.world);
  const size_t first = global_first + slice_begin, last = global_first + slice_end;
  const size_t max_rows = (last - first) * size_t(m_);
  const size_t plane = size_t(out_c_) * out_h_ * out_w_;

  Batch batch;
  batch.index = b;
  batch.global_n = int((global_last - global_first) * size_t(m_));
  batch.c = out_c_;
  batch.h = out_h_;
  batch.w = out_w_;
  const auto buffer = buffers_->acquire();
  if (opts_.uint8_nhwc) {
    batch.pixels = buffer;
    batch.norm = train_ ? train_t_.norm : eval_t_.norm;
  } else {
    batch.images = std::shared_ptr<float[]>(buffer, reinterpret_cast<float*>(buffer.get()));
  }
  batch.targets.reserve(max_rows);
  batch.sample.reserve(max_rows);
  batch.crop.reserve(max_rows);
  batch.heights.reserve(max_rows);
  batch.widths.reserve(max_rows);
  if (train_) batch.plans.reserve(max_rows);
  std::vector<CropPlan> plans(static_cast<size_t>(m_));
  const int sc = train_ ? source_->soft_label_classes() : 0;
  batch.soft_classes = sc;
  if (sc > 0) batch.soft.resize(max_rows * size_t(sc));
  hwc.resize(size_t(out_h_) * out_w_ * out_c_);
  // A crop's pixels go straight into a uint8 batch, or through `hwc` into a float one.
  auto crop_out = [&](size_t r) {
    return batch.pixels ? batch.pixels.get() + r * plane : hwc.data();
  };
  auto finish_row = [&](size_t r) {
    if (!batch.pixels) to_chw_.convert(hwc.data(), out_h_, out_w_, batch.images.get() + r * plane);
  };

  size_t row = 0;
  for (size_t k = first; k < last; ++k) {
    const uint32_t idx = order_[k];
    ImageBand band;
    try {
      if (train_) {
        // Plan the crops as soon as the size is known, then decode only the rows they cover.
        band = ds_->load_rows(idx, [&](int height, int width) {
          source_->crops(idx, epoch_, height, width, plans.data(),
                         sc > 0 ? batch.soft.data() + row * size_t(sc) : nullptr);
          int lo = height, hi = 0;
          for (const CropPlan& p : plans) {
            lo = std::min(lo, std::max(0, p.box.top));
            hi = std::max(hi, std::min(height, p.box.top + p.box.height));
          }
          return hi > lo ? RowRange{lo, hi} : RowRange{0, height};
        });
      } else {
        band.image = ds_->load(idx);
      }
    } catch (const DataError& e) {  // bad data skips its sample; anything else stops
      bad_sample(idx, e);
      continue;
    } catch (const IoError& e) {
      bad_sample(idx, e);
      continue;
    }
    const int64_t target = ds_->label(idx);
    const Image& img = band.image;
    if (train_) {
      for (int c = 0; c < m_; ++c) {
        PixelBox box = plans[size_t(c)].box;
        box.top -= band.first_row;  // band-relative
        resized_crop(img, box, plans[size_t(c)].flip, out_h_, out_w_, train_t_.interp,
                     crop_out(row), scratch);
        finish_row(row);
        batch.plans.push_back(plans[size_t(c)]);
        batch.heights.push_back(band.full_height);
        batch.widths.push_back(img.width);
        batch.targets.push_back(target);
        batch.sample.push_back(idx);
        batch.crop.push_back(plans[size_t(c)].id);
        ++row;
      }
    } else {
      const Image resized =
          eval_t_.resize > 0 ? resize_shorter(img, eval_t_.resize, eval_t_.interp) : img;
      const PixelBox box = center_box(resized.height, resized.width, out_h_, out_w_);
      resized_crop(resized, box, false, out_h_, out_w_, eval_t_.interp, crop_out(row), scratch);
      finish_row(row);
      batch.targets.push_back(target);
      batch.sample.push_back(idx);
      batch.crop.push_back(0);
      batch.heights.push_back(img.height);
      batch.widths.push_back(img.width);
      ++row;
    }
  }
  batch.n = int(row);
  batch.soft.resize(row * size_t(sc));
  return batch;
}

void Loader::bad_sample(uint32_t idx, const Error& e) {
  // Every per-sample message names its file: decoders do, crop sources may not.
  const std::string name = ds_->item_name(idx);
  std::string message = e.what();
  if (message.find(name) == std::string::npos) {
    message = fmt::format("{}/{}: {}", ds_->root(), name, message);
  }
  if (opts_.strict) throw DataError(message);
  std::lock_guard<std::mutex> lk(mu_);
  if (bad_ids_.insert(idx).second && bad_.size() < kMaxBadListed) bad_.push_back({name, message});
}

size_t Loader::skipped() const {
  std::lock_guard<std::mutex> lk(mu_);
  return bad_ids_.size();
}

std::vector<BadSample> Loader::bad_samples() const {
  std::lock_guard<std::mutex> lk(mu_);
  return bad_;
}

size_t Loader::buffers_allocated() const { return buffers_->allocated(); }

}  // namespace fkd
