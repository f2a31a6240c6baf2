// Soft-label generation (`fkd label`): a teacher labels derived random-resized crops of
// every training image once; the result is a label store (store.h, docs/label-store.md).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fkd/amp.h"
#include "fkd/transforms.h"

namespace fkd {

class Dataset;

/// k of the marginal label types when none is given (the reference's default), capped at the
/// class count.
inline constexpr int kDefaultTopk = 5;

struct LabelConfig {
  std::string teacher;                 ///< TorchScript file, or a checkpoint.pt of fkd train
  std::string data = "fashion-mnist";  ///< dataset spec (its train split is labeled)
  std::string out;                     ///< store directory
  int crops = 500;                     ///< crops per image
  std::string label_type = "marginal_smoothing";
  int topk = 0;  ///< k of the marginal types; 0 = kDefaultTopk, or C if fewer
  float temperature = 1.0f;
  std::string precision = "fp16";  ///< fp16 | u8 | fp32
  /// Crop sampler: rrc (RandomResizedCrop(scale, ratio)), crop (RandomCrop(input size,
  /// padding), the small-image recipe) or auto (a checkpoint teacher's own kind, else crop
  /// for images of 64 px or less, rrc otherwise), with the flip; crop.size is the teacher's
  /// input side (0 = the teacher checkpoint's, else from the data).
  CropSampler crop;
  std::string interp = "bilinear";
  std::vector<float> mean, std;  ///< empty = the teacher checkpoint's / dataset's
  int channels = 0;
  size_t limit = 0;    ///< label a deterministic subset of this many images
  size_t batch = 256;  ///< crops per teacher forward
  uint64_t seed = 0;   ///< crop sampler seed
  int threads = 0;
  int workers = 1;
  std::string device = "cpu";
  std::string shard;            ///< "i/n"; empty = RANK/WORLD_SIZE or 0/1
  std::string reference_crops;  ///< label exactly the crops of this existing store
  bool optimize = true;         ///< freeze + optimize_for_inference a TorchScript teacher
  /// The teacher's forward precision: auto (an existing store's; else bf16 where the device
  /// runs it natively, else off), off, bf16, fp16 (CUDA). The softmax and quantization run
  /// in float32. Recorded in the manifest (teacher_amp).
  std::string amp = "auto";
};

struct LabelResult {
  std::string store;
  uint64_t images = 0;                  ///< images labeled by this call
  uint64_t crops = 0;                   ///< crops labeled by this call
  double seconds = 0;                   ///< wall time
  double teacher_seconds = 0;           ///< wall time inside the teacher's forward pass
  bool complete = false;                ///< every shard of the store is finished
  AmpMode teacher_amp = AmpMode::kOff;  ///< the precision the teacher ran in
};

/// Labels this process's shard of the dataset into cfg.out, resuming a partial run of the
/// same command. Throws ConfigError when the store in cfg.out was made differently
/// (naming each difference), or the teacher's output width is not the class count.
LabelResult generate_labels(const LabelConfig& cfg);
/// generate_labels on a training split already opened (with cfg.channels and cfg.limit
/// applied), so that a caller which opened it (fkd distill) does not scan it again.
LabelResult generate_labels(const LabelConfig& cfg, std::shared_ptr<const Dataset> train_set);

/// Checks every option that needs neither data nor teacher; ConfigError naming the flag.
void validate_label_config(const LabelConfig& cfg);

/// `fkd label repair`: what to repair and with which teacher.
struct RepairConfig {
  std::string store;    ///< store directory
  std::string teacher;  ///< the teacher the store was labeled with (its hash is checked)
  std::string data;     ///< the dataset; empty = the manifest's --data
  /// Crops per teacher forward: the --batch the store was labeled with, so that every crop
  /// meets the teacher at the batch position it had and the labels come out bit-identical.
  size_t batch = 256;
  int threads = 0;
  int workers = 1;
  std::string device = "cpu";
  bool optimize = true;  ///< as fkd label's --optimize
};

struct RepairResult {
  bool needed = false;  ///< verify_store found damage
  uint64_t images = 0;  ///< images labeled again
  uint32_t shards = 0;  ///< unreadable shards labeled again whole (the old file kept as .damaged)
};

/// Labels again exactly the images whose records verify_store finds damaged (a whole shard
/// when it cannot be read), with the store's teacher on the store's dataset, and checks the
/// store afterwards. Throws ConfigError for another teacher or dataset than the store's.
RepairResult repair_store(const RepairConfig& cfg);

/// The shard this process labels: "i/n" if given, else RANK and WORLD_SIZE from the
/// environment (torchrun, Slurm via SLURM_PROCID/SLURM_NTASKS), else 0/1.
std::pair<uint32_t, uint32_t> resolve_shard(const std::string& spec);

}  // namespace fkd
