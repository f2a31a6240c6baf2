// What a training step minimizes, for each mode: cross-entropy on class labels
// (supervised), soft cross-entropy on stored soft labels (FKD) or on a teacher's (online
// KD), with Mixup/CutMix mixing images and targets alike, and the hard-label mix-in.
#pragma once
#include <memory>
#include <utility>

#include <torch/torch.h>

#include "amp.h"
#include "fkd/loader.h"
#include "fkd/models.h"
#include "fkd/train.h"
#include "teachers.h"

namespace fkd {

class Objective {
 public:
  /// `cfg` is the run's resolved configuration; online KD opens its teacher here.
  Objective(const TrainConfig& cfg, int num_classes, const torch::Device& device);

  AmpMode amp() const { return amp_; }  ///< the resolved --amp of the run

  /// The loss of optimizer step `step` on batch `b` (images x [n, c, h, w], classes y [n] and
  /// FKD's soft labels [n, classes] on the device; undefined soft: taken from `b`): mixes x
  /// when the run mixes (the mix drawn from (seed, step)), forms the targets, runs `net` (and
  /// the online teacher) under the run's autocast and returns {loss (float32 scalar),
  /// logits [n, num_classes] float32}.
  std::pair<torch::Tensor, torch::Tensor> operator()(const Batch& b, torch::Tensor x,
                                                     const torch::Tensor& y,
                                                     const torch::Tensor& soft, int64_t step,
                                                     Net& net) const;

 private:
  TrainConfig cfg_;
  int num_classes_;
  torch::Device device_;
  AmpMode amp_;                             ///< the resolved --amp
  std::unique_ptr<OnlineTeacher> teacher_;  ///< online KD only
};

}  // namespace fkd
