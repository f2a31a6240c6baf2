// The run's arithmetic of passes, effective epochs and learning rates.
#pragma once
#include <algorithm>
#include <cstdint>

namespace fkd {

/// Learning rate at optimizer step `step` of `total` steps: linear warm-up over
/// `warmup` steps from lr/warmup to lr, then cosine decay to 0.
double lr_at(double lr, int64_t step, int64_t warmup, int64_t total);

/// FKD's multi-crop accounting: one pass over the images yields `crops` crops of each and
/// counts as that many epochs (the last pass may count fewer), and the schedule runs in these
/// effective epochs. With one crop per image a pass is an epoch.
struct PassPlan {
  int epochs = 1;  ///< effective epochs of the run
  int crops = 1;   ///< crops per image per pass

  int passes() const { return (epochs + crops - 1) / crops; }
  /// Effective epochs before pass p (0-based).
  int first_epoch(int p) const { return p * crops; }
  /// Effective epochs pass p covers.
  int epochs_in(int p) const { return std::min(crops, epochs - first_epoch(p)); }
  /// The pass to run after `epochs_done` effective epochs (a resumed run).
  int pass_after(int epochs_done) const { return (epochs_done + crops - 1) / crops; }
  /// Crops of each image the run trains on: enough to label so that none is used twice.
  int crops_used() const { return passes() * crops; }
  /// Optimizer steps of `epochs` effective epochs at `steps_per_pass` steps per pass.
  int64_t steps_in(double epochs, int64_t steps_per_pass) const {
    return int64_t(epochs * double(steps_per_pass) / crops);
  }
};

}  // namespace fkd
