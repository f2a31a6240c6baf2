// Labeling a range of images: what `fkd label` runs on a shard and `fkd label repair` on a
// damaged record.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include <torch/torch.h>

#include "fkd/dataset.h"
#include "fkd/label.h"
#include "fkd/models.h"
#include "fkd/store.h"
#include "fkd/train.h"

namespace fkd {

/// Everything a labeling run holds fixed.
struct LabelJob {
  const LabelConfig& cfg;             ///< batch, temperature, workers
  std::shared_ptr<const Dataset> ds;  ///< the labeled split
  const Manifest& m;                  ///< crops, quantization
  const TrainConfig& input;           ///< the teacher's input: channels, size, norm, interp
  Teacher& teacher;                   ///< runs in the manifest's teacher_amp
  torch::Device device;
};

/// The teacher's precision for labeling: --amp as given (resolve_amp); auto takes the
/// existing store's (`existing`: its manifest, if there is one), else bf16 where `device`
/// runs it natively (native_bf16), else off (float32).
AmpMode label_teacher_amp(AmpMode requested, const torch::Device& device,
                          const std::optional<Manifest>& existing);

/// What labeling a range measured.
struct LabelStats {
  uint64_t images = 0, crops = 0;
  double teacher_seconds = 0;  ///< wall time inside the teacher's forward pass
};

/// Labels images [begin, end): their crops (the manifest's) through the teacher, each at
/// the batch position it has in one unbroken run (TeacherBatcher), quantized as the manifest
/// says. `out` receives each image's labels, in image order; `title` names the progress bar.
LabelStats label_images(const LabelJob& job, uint64_t begin, uint64_t end, const std::string& title,
                        const std::function<void(uint64_t image, const ImageLabels&)>& out);

}  // namespace fkd
