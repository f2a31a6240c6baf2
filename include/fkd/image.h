// Images and the pure pixel kernels of fkd's data pipeline: decode, crop,
// resize (torchvision/PIL semantics), flip, normalize. No torch here.
//
// Layout: an Image is 8-bit, interleaved HWC (row-major, channels last),
// 1 (grayscale) or 3 (RGB) channels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fkd {

struct Image {
  int height = 0;               ///< rows
  int width = 0;                ///< columns
  int channels = 0;             ///< 1 (L) or 3 (RGB)
  std::vector<uint8_t> pixels;  ///< height * width * channels bytes, HWC
  const uint8_t* row(int y) const { return pixels.data() + size_t(y) * width * channels; }
};

/// Interpolation for resizing, with PIL's (and so torchvision's PIL path) semantics:
/// separable filters whose support widens by the scale factor when downscaling (antialias).
enum class Interp { kBilinear, kBicubic };

/// Parses "bilinear" / "bicubic"; throws ConfigError otherwise.
Interp parse_interp(const std::string& name);

/// Decodes an image held in memory: JPEG, PNG, WebP, TIFF (first frame), BMP or PNM (P1-P6),
/// the format from its magic bytes (torchvision's ImageFolder extensions).
/// want_channels: 0 keeps the file's own (gray stays 1, colour becomes 3), 1 converts to
/// grayscale, 3 to RGB. Alpha is dropped. Throws DataError naming `name` when the bytes are
/// not a complete, valid image.
Image decode_image(const uint8_t* data, size_t size, int want_channels, const std::string& name);

/// Reads and decodes a file. Throws IoError (unreadable) or DataError (not a valid image).
Image read_image(const std::string& path, int want_channels);

/// Rows [begin, end) of an image.
struct RowRange {
  int begin = 0;
  int end = 0;
};

/// Rows [first_row, first_row + image.height) of an image full_height rows tall.
struct ImageBand {
  Image image;
  int first_row = 0;
  int full_height = 0;
};

/// decode_image for only the rows that `pick` chooses, called once with the image's height
/// and width (the range is clamped to the image; ConfigError if nothing is left). The pixels
/// equal those rows of a full decode. A JPEG is decoded only down to the last row, and the rows
/// above the band are skipped without building their pixels, so a band costs less than the
/// whole image (damage below the band goes unnoticed); other formats are decoded whole and cut.
/// To cut a crop from a band: box.top -= first_row, with the band covering the crop's rows.
using RowPicker = std::function<RowRange(int height, int width)>;
ImageBand decode_image_rows(const uint8_t* data, size_t size, int want_channels,
                            const std::string& name, const RowPicker& pick);

/// A crop in pixels of the source image. May extend past its borders: pixels
/// outside read as 0, as PIL's Image.crop does (this is how padded random crops work).
struct PixelBox {
  int left = 0;    ///< x of the first column
  int top = 0;     ///< y of the first row
  int width = 0;   ///< > 0
  int height = 0;  ///< > 0
};

/// A crop normalized by the image size, as FKD stores it: (i, j, h, w) = top, left,
/// height, width, each divided by the image's height or width.
struct CropBox {
  float i = 0, j = 0, h = 1, w = 1;
};

/// The pixel box a normalized crop replays to on an image of size height x width, with
/// the reference's semantics: PIL rounds the crop corners (round half to even):
/// left = round(j*W), top = round(i*H), right = round(j*W + w*W), bottom = round(i*H + h*H).
/// Width and height are at least 1.
PixelBox to_pixel_box(const CropBox& c, int height, int width);

/// The normalized crop of a pixel box (what the labeler stores).
CropBox to_crop_box(const PixelBox& b, int height, int width);

/// Per-channel normalization applied when converting to float: (x/255 - mean) / std.
struct Normalize {
  float mean[3] = {0.485f, 0.456f, 0.406f};
  float std[3] = {0.229f, 0.224f, 0.225f};
};

/// Cuts `box` from `src`, optionally mirrors it left-right, resizes it to out_h x out_w
/// with PIL's resampling (uint8 intermediate, exactly like PIL: pixels match
/// torchvision.transforms.functional.resized_crop on a PIL image to within 1 level),
/// and writes the result to `out` as uint8 HWC (out_h * out_w * src.channels bytes).
/// When the box size equals the output size no resampling happens (a copy).
/// Pure: no state, thread-safe. `scratch` is reused between calls to avoid allocation.
void resized_crop(const Image& src, const PixelBox& box, bool flip, int out_h, int out_w,
                  Interp interp, uint8_t* out, std::vector<uint8_t>& scratch);

/// Converts uint8 HWC to float CHW: out[c][y][x] = (in[y][x][c]/255 - mean[c]) / std[c].
/// `out` holds channels * h * w floats.
void to_float_chw(const uint8_t* hwc, int h, int w, int channels, const Normalize& norm,
                  float* out);

/// to_float_chw for one normalization and channel count, prepared once: the exact value of
/// every level and the check that the vector kernel reproduces them bit for bit are done at
/// construction, not for every image (a loader converts many crops with one normalization).
/// Same output as to_float_chw. Immutable: one instance may serve many threads.
class ChwConverter {
 public:
  /// channels: 1 or 3 (ConfigError otherwise).
  ChwConverter(const Normalize& norm, int channels);
  /// uint8 HWC [h, w, channels] at `hwc` -> float32 CHW [channels, h, w] at `out`.
  void convert(const uint8_t* hwc, int h, int w, float* out) const;
  int channels() const { return channels_; }

 private:
  Normalize norm_;
  int channels_;
  bool vector_ = false;  ///< the AVX2 kernel runs (the CPU has it and it matches table_)
  float table_[3][256];  ///< the exact value of each level, per channel
};

/// Resizes the whole image so that its shorter side becomes `size` (torchvision Resize(int):
/// the longer side becomes int(size * long / short)), PIL resampling.
Image resize_shorter(const Image& src, int size, Interp interp);

/// The centred pixel box of size out_h x out_w, as torchvision's CenterCrop computes it:
/// top = int(round((H - out_h) / 2.0)), left likewise; where the crop is larger than the
/// image, CenterCrop zero-pads (out_h - H) // 2 rows above first, so top = -((out_h - H) // 2).
PixelBox center_box(int height, int width, int out_h, int out_w);

}  // namespace fkd
