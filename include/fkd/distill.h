// `fkd distill`: label a dataset with a teacher, then train a student from the labels (FKD),
// in one command with sensible defaults.
#pragma once
#include <string>

#include "fkd/label.h"
#include "fkd/train.h"

namespace fkd {

struct DistillConfig {
  LabelConfig label;  ///< teacher, data, crops (0 = as many as the epochs use), sampler, ...
  /// The student's run (model, epochs, num_crops, optimizer, ...). Its channels, interp,
  /// mean and std are the teacher's input too (an empty mean/std: a checkpoint teacher's own).
  TrainConfig train;
  std::string out = "runs/distill";  ///< labels in out/labels, the student in out/student

  /// fkd distill's defaults where they differ from label's and train's: the tiny student,
  /// and as many crops labeled as the epochs use.
  DistillConfig() {
    train.model = "tiny";
    label.crops = 0;
  }
};

/// Labels (resuming a partial store) and trains (resuming a partial run). Returns the
/// student's training result.
TrainResult run_distill(DistillConfig cfg);

}  // namespace fkd
