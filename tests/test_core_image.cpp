// Image kernels against PIL/torchvision (tests/py/image_*.py write the oracle's bytes), plus
// crop geometry, flips, the float conversion and damaged inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "fkd/error.h"
#include "fkd/image.h"
#include "image/resample.h"
#include "testutil.h"

namespace fkd {
namespace {

using detail::Kernels;

std::vector<std::vector<std::string>> read_manifest(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::vector<std::string>> rows;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ss(line);
    std::vector<std::string> fields;
    for (std::string w; ss >> w;) fields.push_back(w);
    if (!fields.empty()) rows.push_back(fields);
  }
  return rows;
}

std::vector<uint8_t> bytes_of(const std::string& path) {
  const std::string s = test::read_file(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

Image raw_image(const std::string& path, int h, int w, int c) {
  Image img;
  img.height = h;
  img.width = w;
  img.channels = c;
  img.pixels = bytes_of(path);
  EXPECT_EQ(img.pixels.size(), size_t(h) * w * c) << path;
  return img;
}

int max_abs_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  int m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

/// Kernel sets to check: the portable one always, AVX2 where the CPU runs it.
std::vector<Kernels> kernel_sets() {
  std::vector<Kernels> k{Kernels::kPortable};
  if (detail::avx2_available()) k.push_back(Kernels::kAvx2);
  return k;
}

std::vector<uint8_t> crop(Kernels k, const Image& src, const PixelBox& box, bool flip, int oh,
                          int ow, Interp interp) {
  std::vector<uint8_t> out(size_t(oh) * ow * src.channels), scratch;
  detail::resized_crop_with(k, src, box, flip, oh, ow, interp, out.data(), scratch);
  return out;
}

Image random_image(std::mt19937& rng, int h, int w, int c) {
  Image img;
  img.height = h;
  img.width = w;
  img.channels = c;
  img.pixels.resize(size_t(h) * w * c);
  std::uniform_int_distribution<int> level(0, 255);
  // Blocks of flat colour with noise: both smooth areas and sharp edges.
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int ch = 0; ch < c; ++ch) {
        const int base = ((x / 7 + y / 5 + ch) % 3) * 120;
        img.pixels[(size_t(y) * w + x) * c + ch] = uint8_t(std::min(255, base + level(rng) % 16));
      }
    }
  }
  return img;
}

// ------------------------------------------------------------------ decoding

class DecodeVsPil : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const auto r = test::run_python("image_decode.py", {dir_->path()});
    ASSERT_EQ(r.status, 0) << "image_decode.py failed";
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static test::TempDir* dir_;
};
test::TempDir* DecodeVsPil::dir_ = nullptr;

TEST_F(DecodeVsPil, PixelsMatchPil) {
  const auto rows = read_manifest(dir_->file("manifest.txt"));
  ASSERT_EQ(rows.size(), 129u);  // 43 files x 3 channel choices
  int jpeg_max = 0;
  for (const auto& r : rows) {
    const std::string& name = r[0];
    const int want = std::stoi(r[1]), h = std::stoi(r[2]), w = std::stoi(r[3]), c = std::stoi(r[4]);
    SCOPED_TRACE(name + " want " + r[1]);
    const Image img = read_image(dir_->file(name), want);
    ASSERT_EQ(img.height, h);
    ASSERT_EQ(img.width, w);
    ASSERT_EQ(img.channels, c);
    const int diff = max_abs_diff(img.pixels, bytes_of(dir_->file(r[5])));
    if (name.find(".jpg") != std::string::npos) {
      jpeg_max = std::max(jpeg_max, diff);
    } else {
      EXPECT_EQ(diff, 0);
    }
  }
  // PIL decodes with the same libjpeg-turbo and settings: measured max difference 0.
  EXPECT_EQ(jpeg_max, 0);
}

TEST_F(DecodeVsPil, DecodeFromMemoryEqualsReadImage) {
  const auto bytes = bytes_of(dir_->file("rgb_q90.jpg"));
  const Image a = decode_image(bytes.data(), bytes.size(), 0, "mem");
  const Image b = read_image(dir_->file("rgb_q90.jpg"), 0);
  EXPECT_EQ(a.pixels, b.pixels);
}

TEST_F(DecodeVsPil, RowBandsEqualTheRowsOfAFullDecode) {
  std::mt19937 rng(13);
  for (const char* name :
       {"rgb_q90.jpg", "rgb_444.jpg", "rgb_422.jpg", "rgb_progressive.jpg", "big_420.jpg",
        "big_progressive.jpg", "gray.jpg", "cmyk.jpg", "rgb.png"}) {
    const auto bytes = bytes_of(dir_->file(name));
    for (int want : {0, 1, 3}) {
      const Image full = decode_image(bytes.data(), bytes.size(), want, name);
      const size_t row_bytes = size_t(full.width) * full.channels;
      for (int k = 0; k < 25; ++k) {
        const int a = int(rng() % (full.height + 10)) - 5, b = int(rng() % (full.height + 10)) - 5;
        const RowRange want_rows{std::min(a, b), std::max(a, b) + 1};
        if (want_rows.end <= 0 || want_rows.begin >= full.height) continue;
        SCOPED_TRACE(::testing::Message() << name << " want " << want << " rows " << want_rows.begin
                                          << ".." << want_rows.end);
        int seen_h = 0, seen_w = 0;
        const ImageBand band =
            decode_image_rows(bytes.data(), bytes.size(), want, name, [&](int h, int w) {
              seen_h = h;
              seen_w = w;
              return want_rows;
            });
        EXPECT_EQ(seen_h, full.height);
        EXPECT_EQ(seen_w, full.width);
        const int begin = std::max(want_rows.begin, 0), end = std::min(want_rows.end, full.height);
        ASSERT_EQ(band.first_row, begin);
        ASSERT_EQ(band.full_height, full.height);
        ASSERT_EQ(band.image.height, end - begin);
        ASSERT_EQ(band.image.channels, full.channels);
        ASSERT_TRUE(std::equal(band.image.pixels.begin(), band.image.pixels.end(),
                               full.pixels.begin() + ptrdiff_t(begin * row_bytes)));
      }
    }
  }
  const auto bytes = bytes_of(dir_->file("rgb_q90.jpg"));
  EXPECT_THROW(decode_image_rows(bytes.data(), bytes.size(), 3, "x",
                                 [](int h, int) {
                                   return RowRange{h, h + 5};
                                 }),
               ConfigError);
}

template <typename E>
std::string error_of(const std::string& path, int want = 3) {
  try {
    read_image(path, want);
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no exception";
}

TEST_F(DecodeVsPil, DamagedFilesThrowDataErrorNamingTheFile) {
  test::TempDir tmp;
  const std::string jpeg = test::read_file(dir_->file("rgb_q90.jpg"));
  const std::string png = test::read_file(dir_->file("rgb.png"));
  std::mt19937 rng(3);
  std::string noise(4000, '\0');
  for (char& ch : noise) ch = char(rng() & 0xFF);
  std::string bad_scan = jpeg;  // a marker in the middle of the entropy-coded data
  bad_scan[jpeg.size() / 2] = char(0xFF);
  bad_scan[jpeg.size() / 2 + 1] = char(0xC4);
  std::map<std::string, std::string> cases = {
      {"truncated.jpg", jpeg.substr(0, jpeg.size() / 2)},
      {"headeronly.jpg", jpeg.substr(0, 300)},
      {"badscan.jpg", bad_scan},
      {"truncated.png", png.substr(0, png.size() / 2)},
      {"noiend.png", png.substr(0, png.size() - 12)},
      {"random.bin", noise},
      {"empty.jpg", ""},
  };
  // Every other format, cut in half.
  for (const char* other : {"rgb_lossy.webp", "rgb_lossless.webp", "rgb.tif", "rgb_lzw.tif",
                            "palette.tif", "rgb.bmp", "palette.bmp", "rgb.ppm", "gray.pgm"}) {
    const std::string bytes = test::read_file(dir_->file(other));
    cases.emplace(std::string("half_") + other, bytes.substr(0, bytes.size() / 2));
  }
  for (const auto& [name, data] : cases) {
    test::write_file(tmp.file(name), data);
    const std::string msg = error_of<DataError>(tmp.file(name));
    EXPECT_NE(msg.find(tmp.file(name)), std::string::npos) << name << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << name << ": " << msg;
  }
  EXPECT_NE(error_of<DataError>(tmp.file("random.bin")).find("not a JPEG, PNG, WebP, TIFF"),
            std::string::npos);
  EXPECT_NE(error_of<DataError>(tmp.file("truncated.jpg")).find("Premature end"),
            std::string::npos);
}

TEST_F(DecodeVsPil, UnreadablePathsThrowIoError) {
  const std::string missing = dir_->file("no-such-file.jpg");
  EXPECT_NE(error_of<IoError>(missing).find(missing), std::string::npos);
  EXPECT_NE(error_of<IoError>(missing).find("No such file"), std::string::npos);
  EXPECT_NE(error_of<IoError>(dir_->path()).find(dir_->path()), std::string::npos);  // a directory
}

TEST_F(DecodeVsPil, RandomDamageNeverCrashes) {
  // Truncations and byte changes anywhere: each decode either succeeds or throws DataError.
  std::mt19937 rng(11);
  int failures = 0, total = 0;
  for (const char* name :
       {"rgb_q90.jpg", "rgb_progressive.jpg", "palette.png", "rgb16.png", "rgb_lossy.webp",
        "rgb_lzw.tif", "palette.tif", "palette.bmp", "rgb.ppm"}) {
    const auto good = bytes_of(dir_->file(name));
    for (int k = 0; k < 150; ++k) {
      auto bytes = good;
      if (k % 2) {
        bytes.resize(rng() % bytes.size());
      } else {
        for (int f = 0; f < 4; ++f) bytes[rng() % bytes.size()] = uint8_t(rng());
      }
      ++total;
      try {
        decode_image(bytes.data(), bytes.size(), 3, name);
      } catch (const DataError&) {
        ++failures;
      }
    }
  }
  EXPECT_GT(failures, total / 2);  // truncations alone are half of the cases
}

TEST(Decode, WantChannelsIsValidated) {
  const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  EXPECT_THROW(decode_image(png_sig, 8, 2, "x.png"), ConfigError);
}

// ------------------------------------------------------------------ resampling vs torchvision

class ResampleVsTorchvision : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const auto r = test::run_python("image_resized_crop.py", {dir_->path()});
    ASSERT_EQ(r.status, 0) << "image_resized_crop.py failed";
    for (const auto& row : read_manifest(dir_->file("manifest.txt"))) {
      if (row[0] == "src") {
        sources_[row[1]] =
            raw_image(dir_->file(row[5]), std::stoi(row[2]), std::stoi(row[3]), std::stoi(row[4]));
      } else {
        rows_.push_back(row);
      }
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static test::TempDir* dir_;
  static std::map<std::string, Image> sources_;
  static std::vector<std::vector<std::string>> rows_;
};
test::TempDir* ResampleVsTorchvision::dir_ = nullptr;
std::map<std::string, Image> ResampleVsTorchvision::sources_;
std::vector<std::vector<std::string>> ResampleVsTorchvision::rows_;

TEST_F(ResampleVsTorchvision, ResizedCrop) {
  int cases = 0, worst = 0;
  for (const auto& r : rows_) {
    if (r[0] != "crop") continue;
    const Image& src = sources_.at(r[1]);
    const PixelBox box{std::stoi(r[3]), std::stoi(r[2]), std::stoi(r[5]), std::stoi(r[4])};
    const int oh = std::stoi(r[6]), ow = std::stoi(r[7]);
    const Interp interp = parse_interp(r[8]);
    const bool flip = r[9] == "1";
    const auto expected = bytes_of(dir_->file(r[10]));
    for (Kernels k : kernel_sets()) {
      SCOPED_TRACE(r[10] + (k == Kernels::kAvx2 ? " avx2" : " portable"));
      const int d = max_abs_diff(crop(k, src, box, flip, oh, ow, interp), expected);
      EXPECT_LE(d, 1);
      worst = std::max(worst, d);
    }
    ++cases;
  }
  EXPECT_EQ(cases, 2 * 59);
  // Measured: every pixel of every case equals torchvision's (max difference 0).
  EXPECT_EQ(worst, 0);
}

TEST_F(ResampleVsTorchvision, ResizeShorterThenCenterCrop) {
  int cases = 0, worst = 0;
  for (const auto& r : rows_) {
    if (r[0] != "center") continue;
    SCOPED_TRACE(r[6]);
    const Image& src = sources_.at(r[1]);
    const int size = std::stoi(r[2]), oh = std::stoi(r[3]), ow = std::stoi(r[4]);
    const Image resized = resize_shorter(src, size, parse_interp(r[5]));
    EXPECT_EQ(std::min(resized.height, resized.width), size);
    const PixelBox box = center_box(resized.height, resized.width, oh, ow);
    std::vector<uint8_t> out(size_t(oh) * ow * src.channels), scratch;
    resized_crop(resized, box, false, oh, ow, Interp::kBilinear, out.data(), scratch);
    const int d = max_abs_diff(out, bytes_of(dir_->file(r[6])));
    EXPECT_LE(d, 1);
    worst = std::max(worst, d);
    ++cases;
  }
  EXPECT_EQ(cases, 6);
  EXPECT_EQ(worst, 0);  // measured: identical
}

// ------------------------------------------------------------------ kernels, flips, geometry

TEST(ResizedCrop, Avx2KernelsEqualPortableKernels) {
  if (!detail::avx2_available()) GTEST_SKIP() << "no AVX2 on this CPU";
  std::mt19937 rng(5);
  for (int k = 0; k < 300; ++k) {
    const int c = k % 3 == 0 ? 1 : 3;
    const int h = 1 + int(rng() % 120), w = 1 + int(rng() % 120);
    const Image src = random_image(rng, h, w, c);
    const int bh = 1 + int(rng() % (h + 20)), bw = 1 + int(rng() % (w + 20));
    const PixelBox box{int(rng() % (w + 10)) - 5 - bw / 4, int(rng() % (h + 10)) - 5 - bh / 4, bw,
                       bh};
    const int oh = k % 7 == 0 ? bh : 1 + int(rng() % 90),
              ow = k % 5 == 0 ? bw : 1 + int(rng() % 90);
    const Interp interp = k % 2 ? Interp::kBicubic : Interp::kBilinear;
    const bool flip = k % 4 < 2;
    SCOPED_TRACE(::testing::Message()
                 << "case " << k << ": " << h << "x" << w << "x" << c << " box " << box.left << ","
                 << box.top << " " << bw << "x" << bh << " -> " << oh << "x" << ow);
    ASSERT_EQ(crop(Kernels::kAvx2, src, box, flip, oh, ow, interp),
              crop(Kernels::kPortable, src, box, flip, oh, ow, interp));
  }
}

TEST(ResizedCrop, FlipMirrorsTheOutput) {
  std::mt19937 rng(9);
  for (int c : {1, 3}) {
    const Image src = random_image(rng, 50, 70, c);
    for (const PixelBox& box :
         {PixelBox{3, 4, 40, 30}, PixelBox{-5, -5, 80, 60}, PixelBox{10, 10, 20, 20}}) {
      for (Interp interp : {Interp::kBilinear, Interp::kBicubic}) {
        for (Kernels k : kernel_sets()) {
          const int oh = 20, ow = 20;
          const auto plain = crop(k, src, box, false, oh, ow, interp);
          const auto flipped = crop(k, src, box, true, oh, ow, interp);
          for (int y = 0; y < oh; ++y) {
            for (int x = 0; x < ow; ++x) {
              for (int ch = 0; ch < c; ++ch) {
                ASSERT_EQ(flipped[(size_t(y) * ow + x) * c + ch],
                          plain[(size_t(y) * ow + (ow - 1 - x)) * c + ch]);
              }
            }
          }
        }
      }
    }
  }
}

TEST(ResizedCrop, SameSizeIsACopyWithZeroFill) {
  std::mt19937 rng(2);
  const Image src = random_image(rng, 10, 12, 3);
  for (Kernels k : kernel_sets()) {
    const auto out = crop(k, src, PixelBox{-2, 1, 6, 4}, false, 4, 6, Interp::kBicubic);
    for (int y = 0; y < 4; ++y) {
      for (int x = 0; x < 6; ++x) {
        for (int ch = 0; ch < 3; ++ch) {
          const int sx = x - 2, sy = y + 1;
          const uint8_t want = sx < 0 ? 0 : src.row(sy)[sx * 3 + ch];
          EXPECT_EQ(out[(size_t(y) * 6 + x) * 3 + ch], want);
        }
      }
    }
  }
}

TEST(ResizedCrop, BadArgumentsThrowConfigError) {
  std::mt19937 rng(1);
  const Image src = random_image(rng, 8, 8, 3);
  std::vector<uint8_t> out(64 * 3), scratch;
  EXPECT_THROW(
      resized_crop(src, PixelBox{0, 0, 0, 4}, false, 8, 8, Interp::kBilinear, out.data(), scratch),
      ConfigError);
  EXPECT_THROW(
      resized_crop(src, PixelBox{0, 0, 4, 4}, false, 0, 8, Interp::kBilinear, out.data(), scratch),
      ConfigError);
  Image bad = src;
  bad.pixels.pop_back();
  EXPECT_THROW(
      resized_crop(bad, PixelBox{0, 0, 4, 4}, false, 8, 8, Interp::kBilinear, out.data(), scratch),
      ConfigError);
}

TEST(CropBox, RoundTripsThroughNormalizedCoordinates) {
  std::mt19937 rng(17);
  for (int k = 0; k < 200000; ++k) {
    const int H = 1 + int(rng() % 4000), W = 1 + int(rng() % 4000);
    PixelBox b;
    b.height = 1 + int(rng() % H);
    b.width = 1 + int(rng() % W);
    b.top = int(rng() % (H - b.height + 1));
    b.left = int(rng() % (W - b.width + 1));
    const PixelBox r = to_pixel_box(to_crop_box(b, H, W), H, W);
    ASSERT_EQ(r.left, b.left) << H << "x" << W;
    ASSERT_EQ(r.top, b.top) << H << "x" << W;
    ASSERT_EQ(r.width, b.width) << H << "x" << W;
    ASSERT_EQ(r.height, b.height) << H << "x" << W;
  }
}

TEST(CropBox, RoundsHalfToEven) {
  // 0.125 * 20 = 2.5 -> 2, 0.375 * 20 = 7.5 -> 8 (Python's round, which PIL's crop uses).
  const PixelBox b = to_pixel_box(CropBox{0.125f, 0.375f, 0.5f, 0.5f}, 20, 20);
  EXPECT_EQ(b.top, 2);
  EXPECT_EQ(b.left, 8);
  EXPECT_EQ(b.height, 10);  // round(12.5) - 2 = 12 - 2
  EXPECT_EQ(b.width, 10);   // round(17.5) - 8 = 18 - 8
  EXPECT_EQ(to_pixel_box(CropBox{0.5f, 0.5f, 0.0f, 0.0f}, 10, 10).width, 1);  // at least 1
  EXPECT_THROW(to_pixel_box(CropBox{NAN, 0, 1, 1}, 10, 10), DataError);
}

TEST(CropBox, ReplayGivesIdenticalPixels) {
  std::mt19937 rng(23);
  const Image src = random_image(rng, 90, 120, 3);
  for (int k = 0; k < 50; ++k) {
    const PixelBox b{int(rng() % 60), int(rng() % 50), 10 + int(rng() % 60), 10 + int(rng() % 40)};
    const PixelBox r = to_pixel_box(to_crop_box(b, src.height, src.width), src.height, src.width);
    const auto first = crop(Kernels::kBest, src, b, k % 2, 32, 32, Interp::kBilinear);
    const auto replay = crop(Kernels::kBest, src, r, k % 2, 32, 32, Interp::kBilinear);
    ASSERT_EQ(first, replay);
  }
}

TEST(CropBox, ReplayOnA2xImageCoversTheSameRegion) {
  std::mt19937 rng(29);
  const Image small = random_image(rng, 45, 61, 3);
  Image big = small;  // every pixel doubled in both directions
  big.height *= 2;
  big.width *= 2;
  big.pixels.resize(size_t(big.height) * big.width * 3);
  for (int y = 0; y < big.height; ++y) {
    for (int x = 0; x < big.width; ++x) {
      for (int c = 0; c < 3; ++c) {
        big.pixels[(size_t(y) * big.width + x) * 3 + c] = small.row(y / 2)[(x / 2) * 3 + c];
      }
    }
  }
  for (int k = 0; k < 50; ++k) {
    const PixelBox b{int(rng() % 40), int(rng() % 30), 1 + int(rng() % 20), 1 + int(rng() % 15)};
    const PixelBox b2 =
        to_pixel_box(to_crop_box(b, small.height, small.width), big.height, big.width);
    ASSERT_EQ(b2.left, 2 * b.left);
    ASSERT_EQ(b2.top, 2 * b.top);
    ASSERT_EQ(b2.width, 2 * b.width);
    ASSERT_EQ(b2.height, 2 * b.height);
    // Cut without resampling, the big crop is the small crop with its pixels doubled.
    const auto cs = crop(Kernels::kBest, small, b, false, b.height, b.width, Interp::kBilinear);
    const auto cb = crop(Kernels::kBest, big, b2, false, b2.height, b2.width, Interp::kBilinear);
    for (int y = 0; y < b2.height; ++y) {
      for (int x = 0; x < b2.width; ++x) {
        for (int c = 0; c < 3; ++c) {
          ASSERT_EQ(cb[(size_t(y) * b2.width + x) * 3 + c],
                    cs[(size_t(y / 2) * b.width + x / 2) * 3 + c]);
        }
      }
    }
  }
}

TEST(CenterBox, TorchvisionGeometry) {
  const PixelBox b = center_box(375, 500, 224, 224);
  EXPECT_EQ(b.top, 76);  // round(75.5) = 76
  EXPECT_EQ(b.left, 138);
  EXPECT_EQ(b.width, 224);
  EXPECT_EQ(b.height, 224);
  // Larger than the image: torchvision pads floor(excess/2) before, so 7 -> 3 (not round(-3.5)).
  EXPECT_EQ(center_box(10, 10, 17, 10).top, -3);
  EXPECT_EQ(center_box(10, 10, 17, 10).left, 0);
}

TEST(ResizeShorter, OutputSizeAndNoOp) {
  std::mt19937 rng(31);
  const Image src = random_image(rng, 375, 500, 3);
  const Image r = resize_shorter(src, 256, Interp::kBilinear);
  EXPECT_EQ(r.height, 256);
  EXPECT_EQ(r.width, 341);  // int(256 * 500 / 375) = int(341.33)
  const Image same = resize_shorter(src, 375, Interp::kBilinear);
  EXPECT_EQ(same.pixels, src.pixels);
  EXPECT_EQ(same.width, 500);
}

TEST(ToFloatChw, KnownValues) {
  // 2x2 RGB: levels chosen so that each channel sees 0, 255 and mid values.
  const uint8_t hwc[12] = {0, 255, 128, 255, 0, 64, 10, 20, 30, 200, 100, 50};
  Normalize norm;
  float out[12];
  to_float_chw(hwc, 2, 2, 3, norm, out);
  for (int c = 0; c < 3; ++c) {
    for (int p = 0; p < 4; ++p) {
      const float want = (float(hwc[p * 3 + c]) / 255.0f - norm.mean[c]) / norm.std[c];
      EXPECT_EQ(out[c * 4 + p], want) << "channel " << c << " pixel " << p;
    }
  }
  EXPECT_NEAR(out[0], -0.485f / 0.229f, 1e-6);
  EXPECT_NEAR(out[4 + 0], (1.0f - 0.456f) / 0.224f, 1e-6);

  // A larger image goes through the vectorized path: still torchvision's exact floats.
  std::mt19937 rng(41);
  for (int c : {1, 3}) {
    const Image img = random_image(rng, 37, 53, c);
    std::vector<float> chw(img.pixels.size());
    to_float_chw(img.pixels.data(), img.height, img.width, c, norm, chw.data());
    const size_t npx = size_t(img.height) * img.width;
    for (size_t p = 0; p < npx; ++p) {
      for (int ch = 0; ch < c; ++ch) {
        const float want = (float(img.pixels[p * c + ch]) / 255.0f - norm.mean[ch]) / norm.std[ch];
        ASSERT_EQ(chw[ch * npx + p], want) << "channels " << c << " pixel " << p;
      }
    }
  }

  const uint8_t gray[3] = {0, 51, 255};
  Normalize unit;
  unit.mean[0] = 0.5f;
  unit.std[0] = 0.5f;
  float g[3];
  to_float_chw(gray, 1, 3, 1, unit, g);
  EXPECT_FLOAT_EQ(g[0], -1.0f);
  EXPECT_FLOAT_EQ(g[1], -0.6f);
  EXPECT_FLOAT_EQ(g[2], 1.0f);
}

TEST(ToFloatChw, OneConverterServesManyImagesExactly) {
  // One prepared converter per normalization, reused across images of several sizes (vector
  // body and scalar tail): every level gives torchvision's float, as to_float_chw does.
  Normalize odd;
  for (int c = 0; c < 3; ++c) {
    odd.mean[c] = 0.3f + 0.1f * c;
    odd.std[c] = 0.07f + 0.2f * c;
  }
  std::mt19937 rng(5);
  for (const Normalize& norm : {Normalize{}, odd}) {
    for (int c : {1, 3}) {
      const ChwConverter convert(norm, c);
      EXPECT_EQ(convert.channels(), c);
      for (const auto& [h, w] : {std::pair{16, 16}, std::pair{7, 9}, std::pair{1, 256}}) {
        Image img = random_image(rng, h, w, c);
        if (h == 1) {
          for (int x = 0; x < w * c; ++x) img.pixels[size_t(x)] = uint8_t(x / c);  // all levels
        }
        std::vector<float> got(img.pixels.size()), once(img.pixels.size());
        convert.convert(img.pixels.data(), h, w, got.data());
        to_float_chw(img.pixels.data(), h, w, c, norm, once.data());
        EXPECT_EQ(got, once);
        const size_t npx = size_t(h) * w;
        for (size_t p = 0; p < npx; ++p) {
          for (int ch = 0; ch < c; ++ch) {
            const float want =
                (float(img.pixels[p * c + ch]) / 255.0f - norm.mean[ch]) / norm.std[ch];
            ASSERT_EQ(got[ch * npx + p], want) << "channels " << c << " pixel " << p;
          }
        }
      }
    }
  }
  EXPECT_THROW(ChwConverter(Normalize{}, 2), ConfigError);
}

TEST(Decode, HugeClaimedSizeIsRefusedWithoutOverflow) {
  // A TIFF whose header claims 4043309056 x 4143972361 pixels: the size check once
  // multiplied the two and overflowed (found by fuzz_image_decode; kept in its corpus).
  const std::string bytes =
      test::read_file(test::source_path("fuzz/corpus-image/tiff-size-overflow.tif"));
  try {
    decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, "big.tif");
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("big.tif"), std::string::npos) << e.what();
  }
}

TEST(ParseInterp, Names) {
  EXPECT_EQ(parse_interp("bilinear"), Interp::kBilinear);
  EXPECT_EQ(parse_interp("bicubic"), Interp::kBicubic);
  EXPECT_THROW(parse_interp("nearest"), ConfigError);
}

}  // namespace
}  // namespace fkd
