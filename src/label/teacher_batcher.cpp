#include "teacher_batcher.h"

#include "fkd/error.h"

namespace fkd {

TeacherBatcher::TeacherBatcher(int64_t batch, int channels, int size, int crops_per_image,
                               int num_classes, uint64_t first_image, Forward forward, Emit emit)
    : batch_(batch),
      crops_(crops_per_image),
      classes_(num_classes),
      forward_(std::move(forward)),
      emit_(std::move(emit)) {
  FKD_CHECK(batch >= 1 && crops_per_image >= 1 && num_classes >= 1, ConfigError,
            "teacher batcher: batch {}, crops {}, classes {} must be positive", batch,
            crops_per_image, num_classes);
  in_ = torch::empty({batch, channels, size, size}, torch::kFloat32);
  fill_ = skip_ = int64_t((first_image * uint64_t(crops_per_image)) % uint64_t(batch));
  if (skip_ > 0) in_.narrow(0, 0, skip_).zero_();
}

void TeacherBatcher::add(const torch::Tensor& x, const std::vector<uint64_t>& image,
                         const std::vector<uint32_t>& height, const std::vector<uint32_t>& width) {
  FKD_CHECK(x.size(0) == int64_t(image.size()) * crops_ && image.size() == height.size() &&
                image.size() == width.size(),
            Error, "internal: teacher batcher given {} rows for {} images of {} crops", x.size(0),
            image.size(), crops_);
  for (size_t k = 0; k < image.size(); ++k) pending_.push_back({image[k], height[k], width[k]});
  int64_t row = 0;
  while (row < x.size(0)) {
    const int64_t take = std::min<int64_t>(batch_ - fill_, x.size(0) - row);
    in_.narrow(0, fill_, take).copy_(x.narrow(0, row, take));
    fill_ += take;
    row += take;
    if (fill_ == batch_) {
      run(batch_);
      fill_ = 0;
    }
  }
}

void TeacherBatcher::finish() {
  if (fill_ > skip_) run(fill_);
  fill_ = skip_ = 0;
  FKD_CHECK(pending_.empty(), Error, "internal: {} images left unlabeled", pending_.size());
}

void TeacherBatcher::run(int64_t valid) {
  if (valid < batch_) in_.narrow(0, valid, batch_ - valid).zero_();
  const torch::Tensor p =
      forward_(in_).narrow(0, skip_, valid - skip_).to(torch::kCPU, torch::kFloat32).contiguous();
  ++batches_;
  probs_.insert(probs_.end(), p.data_ptr<float>(),
                p.data_ptr<float>() + (valid - skip_) * classes_);
  skip_ = 0;
  // Every image whose crops are all done is emitted.
  const size_t per_image = size_t(crops_) * size_t(classes_);
  size_t consumed = 0;
  while (!pending_.empty() && probs_.size() - consumed >= per_image) {
    const Pending img = pending_.front();
    pending_.pop_front();
    emit_(img.image, img.height, img.width, probs_.data() + consumed);
    consumed += per_image;
  }
  probs_.erase(probs_.begin(), probs_.begin() + std::ptrdiff_t(consumed));
}

}  // namespace fkd
