// SyncBatchNorm for data-parallel training (--sync-bn): BatchNorm layers normalize with the
// mean and variance of the whole global batch instead of each rank's slice, and the backward
// pass reduces the gradient statistics over the ranks too, so that training follows the same
// trajectory as one process with the whole batch.
#pragma once
#include <memory>

#include "dist/dist.h"
#include "fkd/models.h"

namespace fkd {

/// The BatchNormSync of a run's process group (set it with set_batch_norm_sync).
std::shared_ptr<BatchNormSync> make_sync_batch_norm(Distributed& dist);

}  // namespace fkd
