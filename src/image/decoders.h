// Decoders of the image formats beyond JPEG and PNG (decode.cpp dispatches to them).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "fkd/image.h"

namespace fkd {

enum class ImageFormat { kUnknown, kWebp, kTiff, kBmp, kPnm };

/// Throws DataError unless w x h is a plausible image: positive, and within PIL's
/// decompression-bomb limit (checked before allocating what a damaged header claims).
void check_image_size(int64_t w, int64_t h, const std::string& name);

/// The format named by a file's magic bytes, among WebP, TIFF, BMP and PNM.
ImageFormat sniff_other_format(const uint8_t* data, size_t size);

/// Decodes a whole image of format `f` (not kUnknown) to `want` channels as decode_image does.
/// Throws DataError naming `name` when the bytes are not a complete, valid image.
Image decode_other(ImageFormat f, const uint8_t* data, size_t size, int want,
                   const std::string& name);

}  // namespace fkd
