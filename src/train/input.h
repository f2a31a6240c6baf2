// What a model takes as input: the transforms of a resolved configuration, and the input a
// trained model expects on a dataset (labeling, evaluation).
#pragma once
#include <string>
#include <vector>

#include "fkd/train.h"
#include "fkd/train_input.h"
#include "fkd/transforms.h"

namespace fkd {

class Dataset;

/// Input options given on the command line; 0 / empty keep what the model recorded.
struct InputOverrides {
  int channels = 0;
  int input_size = 0;
  int eval_resize = 0;
  std::vector<float> mean, std;
  std::string interp;
};

/// The input a model takes on the dataset `data` (opened as `train_set`): the transform
/// its checkpoint recorded (`recorded`; null for a TorchScript file, which records none,
/// so the dataset's defaults), with the overrides taking precedence, resolved as
/// resolve_config does. Of the result only the input fields count (channels, crop.size,
/// interp, mean, std, eval_resize).
TrainConfig model_input(const TrainConfig* recorded, const InputOverrides& o,
                        const std::string& data, const Dataset& train_set,
                        std::vector<std::string>* notes = nullptr);

}  // namespace fkd
