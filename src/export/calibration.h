// The calibration set of an export: N model inputs drawn with a fixed seed from the label
// store's crops (the crops the student learned from) or from the training split with the
// evaluation transform (docs/edge.md, "The calibration files").
#pragma once
#include <cstdint>
#include <string>

#include <torch/types.h>

#include "fkd/train.h"

namespace fkd::edge {

struct CalibrationRequest {
  TrainConfig config;  ///< the checkpoint's run, with its data (or --data) and input fields
  size_t count = 0;
  std::string labels;  ///< a label store of that data, or empty for the training split
  uint64_t seed = 0;
  bool raw_pixels = false;  ///< the exported model takes pixels in [0, 255]
  int workers = 1;
};

struct CalibrationSet {
  torch::Tensor inputs;  ///< [N, C, H, W] float32: exactly what the exported model takes
  std::string json;      ///< the description written beside the tensor file
  std::string source;    ///< one line for people: where the tensors came from
};

/// Draws the calibration set. The same request gives the same tensors every time.
CalibrationSet draw_calibration(const CalibrationRequest& r);

/// Adds the tensor file's name to a CalibrationSet's JSON.
std::string calibration_json(const CalibrationSet& set, const std::string& tensor_file);

}  // namespace fkd::edge
