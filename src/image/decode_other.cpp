// The rest of torchvision ImageFolder's image formats: WebP (libwebp), TIFF (libtiff), BMP
// (stb_image) and PNM (here). Each decodes to 8-bit RGB or L as PIL's Image.convert does:
// palettes expanded, alpha dropped, grey replicated or colour turned to luma (convert.h).
#include <tiffio.h>
#include <webp/decode.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#define STBI_NO_STDIO
#include <stb/stb_image.h>

#include "fkd/error.h"
#include "image/convert.h"
#include "image/decoders.h"

namespace fkd {

namespace {

/// An image from interleaved 8-bit pixels with `comp` channels: 1 (L), 2 (LA), 3 (RGB) or
/// 4 (RGBA), alpha dropped, converted to `want` channels (0 = L stays 1, colour becomes 3).
Image from_interleaved(const uint8_t* px, int w, int h, int comp, int want) {
  const bool gray = comp <= 2;
  Image img;
  img.height = h;
  img.width = w;
  img.channels = want == 0 ? (gray ? 1 : 3) : want;
  const size_t npx = size_t(w) * size_t(h);
  img.pixels.resize(npx * size_t(img.channels));
  const int base = gray ? 1 : 3;
  std::vector<uint8_t> packed;
  const uint8_t* src = px;
  if (comp != base) {  // drop alpha first
    packed.resize(npx * size_t(base));
    for (size_t p = 0; p < npx; ++p)
      std::memcpy(&packed[p * base], px + p * size_t(comp), size_t(base));
    src = packed.data();
  }
  if (base == img.channels) {
    std::memcpy(img.pixels.data(), src, npx * size_t(base));
  } else if (base == 1) {
    gray_to_rgb(src, npx, img.pixels.data());
  } else {
    rgb_to_gray(src, npx, img.pixels.data());
  }
  return img;
}

/// from_interleaved, taking the buffer over when it already has the wanted layout.
Image image_from(std::vector<uint8_t>&& px, int w, int h, int comp, int want) {
  const int natural = comp <= 2 ? 1 : 3;
  if (comp != natural || (want != 0 && want != comp)) {
    return from_interleaved(px.data(), w, h, comp, want);
  }
  Image img;
  img.height = h;
  img.width = w;
  img.channels = comp;
  img.pixels = std::move(px);
  return img;
}

// ---------------------------------------------------------------- WebP

Image decode_webp(const uint8_t* data, size_t size, int want, const std::string& name) {
  WebPBitstreamFeatures f;
  const VP8StatusCode st = WebPGetFeatures(data, size, &f);
  FKD_CHECK(st == VP8_STATUS_OK, DataError, "{}: corrupt WebP (bad header, status {})", name,
            int(st));
  FKD_CHECK(!f.has_animation, DataError, "{}: animated WebP is not supported", name);
  check_image_size(f.width, f.height, name);
  // PIL decodes to RGB (RGBA when the file has alpha, which the conversion then drops).
  const int comp = f.has_alpha ? 4 : 3;
  std::vector<uint8_t> px(size_t(f.width) * size_t(f.height) * size_t(comp));
  const int stride = f.width * comp;
  const uint8_t* ok = f.has_alpha ? WebPDecodeRGBAInto(data, size, px.data(), px.size(), stride)
                                  : WebPDecodeRGBInto(data, size, px.data(), px.size(), stride);
  FKD_CHECK(ok != nullptr, DataError, "{}: corrupt or truncated WebP", name);
  return image_from(std::move(px), f.width, f.height, comp, want);
}

// ---------------------------------------------------------------- TIFF

struct TiffSource {
  const uint8_t* data;
  toff_t size;
  toff_t pos;
  std::string message;  // libtiff's first error
};

tsize_t tiff_read(thandle_t h, tdata_t buf, tsize_t n) {
  auto* s = static_cast<TiffSource*>(h);
  if (n < 0) return 0;
  const toff_t left = s->pos < s->size ? s->size - s->pos : 0;
  const toff_t k = std::min<toff_t>(toff_t(n), left);
  std::memcpy(buf, s->data + s->pos, size_t(k));
  s->pos += k;
  return tsize_t(k);
}
tsize_t tiff_write(thandle_t, tdata_t, tsize_t) { return 0; }
toff_t tiff_seek(thandle_t h, toff_t off, int whence) {
  auto* s = static_cast<TiffSource*>(h);
  toff_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? s->pos : s->size;
  s->pos = base + off;  // reads past the end return 0 bytes
  return s->pos;
}
int tiff_close(thandle_t) { return 0; }
toff_t tiff_size(thandle_t h) { return static_cast<TiffSource*>(h)->size; }
int tiff_map(thandle_t, tdata_t*, toff_t*) { return 0; }
void tiff_unmap(thandle_t, tdata_t, toff_t) {}

int tiff_error(TIFF*, void* user, const char* module, const char* fmt, va_list ap) {
  auto* s = static_cast<TiffSource*>(user);
  if (s->message.empty()) {
    char buf[256];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    s->message = module ? std::string(module) + ": " + buf : buf;
  }
  return 1;  // handled: nothing printed
}
int tiff_warning(TIFF*, void*, const char*, const char*, va_list) { return 1; }

Image decode_tiff(const uint8_t* data, size_t size, int want, const std::string& name) {
  TiffSource src{data, toff_t(size), 0, {}};
  std::unique_ptr<TIFFOpenOptions, void (*)(TIFFOpenOptions*)> opts(TIFFOpenOptionsAlloc(),
                                                                    TIFFOpenOptionsFree);
  FKD_CHECK(opts != nullptr, DataError, "{}: cannot allocate a TIFF decoder", name);
  TIFFOpenOptionsSetErrorHandlerExtR(opts.get(), tiff_error, &src);
  TIFFOpenOptionsSetWarningHandlerExtR(opts.get(), tiff_warning, &src);
  TIFFOpenOptionsSetMaxSingleMemAlloc(opts.get(), tmsize_t(1) << 30);
  std::unique_ptr<TIFF, void (*)(TIFF*)> tif(
      TIFFClientOpenExt(name.c_str(), "rm", &src, tiff_read, tiff_write, tiff_seek, tiff_close,
                        tiff_size, tiff_map, tiff_unmap, opts.get()),
      TIFFClose);
  FKD_CHECK(tif != nullptr, DataError, "{}: corrupt TIFF: {}", name,
            src.message.empty() ? "cannot open it" : src.message);
  uint32_t w = 0, h = 0;
  uint16_t spp = 1, photometric = PHOTOMETRIC_MINISBLACK;
  TIFFGetField(tif.get(), TIFFTAG_IMAGEWIDTH, &w);
  TIFFGetField(tif.get(), TIFFTAG_IMAGELENGTH, &h);
  TIFFGetFieldDefaulted(tif.get(), TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetFieldDefaulted(tif.get(), TIFFTAG_PHOTOMETRIC, &photometric);
  check_image_size(w, h, name);
  uint16_t bits = 1, planar = PLANARCONFIG_CONTIG;
  TIFFGetFieldDefaulted(tif.get(), TIFFTAG_BITSPERSAMPLE, &bits);
  TIFFGetFieldDefaulted(tif.get(), TIFFTAG_PLANARCONFIG, &planar);
  // 8-bit grey or RGB, with or without alpha, in strips: the samples as stored, which is what
  // PIL reads (libtiff's RGBA rendering below would premultiply an unassociated alpha).
  const bool plain_rgb = photometric == PHOTOMETRIC_RGB && (spp == 3 || spp == 4);
  const bool plain_gray = photometric == PHOTOMETRIC_MINISBLACK && (spp == 1 || spp == 2);
  if ((plain_rgb || plain_gray) && bits == 8 && planar == PLANARCONFIG_CONTIG &&
      !TIFFIsTiled(tif.get())) {
    const size_t row = size_t(w) * spp;
    FKD_CHECK(size_t(TIFFScanlineSize(tif.get())) == row, DataError,
              "{}: corrupt TIFF: scanline size {} for {} samples", name,
              TIFFScanlineSize(tif.get()), row);
    std::vector<uint8_t> px(row * h);
    for (uint32_t y = 0; y < h; ++y) {
      FKD_CHECK(TIFFReadScanline(tif.get(), px.data() + row * y, y, 0) == 1, DataError,
                "{}: corrupt TIFF at row {}: {}", name, y,
                src.message.empty() ? "cannot read it" : src.message);
    }
    return image_from(std::move(px), int(w), int(h), int(spp), want);
  }
  // Anything else (palette, bilevel, YCbCr, CMYK, tiles, 16 bits...): the first image of the
  // file (PIL opens frame 0) in libtiff's RGBA rendering, top row first.
  std::vector<uint32_t> rgba(size_t(w) * size_t(h));
  FKD_CHECK(TIFFReadRGBAImageOriented(tif.get(), w, h, rgba.data(), ORIENTATION_TOPLEFT, 0) == 1,
            DataError, "{}: corrupt or unsupported TIFF: {}", name,
            src.message.empty() ? "cannot render it as RGBA" : src.message);
  // Grey files (PIL mode L) stay one channel: libtiff replicated the level into R, G and B.
  const bool gray =
      (photometric == PHOTOMETRIC_MINISBLACK || photometric == PHOTOMETRIC_MINISWHITE) && spp <= 2;
  const int comp = gray ? 1 : 3;  // alpha dropped
  std::vector<uint8_t> px(rgba.size() * size_t(comp));
  for (size_t p = 0; p < rgba.size(); ++p) {
    px[p * comp] = uint8_t(TIFFGetR(rgba[p]));
    if (!gray) {
      px[p * 3 + 1] = uint8_t(TIFFGetG(rgba[p]));
      px[p * 3 + 2] = uint8_t(TIFFGetB(rgba[p]));
    }
  }
  return image_from(std::move(px), int(w), int(h), comp, want);
}

// ---------------------------------------------------------------- BMP (stb_image)

uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

/// stb_image's message for the last failure on this thread (it may have none).
const char* stb_reason() {
  const char* r = stbi_failure_reason();
  return r ? r : "unknown error";
}

Image decode_bmp(const uint8_t* data, size_t size, int want, const std::string& name) {
  FKD_CHECK(size <= size_t(INT32_MAX), DataError, "{}: BMP file too large", name);
  int w = 0, h = 0, comp = 0;
  FKD_CHECK(size >= 34, DataError, "{}: truncated BMP: {} bytes", name, size);
  FKD_CHECK(stbi_info_from_memory(data, int(size), &w, &h, &comp) == 1, DataError,
            "{}: corrupt or unsupported BMP: {}", name, stb_reason());
  h = std::abs(h);  // stb reports a top-down BMP's height as stored: negative
  check_image_size(w, h, name);
  // stb_image reads missing bytes as zeros: refuse a truncated pixel array first (PIL raises
  // "image file is truncated"). Uncompressed rows are padded to 4 bytes.
  const uint32_t header = le32(data + 14);
  const bool os2 = header == 12;
  const int bpp = os2 ? (data[24] | data[25] << 8) : (data[28] | data[29] << 8);
  const uint32_t compression = os2 ? 0 : le32(data + 30);
  // Uncompressed, with or without bit-field masks; stb_image reads no RLE, JPEG or PNG BMPs.
  FKD_CHECK(compression == 0 || compression == 3 || compression == 6, DataError,
            "{}: BMP compression {} is not supported (uncompressed BMPs are)", name, compression);
  const uint64_t stride = (uint64_t(w) * uint64_t(bpp) + 31) / 32 * 4;
  const uint64_t need = uint64_t(le32(data + 10)) + stride * uint64_t(h);
  FKD_CHECK(need <= size, DataError, "{}: truncated BMP: {} bytes, its pixels need {}", name, size,
            need);
  // The common kind, 24-bit uncompressed (what PIL saves), read here: rows of BGR, bottom-up
  // unless the height is negative, each padded to 4 bytes. stb_image reads the others.
  if (!os2 && bpp == 24 && compression == 0) {
    const bool top_down = int32_t(le32(data + 22)) < 0;
    const uint8_t* pixels = data + le32(data + 10);
    std::vector<uint8_t> out(size_t(w) * size_t(h) * 3);
    for (int y = 0; y < h; ++y) {
      const uint8_t* src = pixels + stride * uint64_t(top_down ? y : h - 1 - y);
      uint8_t* dst = out.data() + size_t(y) * size_t(w) * 3;
      for (int x = 0; x < w; ++x, src += 3, dst += 3) {
        dst[0] = src[2];
        dst[1] = src[1];
        dst[2] = src[0];
      }
    }
    return image_from(std::move(out), w, h, 3, want);
  }
  std::unique_ptr<uint8_t, void (*)(void*)> px(
      stbi_load_from_memory(data, int(size), &w, &h, &comp, 0), stbi_image_free);
  FKD_CHECK(px != nullptr, DataError, "{}: corrupt or unsupported BMP: {}", name, stb_reason());
  // stb expands a BMP palette to RGB; PIL keeps a grey palette as L (or 1). Pixels are the
  // same either way; the channel count of want = 0 follows PIL when every pixel is grey.
  if (comp == 3 && bpp <= 8) {
    const uint8_t* p = px.get();
    bool gray = true;
    for (size_t i = 0, n = size_t(w) * size_t(h); i < n && gray; ++i, p += 3) {
      gray = p[0] == p[1] && p[1] == p[2];
    }
    if (gray) {
      std::vector<uint8_t> g(size_t(w) * size_t(h));
      for (size_t i = 0; i < g.size(); ++i) g[i] = px.get()[i * 3];
      return image_from(std::move(g), w, h, 1, want);
    }
  }
  return from_interleaved(px.get(), w, h, comp, want);
}

// ---------------------------------------------------------------- PNM

/// Netpbm P1-P6 as PIL reads them: bitmaps (1 = black) to L 0/255; samples of a maxval other
/// than 255 scaled to round(v / maxval * 255) (half to even, as Python's round), 16-bit ones
/// too (PIL opens 16-bit grey as mode I and clips it converting to L; fkd scales, as it keeps
/// the high byte of 16-bit PNG).
class PnmReader {
 public:
  PnmReader(const uint8_t* d, size_t n, const std::string& name) : d_(d), n_(n), name_(name) {}

  Image decode(int want) {
    const char kind = char(d_[1]);
    pos_ = 2;
    const bool bitmap = kind == '1' || kind == '4', plain = kind <= '3';
    const int bands = (kind == '3' || kind == '6') ? 3 : 1;
    const uint32_t w = number("width"), h = number("height");
    const uint32_t maxval = bitmap ? 1 : number("maxval");
    FKD_CHECK(maxval >= 1 && maxval <= 65535, DataError, "{}: PNM maxval {} not in [1, 65535]",
              name_, maxval);
    check_image_size(w, h, name_);
    if (!plain) {  // exactly one whitespace byte ends the header
      FKD_CHECK(pos_ < n_ && is_space(d_[pos_]), DataError, "{}: corrupt PNM header", name_);
      ++pos_;
    }
    const size_t samples = size_t(w) * h * bands;
    const size_t bytes = maxval > 255 ? 2 : 1, row = (size_t(w) + 7) / 8;
    // Before allocating: a plain sample takes at least one byte, binary ones 1/8, 1 or 2.
    need(plain ? samples : bitmap ? row * h : samples * bytes);
    std::vector<uint8_t> px(samples);
    if (bitmap && !plain) {
      for (uint32_t y = 0; y < h; ++y)
        for (uint32_t x = 0; x < w; ++x)
          px[size_t(y) * w + x] = (d_[pos_ + y * row + x / 8] >> (7 - x % 8)) & 1 ? 0 : 255;
    } else if (bitmap) {
      for (size_t i = 0; i < samples; ++i) {
        skip_space_and_comments();
        FKD_CHECK(pos_ < n_ && (d_[pos_] == '0' || d_[pos_] == '1'), DataError,
                  "{}: truncated or corrupt PNM: bit {} of {}", name_, i, samples);
        px[i] = d_[pos_++] == '1' ? 0 : 255;
      }
    } else if (!plain && maxval == 255) {
      std::memcpy(px.data(), d_ + pos_, samples);  // the common case: the bytes as they are
    } else {
      for (size_t i = 0; i < samples; ++i) {
        uint32_t v;
        if (plain) {
          v = number("sample");
          FKD_CHECK(v <= maxval, DataError, "{}: PNM sample {} above maxval {}", name_, v, maxval);
        } else {  // binary samples above maxval clip, as in PIL
          const uint8_t* p = d_ + pos_ + i * bytes;
          v = bytes == 2 ? uint32_t(p[0]) << 8 | p[1] : p[0];
        }
        px[i] = maxval == 255 ? uint8_t(v)
                              : uint8_t(std::min(255.0, std::nearbyint(double(v) / maxval * 255)));
      }
    }
    return image_from(std::move(px), int(w), int(h), bands, want);
  }

 private:
  static bool is_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
  void skip_space_and_comments() {
    while (pos_ < n_) {
      if (is_space(d_[pos_])) {
        ++pos_;
      } else if (d_[pos_] == '#') {
        while (pos_ < n_ && d_[pos_] != '\n' && d_[pos_] != '\r') ++pos_;
      } else {
        break;
      }
    }
  }
  uint32_t number(const char* what) {
    skip_space_and_comments();
    uint64_t v = 0;
    const size_t start = pos_;
    while (pos_ < n_ && d_[pos_] >= '0' && d_[pos_] <= '9' && v <= 0xFFFFFFFFu) {
      v = v * 10 + (d_[pos_++] - '0');
    }
    FKD_CHECK(pos_ > start && v <= 0xFFFFFFFFu, DataError, "{}: truncated or corrupt PNM: no {}",
              name_, what);
    return uint32_t(v);
  }
  void need(size_t bytes) const {
    FKD_CHECK(bytes <= n_ - pos_, DataError, "{}: truncated PNM: {} bytes of pixels, {} needed",
              name_, n_ - pos_, bytes);
  }

  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& name_;
};

}  // namespace

ImageFormat sniff_other_format(const uint8_t* d, size_t n) {
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0)
    return ImageFormat::kWebp;
  if (n >= 4 && (std::memcmp(d, "II*\0", 4) == 0 || std::memcmp(d, "MM\0*", 4) == 0 ||
                 std::memcmp(d, "II+\0", 4) == 0 || std::memcmp(d, "MM\0+", 4) == 0))
    return ImageFormat::kTiff;
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return ImageFormat::kBmp;
  if (n >= 2 && d[0] == 'P' && d[1] >= '1' && d[1] <= '6') return ImageFormat::kPnm;
  return ImageFormat::kUnknown;
}

Image decode_other(ImageFormat f, const uint8_t* data, size_t size, int want,
                   const std::string& name) {
  switch (f) {
    case ImageFormat::kWebp:
      return decode_webp(data, size, want, name);
    case ImageFormat::kTiff:
      return decode_tiff(data, size, want, name);
    case ImageFormat::kBmp:
      return decode_bmp(data, size, want, name);
    case ImageFormat::kPnm:
      return PnmReader(data, size, name).decode(want);
    case ImageFormat::kUnknown:
      break;
  }
  fail<DataError>("{}: not an image fkd reads (JPEG, PNG, WebP, TIFF, BMP, PNM)", name);
}

}  // namespace fkd
