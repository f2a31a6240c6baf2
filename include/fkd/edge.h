// Edge export: a trained model as an ONNX file (float32, and an int8 QDQ twin), with the
// calibration tensors its int8 ranges come from (docs/edge.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fkd/train.h"

namespace fkd {

/// `fkd export CKPT OUT.onnx`.
struct OnnxExportOptions {
  std::string checkpoint;  ///< checkpoint.pt of fkd train
  std::string out;         ///< the float32 model; --int8 adds OUT's stem + ".int8.onnx"
  bool ema = false;        ///< the weights' EMA (--model-ema) instead of the weights
  /// The batch dimension: a number (static, default 1) or a name (a symbolic dimension).
  std::string batch = "1";
  /// The model takes raw pixels in [0, 255] and normalizes them itself (mean/std baked in).
  bool normalize_inside = false;
  /// Calibration tensors to draw and write beside OUT (0 = none; --int8 draws 512 unless
  /// told otherwise).
  size_t calibration = 0;
  /// Where calibration images come from: a label store's crops (the crops the student
  /// learned from) when set, else the training split with the evaluation transform.
  std::string labels;
  std::string data;  ///< the dataset; empty = the one the checkpoint trained on
  uint64_t seed = 0;
  bool int8 = false;
  /// How activation ranges are set from the calibration set: "minmax" or "percentile".
  std::string method = "minmax";
  double percentile = 99.99;        ///< percentile method: the kept share of values, in percent
  bool per_tensor_weights = false;  ///< one weight scale per layer instead of per channel
  int threads = 0;
  int workers = 1;
};

/// What export_onnx wrote.
struct OnnxExportResult {
  std::vector<std::string> files;  ///< every file written, in order
  size_t ops = 0;                  ///< operators converted from the TorchScript graph
  size_t calibration = 0;          ///< calibration tensors used
  std::string calibration_source;  ///< where they came from, for people
  double seconds = 0;              ///< wall time of the whole export
  /// Largest |ONNX - model| / max |model| of the float32 file on the calibration inputs (or
  /// a random input without them), as fkd's own evaluator computes it.
  double max_relative_error = 0;
};

/// Converts the checkpoint's model (frozen TorchScript graph, BatchNorm folded) to ONNX
/// opset 13 with a static input shape, checks it (onnx::checker, strict shape inference,
/// and its output against the model's on the same inputs), and writes it durably; with
/// calibration, the calibration set (OUT.calibration.f32 + .json); with int8, the QDQ
/// model. Nothing is written unless every file can be: an unsupported operator is one
/// ConfigError naming it and where it is in the model.
OnnxExportResult export_onnx(const OnnxExportOptions& o);

/// True for a path that names an ONNX file (by its extension, ".onnx").
bool is_onnx_path(const std::string& path);

/// `fkd eval MODEL.onnx`: top-1/top-5 of an ONNX file written by export_onnx (float32 or
/// int8) on a dataset split, with the input transform the file records (its fkd.input
/// metadata), computed by fkd's own evaluator on the CPU (docs/edge.md says what is exact).
/// FormatError for a file that is not such a model.
EvalResult evaluate_onnx_file(const std::string& path, const EvalOptions& opts);

}  // namespace fkd
