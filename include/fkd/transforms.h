// Sampling of augmentation parameters (where to crop, whether to flip), with
// torchvision's semantics, and the transform recipes for training and evaluation.
// The pixel work itself is in image.h; everything here is pure.
#pragma once
#include <string>
#include <vector>

#include "fkd/image.h"
#include "fkd/rng.h"

namespace fkd {

/// torchvision.transforms.RandomResizedCrop.get_params: up to 10 attempts to draw an
/// area fraction from scale and a log-uniform aspect ratio from ratio that fit in the
/// image, else the centre crop clamped to the ratio range. Returns the pixel box.
PixelBox sample_random_resized_crop(Rng& rng, int height, int width, const float scale[2],
                                    const float ratio[2]);

/// exp and natural log computed with basic IEEE-754 operations only (no libm), so results
/// are bit-identical on every platform: crop derivation depends on them. Relative error
/// below 1e-15 (a few ulp).
double portable_exp(double x);
double portable_log(double x);  ///< x > 0

/// torchvision.transforms.RandomCrop(size, padding): the box (in unpadded coordinates,
/// so it may start at negative offsets) of a uniformly placed out_h x out_w window in the
/// image zero-padded by `padding` on every side.
PixelBox sample_padded_crop(Rng& rng, int height, int width, int out_h, int out_w, int padding);

/// How a training image becomes a model input.
struct TrainTransform {
  enum class Crop {
    kRandomResized,  ///< RandomResizedCrop(size, scale, ratio)
    kPadded,         ///< RandomCrop(size, padding) — the classic small-image recipe
    kNone,           ///< the whole image resized to size x size (no random crop)
  };
  Crop crop = Crop::kRandomResized;
  int size = 224;                   ///< output height and width
  float scale[2] = {0.08f, 1.0f};   ///< area fraction range (kRandomResized)
  float ratio[2] = {3.f / 4.f, 4.f / 3.f};  ///< aspect ratio range (kRandomResized)
  int padding = 4;                  ///< zero padding (kPadded)
  float flip_prob = 0.5f;           ///< RandomHorizontalFlip probability
  Interp interp = Interp::kBilinear;
  Normalize norm;
};

/// Evaluation: Resize(shorter side -> resize) then CenterCrop(size); resize 0 skips it.
struct EvalTransform {
  int resize = 256;
  int size = 224;
  Interp interp = Interp::kBilinear;
  Normalize norm;
};

/// One crop of one image: where, and whether mirrored.
struct CropPlan {
  PixelBox box;
  bool flip = false;
  uint32_t id = 0;  ///< which crop of the image: its number in a label store, else 0..m-1
};

/// Draws the crop and flip of a training transform for an image of the given size.
CropPlan sample_train_crop(const TrainTransform& t, Rng& rng, int height, int width);

/// Crop `crop` of image `image` (height x width pixels) in a label store: a
/// RandomResizedCrop box and a flip drawn from Rng(seed, kLabelCrops, {image, crop}), in
/// that order (box first, then flip = uniform() < flip_prob). A pure function of its
/// arguments, identical on every platform, so stores need not hold crop coordinates.
CropPlan derive_label_crop(uint64_t seed, const float scale[2], const float ratio[2],
                           float flip_prob, uint64_t image, uint32_t crop, int height,
                           int width);

/// Parses "rrc" / "crop" / "none".
TrainTransform::Crop parse_crop_kind(const std::string& name);

}  // namespace fkd
