// Checkpoints: model, optimizer and RNG state plus the run's configuration and history,
// in one torch archive, written durably (write_file_durably, file_io.h) so that a run killed
// at any moment, or a full disk, leaves either the previous checkpoint or the new one.
//
// Layout (torch::serialize archive, a zip):
//   ema        dict name -> tensor: the weights' EMA (--model-ema; absent without it)
//   amp_scaler float64 [3]: the fp16 loss scaler (--amp fp16; absent otherwise)
//   meta       string: JSON {"format": "fkd-checkpoint", "version": 1, "epochs_done",
//              "step", "model", "in_channels", "num_classes", "classes", "config",
//              "history": [EpochMetrics...]}
//   model      sub-archive: parameters and buffers (torchvision-style names)
//   optimizer  sub-archive: optimizer state (absent in exported weights-only files)
//   rng        tensor: torch's CPU generator state
//   student    uint8 tensor: the torch.jit.save file of a TorchScript student (absent for a
//              zoo model)
#pragma once
#include <memory>
#include <optional>
#include <string>
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

/// Training state beside the model and optimizer: the weights' EMA (--model-ema) and the
/// fp16 loss scaler's state (--amp fp16). Null members are absent from the file.
struct CheckpointExtras {
  const std::vector<std::pair<std::string, torch::Tensor>>* ema = nullptr;
  const torch::Tensor* scaler = nullptr;  ///< LossScaler::state()
};

/// Replaces `path` durably. `optimizer` may be null. A failure (a full disk) is one IoError
/// naming `path`; the previous checkpoint stays intact.
void save_checkpoint(const std::string& path, const CheckpointMeta& meta, Net& net,
                     torch::optim::Optimizer* optimizer, const CheckpointExtras& extras = {});

/// An fkd checkpoint read once: its metadata, and the archive its tensors are loaded from.
struct CheckpointFile {
  std::string path;
  CheckpointMeta meta;
  torch::serialize::InputArchive archive;
};

/// Opens `path` as an fkd checkpoint; nullopt when it is something else (a TorchScript
/// file, say). Throws FormatError when it is a checkpoint with bad metadata, and when it is
/// empty or a truncated zip archive (zip_damage), which no reader can use.
std::optional<CheckpointFile> try_open_checkpoint(const std::string& path);
/// Opens an fkd checkpoint; IoError when the file is missing, FormatError when it is no
/// checkpoint, naming the file.
CheckpointFile open_checkpoint(const std::string& path);

/// Reads only the metadata. Throws FormatError naming the file.
CheckpointMeta read_checkpoint_meta(const std::string& path);

/// Restores the parameters and buffers of an existing net of the checkpoint's architecture.
void restore_model(CheckpointFile& f, Net& net);
/// Restores the optimizer's state and torch's CPU RNG (what --resume continues from).
void restore_training_state(CheckpointFile& f, torch::optim::Optimizer& optimizer);
/// The weights' EMA stored in a checkpoint, by state-dict name; empty when it has none.
std::vector<std::pair<std::string, torch::Tensor>> checkpoint_ema(CheckpointFile& f);
/// The loss scaler's state stored in a checkpoint; undefined when it has none.
torch::Tensor checkpoint_scaler(CheckpointFile& f);

/// The TorchScript file a TorchScript student's run started from (the checkpoint's copy);
/// nullopt for a zoo model.
std::optional<std::vector<uint8_t>> checkpoint_student_archive(CheckpointFile& f);

/// The checkpoint's model, built from its metadata (a TorchScript student from the copy it
/// carries), with its weights.
std::shared_ptr<Net> checkpoint_model(CheckpointFile& f);
/// open_checkpoint + checkpoint_model; the metadata goes to *meta when given.
std::shared_ptr<Net> load_checkpoint(const std::string& path, CheckpointMeta* meta = nullptr);

/// One metrics.jsonl line.
std::string metrics_to_json(const EpochMetrics& m);

/// Replaces metrics.jsonl at `path` durably with one line per epoch of `history` (the whole
/// file each time, so it never holds a line for an epoch the checkpoint lacks). IoError
/// naming `path` on failure, the previous file intact.
void write_metrics_file(const std::string& path, const std::vector<EpochMetrics>& history);

}  // namespace fkd
