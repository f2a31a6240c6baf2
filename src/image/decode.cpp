// JPEG (libjpeg API of libjpeg-turbo) and PNG (libpng) decoding into fkd::Image, with the
// channel conversions of PIL's Image.convert so that pixels match torchvision's PIL loader;
// the other formats of torchvision's ImageFolder are in decode_other.cpp.
//
// Both libraries report fatal errors through callbacks that must not return; they longjmp
// back to the function that called setjmp, which returns false, and its caller throws.
// Nothing with a destructor lives in the C frames that longjmp skips, and every object the
// decode changes lives in a "job" owned by that caller, so none is left indeterminate.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <jerror.h>  // after jpeglib.h, which it needs
#include <jpeglib.h>
#include <png.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/image.h"
#include "image/convert.h"
#include "image/decoders.h"

namespace fkd {
namespace {

bool is_jpeg(const uint8_t* d, size_t n) {
  return n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF;
}

bool is_png(const uint8_t* d, size_t n) {
  static constexpr uint8_t kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return n >= 8 && std::memcmp(d, kSig, 8) == 0;
}

RowRange clamp_rows(RowRange r, int height, const std::string& name) {
  r.begin = std::max(r.begin, 0);
  r.end = std::min(r.end, height);
  FKD_CHECK(r.begin < r.end, ConfigError, "{}: no rows to decode of a {}-row image", name, height);
  return r;
}

// ---------------------------------------------------------------- JPEG

struct JpegError {
  jpeg_error_mgr mgr;  // first member: libjpeg hands back a pointer to it
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_fatal(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  err->mgr.format_message(cinfo, err->message);
  longjmp(err->jump, 1);
}

// libjpeg reports damaged data (a truncated file, a bad Huffman code) only as a warning and
// goes on with grey filler; a training set must not silently learn from such pixels, so
// these warnings are errors. Warnings that leave the pixels intact stay silent, as in PIL:
// stray bytes between markers (common in real datasets) and odd JFIF/Adobe/ICC metadata.
void jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  switch (cinfo->err->msg_code) {
    case JWRN_EXTRANEOUS_DATA:
    case JWRN_JFIF_MAJOR:
    case JWRN_ADOBE_XFORM:
    case JWRN_BOGUS_ICC:
      return;
    default:
      jpeg_fatal(cinfo);
  }
}

void jpeg_silent(j_common_ptr) {}

/// Everything one JPEG decode owns. It lives in the caller of run_jpeg, outside the function
/// that calls setjmp, so that its values are intact after libjpeg's longjmp.
struct JpegJob {
  jpeg_decompress_struct cinfo;
  JpegError err;
  bool created = false;
  ImageBand band;
  std::vector<uint8_t> buffer;  // decoded samples when they need a conversion afterwards
  JpegJob() {
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_fatal;
    err.mgr.emit_message = jpeg_message;
    err.mgr.output_message = jpeg_silent;
    err.message[0] = '\0';
  }
  ~JpegJob() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
  JpegJob(const JpegJob&) = delete;
  JpegJob& operator=(const JpegJob&) = delete;
};

/// Decodes rows [rows.begin, rows.end) of a JPEG into job.band: the whole image when `pick`
/// is null, else the range it picks (clamped to the image) once the size is known. Returns
/// false when libjpeg reported an error (job.err.message says which).
bool run_jpeg(JpegJob& job, const uint8_t* data, size_t size, int want, const std::string& name,
              const RowPicker* pick) {
  if (setjmp(job.err.jump)) return false;
  jpeg_create_decompress(&job.cinfo);  // after setjmp: creating can already fail
  job.created = true;
  jpeg_decompress_struct& c = job.cinfo;
  jpeg_mem_src(&c, data, static_cast<unsigned long>(size));
  jpeg_read_header(&c, TRUE);
  const bool is_cmyk = c.jpeg_color_space == JCS_CMYK || c.jpeg_color_space == JCS_YCCK;
  const bool is_gray = c.num_components == 1;
  // A colour file wanted as grey is decoded to RGB and converted like PIL's convert('L');
  // libjpeg's own grey output (the Y plane) would differ from PIL by a level here and there.
  c.out_color_space = is_cmyk ? JCS_CMYK : is_gray ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&c);

  const int w = int(c.output_width), h = int(c.output_height);
  check_image_size(w, h, name);
  const RowRange rows = pick ? clamp_rows((*pick)(h, w), h, name) : RowRange{0, h};
  Image& img = job.band.image;
  job.band.first_row = rows.begin;
  job.band.full_height = h;
  img.height = rows.end - rows.begin;
  img.width = w;
  img.channels = want == 0 ? (is_gray ? 1 : 3) : want;
  img.pixels.resize(size_t(img.height) * w * img.channels);
  const int decoded = int(c.output_components);
  // Decode straight into the image when the layout already matches, else into a buffer.
  const bool direct = decoded == img.channels;
  if (!direct) job.buffer.resize(size_t(img.height) * w * decoded);
  uint8_t* base = direct ? img.pixels.data() : job.buffer.data();
  const size_t stride = size_t(w) * decoded;
  // Rows above the band are entropy-decoded only (the coefficients carry on from block to
  // block), without building their pixels.
  if (rows.begin > 0) jpeg_skip_scanlines(&c, JDIMENSION(rows.begin));
  while (int(c.output_scanline) < rows.end) {
    JSAMPROW out_rows[16];
    const int y = int(c.output_scanline);
    const int n = std::min(16, rows.end - y);
    for (int i = 0; i < n; ++i) out_rows[i] = base + size_t(y - rows.begin + i) * stride;
    jpeg_read_scanlines(&c, out_rows, JDIMENSION(n));
  }
  // Rows below the band are never decoded, nor checked.
  if (rows.end == h)
    jpeg_finish_decompress(&c);
  else
    jpeg_abort_decompress(&c);

  if (!direct) {
    const size_t npx = size_t(img.height) * w;
    uint8_t* out = img.pixels.data();
    if (is_cmyk) {
      // PIL reads CMYK JPEGs as Adobe-inverted ("CMYK;I"); libjpeg returns the stored values.
      if (img.channels == 3) {
        cmyk_inverted_to_rgb(job.buffer.data(), npx, out);
      } else {
        std::vector<uint8_t> rgb(npx * 3);
        cmyk_inverted_to_rgb(job.buffer.data(), npx, rgb.data());
        rgb_to_gray(rgb.data(), npx, out);
      }
    } else if (decoded == 1) {
      gray_to_rgb(job.buffer.data(), npx, out);
    } else {
      rgb_to_gray(job.buffer.data(), npx, out);
    }
  }
  return true;
}

ImageBand decode_jpeg(const uint8_t* data, size_t size, int want, const std::string& name,
                      const RowPicker* pick) {
  JpegJob job;
  if (!run_jpeg(job, data, size, want, name, pick)) {
    fail<DataError>("{}: corrupt JPEG: {}", name, job.err.message);
  }
  return std::move(job.band);
}

// ---------------------------------------------------------------- PNG

struct PngSource {
  const uint8_t* data;
  size_t size;
  size_t pos;
};

/// Everything one PNG decode owns; like JpegJob, it lives outside the function that calls
/// setjmp.
struct PngJob {
  PngSource src;
  jmp_buf jump;
  char message[256] = "";
  png_structp png = nullptr;
  png_infop info = nullptr;
  Image image;
  std::vector<uint8_t> buffer;  // decoded samples when they need a conversion afterwards
  std::vector<png_bytep> rows;
  ~PngJob() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

[[noreturn]] void png_fatal(png_structp png, png_const_charp msg) {
  auto* job = static_cast<PngJob*>(png_get_error_ptr(png));
  std::snprintf(job->message, sizeof job->message, "%s", msg);
  longjmp(job->jump, 1);
}

void png_silent(png_structp, png_const_charp) {}

void png_read_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) png_error(png, "file is truncated");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

/// Decodes a PNG into job.image; false when libpng reported an error (in job.message).
bool run_png(PngJob& job, int want, const std::string& name) {
  if (setjmp(job.jump)) return false;
  job.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job, png_fatal, png_silent);
  FKD_CHECK(job.png, DataError, "{}: cannot allocate a PNG decoder", name);
  job.info = png_create_info_struct(job.png);
  png_structp png = job.png;
  png_infop info = job.info;
  png_set_read_fn(png, &job.src, png_read_memory);
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  // 16-bit samples keep their high byte, as PIL's "RGB;16B"-style unpackers do. (PIL opens a
  // 16-bit *grey* PNG as 32-bit mode "I" and then clips it to 255 when converting; fkd scales.)
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  // Also drops the alpha that expanding a palette with a tRNS chunk would add.
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);

  const int w = int(png_get_image_width(png, info));
  const int h = int(png_get_image_height(png, info));
  check_image_size(w, h, name);
  const int file_channels = int(png_get_channels(png, info));  // 1 or 3 after the transforms
  Image& img = job.image;
  img.height = h;
  img.width = w;
  img.channels = want == 0 ? file_channels : want;
  img.pixels.resize(size_t(h) * w * img.channels);
  const bool direct = file_channels == img.channels;
  if (!direct) job.buffer.resize(size_t(h) * w * file_channels);
  uint8_t* base = direct ? img.pixels.data() : job.buffer.data();
  job.rows.resize(size_t(h));
  for (int y = 0; y < h; ++y) job.rows[size_t(y)] = base + size_t(y) * w * file_channels;
  png_read_image(png, job.rows.data());
  png_read_end(png, nullptr);

  if (!direct) {
    const size_t npx = size_t(h) * w;
    if (file_channels == 1)
      gray_to_rgb(job.buffer.data(), npx, img.pixels.data());
    else
      rgb_to_gray(job.buffer.data(), npx, img.pixels.data());
  }
  return true;
}

Image decode_png(const uint8_t* data, size_t size, int want, const std::string& name) {
  PngJob job;
  job.src = PngSource{data, size, 0};
  if (!run_png(job, want, name)) fail<DataError>("{}: corrupt PNG: {}", name, job.message);
  return std::move(job.image);
}

ImageBand decode_any(const uint8_t* data, size_t size, int want_channels, const std::string& name,
                     const RowPicker* pick) {
  FKD_CHECK(want_channels == 0 || want_channels == 1 || want_channels == 3, ConfigError,
            "{}: cannot decode to {} channels (expected 0, 1 or 3)", name, want_channels);
  FKD_CHECK(size > 0, DataError, "{}: empty file, not an image", name);
  if (is_jpeg(data, size)) return decode_jpeg(data, size, want_channels, name, pick);
  ImageBand band;
  if (is_png(data, size)) {
    band.image = decode_png(data, size, want_channels, name);
  } else {
    const ImageFormat f = sniff_other_format(data, size);
    FKD_CHECK(f != ImageFormat::kUnknown, DataError,
              "{}: not a JPEG, PNG, WebP, TIFF, BMP or PNM image (unknown magic bytes)", name);
    band.image = decode_other(f, data, size, want_channels, name);
  }
  band.full_height = band.image.height;
  if (pick) {  // only JPEG decodes a band: decode all, keep the band
    const RowRange r =
        clamp_rows((*pick)(band.image.height, band.image.width), band.image.height, name);
    Image& img = band.image;
    const size_t row_bytes = size_t(img.width) * img.channels;
    img.pixels.erase(img.pixels.begin() + ptrdiff_t(r.end * row_bytes), img.pixels.end());
    img.pixels.erase(img.pixels.begin(), img.pixels.begin() + ptrdiff_t(r.begin * row_bytes));
    img.height = r.end - r.begin;
    band.first_row = r.begin;
  }
  return band;
}

}  // namespace

// A damaged header can claim a huge size; refuse before allocating, at PIL's limit
// (Image.MAX_IMAGE_PIXELS * 2, where PIL raises DecompressionBombError).
void check_image_size(int64_t w, int64_t h, const std::string& name) {
  constexpr int64_t kMaxPixels = 2 * int64_t(89478485);
  // w <= max / h, not w * h <= max: the product of two 32-bit sizes overflows int64.
  FKD_CHECK(w > 0 && h > 0 && w <= kMaxPixels / h, DataError,
            "{}: image size {}x{} is empty or above {} pixels", name, w, h, kMaxPixels);
}

Image decode_image(const uint8_t* data, size_t size, int want_channels, const std::string& name) {
  return decode_any(data, size, want_channels, name, nullptr).image;
}

ImageBand decode_image_rows(const uint8_t* data, size_t size, int want_channels,
                            const std::string& name, const RowPicker& pick) {
  return decode_any(data, size, want_channels, name, &pick);
}

Image read_image(const std::string& path, int want_channels) {
  const std::vector<uint8_t> bytes = read_whole_file(path);
  return decode_image(bytes.data(), bytes.size(), want_channels, path);
}

}  // namespace fkd
