// Sampling of augmentation parameters (where to crop, whether to flip), with
// torchvision's semantics, and the transform recipes for training and evaluation.
// The pixel work itself is in image.h; everything here is pure.
#pragma once
#include <array>
#include <cstdint>
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

/// Which random crop a sampler draws.
enum class CropKind : uint8_t {
  kAuto,           ///< kPadded for images of 64 px or less, else kRandomResized (resolve_crop_kind)
  kRandomResized,  ///< RandomResizedCrop(size, scale, ratio)
  kPadded,         ///< RandomCrop(size, padding): the classic small-image recipe
  kNone,           ///< the whole image resized to size x size (no random crop)
};

/// Everything that defines the crops drawn from an image: with a seed and the image's id it
/// gives every box and flip. One value shared by the training and labeling configurations,
/// the label store's manifest and the transforms, so that "the same crops" is one check.
struct CropSampler {
  CropKind kind = CropKind::kAuto;
  int size = 0;                                ///< output side, 0 = auto; also kPadded's box side
  std::array<float, 2> scale = {0.08f, 1.0f};  ///< area fraction (kRandomResized)
  std::array<float, 2> ratio = {3.f / 4.f, 4.f / 3.f};  ///< aspect ratio (kRandomResized)
  int padding = 4;                                      ///< zero padding on every side (kPadded)
  float flip = 0.5f;                                    ///< horizontal flip probability
};

/// The command-line names of the kinds: "auto", "rrc", "crop", "none".
const char* crop_kind_name(CropKind k);
/// Parses a command-line name; throws ConfigError naming the choices.
CropKind parse_crop_kind(const std::string& name);
/// kAuto resolved: kPadded, the small-image recipe, when the input size (which must be set)
/// is 64 px or less and the images are all of that size (`images_at_size`; taken as true
/// when unknown), else kRandomResized. Other kinds are returned as is.
CropKind resolve_crop_kind(const CropSampler& s, bool images_at_size = true);

/// "" when the sampler's fields are valid (size >= 1, 0 < scale min <= max <= 1,
/// 0 < ratio min <= max, padding >= 0, flip in [0, 1]), else the first problem, in the
/// command line's terms ("--scale 0.5 0.2: expected 0 < min <= max <= 1").
std::string crop_sampler_problem(const CropSampler& s);

/// The fields in which two samplers draw different crops from the same random numbers, as
/// "scale (0.08 1 vs 0.35 1)"; empty when they draw the same crops. Only the fields a kind
/// uses count (kRandomResized: scale, ratio; kPadded: size, padding; both: flip).
std::vector<std::string> crop_differences(const CropSampler& a, const CropSampler& b);

/// For people: "RandomResizedCrop(224, scale [0.08, 1], ratio [0.75, 1.3333]) + flip 0.5",
/// "RandomCrop(28, padding 4) + flip 0.5", "Resize(64) + flip 0".
std::string describe_crops(const CropSampler& s);

/// How a training image becomes a model input.
struct TrainTransform {
  CropSampler crop = {CropKind::kRandomResized, 224};  ///< crop.size is the output side
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

/// Draws a crop and its flip for an image of the given size: the box by the sampler's kind
/// (kAuto must be resolved), then flip = rng.bernoulli(flip). Pure in (s, rng state).
CropPlan sample_crop(const CropSampler& s, Rng& rng, int height, int width);

/// Crop `crop` of image `image` (height x width pixels) in a label store: sample_crop with
/// Rng(seed, kLabelCrops, {image, crop}), and id = crop. A pure function of its arguments,
/// identical on every platform, so stores need not hold crop coordinates.
CropPlan derive_label_crop(const CropSampler& s, uint64_t seed, uint64_t image, uint32_t crop,
                           int height, int width);

}  // namespace fkd
