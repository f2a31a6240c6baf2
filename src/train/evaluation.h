// Evaluation of a model over a loader's batches.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "fkd/loader.h"
#include "fkd/train.h"
#include "train/input.h"

namespace fkd {

class Distributed;

/// Tensors of every batch of an evaluation, in dataset order (fkd eval --save-logits,
/// --save-inputs): one raw float32 file (little-endian, C order) and FILE.json with its
/// shape, layout, and each row's dataset index and label (docs/edge.md). Off when `path` is
/// empty.
class TensorSink {
 public:
  TensorSink(std::string path, std::string layout);
  bool on() const { return !path_.empty(); }
  /// Appends the rows of `t` ([b.n, ...]), which belong to batch `b`.
  void add(const Batch& b, const torch::Tensor& t);
  /// Writes both files durably.
  void write() const;

 private:
  std::string path_, layout_;
  std::vector<torch::Tensor> parts_;
  std::vector<uint32_t> samples_;
  std::vector<int64_t> labels_;
};

/// The input options `fkd eval` was given, as overrides of what the model recorded.
inline InputOverrides eval_overrides(const EvalOptions& opts) {
  InputOverrides over;
  over.channels = opts.channels;
  over.input_size = opts.input_size;
  over.eval_resize = opts.eval_resize;
  over.mean = opts.mean;
  over.std = opts.std;
  return over;
}

/// Loss, top-1 and top-5 of `forward` over every batch of `loader` (one epoch 0 pass),
/// with a progress bar titled `label`. With `dist`, each rank's loader holds its slice of
/// the batches and the counts are summed over the ranks: every rank gets the result of the
/// whole split.
/// `each`, when given, sees every batch with its input and logits (fkd eval --save-logits).
EvalResult run_evaluation(const std::function<torch::Tensor(const torch::Tensor&)>& forward,
                          Loader& loader, const torch::Device& device, bool channels_last,
                          const std::string& label, Distributed* dist = nullptr,
                          const std::function<void(const Batch&, const torch::Tensor& x,
                                                   const torch::Tensor& logits)>& each = nullptr);

}  // namespace fkd
