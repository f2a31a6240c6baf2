// Checkpoints: model, optimizer and RNG state plus the run's configuration and history,
// in one torch archive, written durably (write_file_durably, file_io.h) so that a run killed
// at any moment, or a full disk, leaves either the previous checkpoint or the new one.
//
// Layout (torch::serialize archive, a zip):
//   meta       string: JSON {"format": "fkd-checkpoint", "version": 1, "epochs_done",
//              "step", "model", "in_channels", "num_classes", "classes", "config",
//              "history": [EpochMetrics...]}
//   model      sub-archive: parameters and buffers (torchvision-style names)
//   optimizer  sub-archive: optimizer state (absent in exported weights-only files)
//   rng        tensor: torch's CPU generator state
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <torch/torch.h>

#include "fkd/models.h"
#include "fkd/train.h"

namespace fkd {

inline constexpr int kCheckpointVersion = 1;

struct CheckpointMeta {
  int epochs_done = 0;  ///< completed epochs
  int64_t step = 0;     ///< optimizer steps taken
  std::string model;
  int in_channels = 0;
  int num_classes = 0;
  std::vector<std::string> classes;
  TrainConfig config;
  std::vector<EpochMetrics> history;
};

/// Replaces `path` durably. `optimizer` may be null. A failure (a full disk) is one IoError
/// naming `path`; the previous checkpoint stays intact.
void save_checkpoint(const std::string& path, const CheckpointMeta& meta, Net& net,
                     torch::optim::Optimizer* optimizer);

/// Whether `path` holds an fkd checkpoint (as opposed to e.g. a TorchScript model).
bool is_checkpoint(const std::string& path);

/// Reads only the metadata. Throws FormatError naming the file.
CheckpointMeta read_checkpoint_meta(const std::string& path);

/// Restores the model (built from the metadata) and, when given, the optimizer and RNG.
std::shared_ptr<Net> load_checkpoint(const std::string& path, CheckpointMeta* meta,
                                     torch::optim::Optimizer* optimizer = nullptr,
                                     bool restore_rng = false);

/// Restores parameters into an existing net (same architecture) and optionally the optimizer/RNG.
void load_checkpoint_into(const std::string& path, Net& net, torch::optim::Optimizer* optimizer,
                          bool restore_rng);

/// One metrics.jsonl line.
std::string metrics_to_json(const EpochMetrics& m);

/// Replaces metrics.jsonl at `path` durably with one line per epoch of `history` (the whole
/// file each time, so it never holds a line for an epoch the checkpoint lacks). IoError
/// naming `path` on failure, the previous file intact.
void write_metrics_file(std::string_view path, const std::vector<EpochMetrics>& history);

}  // namespace fkd
