// The training input of a run, torch-free: how `fkd train` resolves a configuration's input
// fields from its data and builds its training loader. The fkd binary and the Python module
// build their loaders here, so both see the same batches for the same configuration.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "fkd/loader.h"
#include "fkd/train.h"
#include "fkd/transforms.h"

namespace fkd {

class Dataset;
class StoreReader;

/// The input side when none is given and the images are at least this large (torchvision's
/// and timm's ImageNet recipe).
inline constexpr int kDefaultInputSize = 224;

/// The images a store labeled when it was made for a subset (fkd label --limit): its image
/// count, which an FKD run trains on when it names no --limit-train. 0 when the store labels
/// the whole dataset or has no manifest (yet).
size_t store_subset_size(const std::string& store_dir);

/// Checks the options of a run's input and loader, those the fkd binary and the Python
/// module share: channels, input size, crop sampler, interpolation, eval resize, mean and
/// std (as many of each; every mean finite, every std positive and finite), batch size,
/// crops per image (an FKD batch a multiple of them) and workers. ConfigError naming the
/// option as the fkd binary spells it (--num-crops); the Python module names its own
/// arguments instead (num_crops).
void validate_input_options(const TrainConfig& cfg);

/// Checks that `world` ranks can split every batch of `cfg` into whole images, as a
/// data-parallel run does (rank r of world takes its share; ConfigError otherwise).
void validate_rank_split(const TrainConfig& cfg, int rank, int world);

/// The training split a config names, with its channels and limit_train applied.
std::shared_ptr<Dataset> open_train_set(const TrainConfig& cfg);

/// Fills the input fields of `cfg` left at auto from its training set: channels (the
/// dataset's), input size (an IDX image's side, else the images' median shorter side up to
/// kDefaultInputSize), crop kind, eval resize and mean/std (Fashion-MNIST's or ImageNet's),
/// and checks the resolved input size and mean/std (ConfigError naming the option). `notes`,
/// when given, receives lines for the user (the input size chosen and why, a warning when it
/// upscales the images more than 2x).
void resolve_input(TrainConfig& cfg, const Dataset& train_set,
                   std::vector<std::string>* notes = nullptr);

/// The transforms a resolved config describes.
TrainTransform train_transform(const TrainConfig& cfg);
EvalTransform eval_transform(const TrainConfig& cfg);

/// The crops of an FKD run: cfg.num_crops of the stored crops of `store` (made from
/// cfg.labels) per image per pass, keyed by cfg.seed; damaged records stop the run unless
/// cfg.skip_damaged_labels. Checks first that the store labels `train_set` (ConfigError
/// naming every difference).
std::shared_ptr<const CropSource> store_crop_source(const TrainConfig& cfg,
                                                    const Dataset& train_set,
                                                    std::shared_ptr<const StoreReader> store);

/// The options of a resolved run's training loader on rank `rank` of `world`.
LoaderOptions train_loader_options(const TrainConfig& cfg, int rank = 0, int world = 1);

}  // namespace fkd
