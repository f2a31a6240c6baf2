// Explicit crop boxes in the label store (format version 3, docs/label-store.md "Explicit
// crops"): the box section of both record codecs at many image sizes, its checks, stores of
// explicit crops written, read, merged, verified, ensembled and repaired record by record,
// and their replay in training (StoreCropSource).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fkd/error.h"
#include "fkd/inspect.h"
#include "fkd/replay.h"
#include "fkd/rng.h"
#include "fkd/store.h"
#include "fkd/transforms.h"
#include "store/bytes.h"
#include "store/manifest.h"
#include "store/record.h"
#include "store/shard.h"
#include "testutil.h"

namespace fkd {
namespace {

namespace fs = std::filesystem;
using test::read_file;
using test::TempDir;
using test::write_file;

constexpr int kClasses = 30;

Manifest explicit_manifest(uint32_t crops, uint64_t images, uint32_t shards = 1,
                           Precision p = Precision::kFp16) {
  Manifest m;
  m.num_images = images;
  m.dataset_fingerprint = "00ff00ff00ff00ff";
  for (int c = 0; c < kClasses; ++c) m.classes.push_back("c" + std::to_string(c));
  m.teacher = "reference";
  m.teacher_hash = "0123456789abcdef0123456789abcdef";
  m.label_type = LabelType::kMarginalSmoothing;
  m.k = 5;
  m.precision = p;
  m.crops_per_image = crops;
  m.crop_origin = CropOrigin::kExplicit;
  m.crop.size = 224;
  m.mean = {0.485f, 0.456f, 0.406f};
  m.std = {0.229f, 0.224f, 0.225f};
  m.num_shards = shards;
  return m;
}

/// A random box inside an H x W image; every 7th crop the whole image, every 11th one pixel
/// in the bottom-right corner (the extremes of every field).
CropPlan random_box(Rng& r, uint32_t H, uint32_t W, uint32_t c) {
  CropPlan p;
  if (c % 7 == 3) {
    p.box = {0, 0, int(W), int(H)};
  } else if (c % 11 == 5) {
    p.box = {int(W - 1), int(H - 1), 1, 1};
  } else {
    const uint32_t w = 1 + uint32_t(r.below(W)), h = 1 + uint32_t(r.below(H));
    p.box = {int(r.below(W - w + 1)), int(r.below(H - h + 1)), int(w), int(h)};
  }
  p.flip = r.below(2) == 1;
  p.id = c;
  return p;
}

/// Labels of image `image` with random boxes (values descend: packable).
ImageLabels explicit_labels(const Manifest& m, uint64_t image, uint32_t H, uint32_t W) {
  ImageLabels l;
  l.height = H;
  l.width = W;
  l.num_crops = m.crops_per_image;
  Rng r(hash_keys({image, H, W, 17}));
  std::vector<float> probs(m.classes.size());
  const int ni = stored_indices(m.label_type, m.k);
  const int nv = stored_values(m.label_type, m.k, int(m.classes.size()));
  l.indices.resize(size_t(m.crops_per_image) * size_t(ni));
  l.values.resize(size_t(m.crops_per_image) * size_t(nv));
  for (uint32_t c = 0; c < m.crops_per_image; ++c) {
    l.boxes.push_back(random_box(r, H, W, c));
    float sum = 0;
    for (float& p : probs) sum += (p = float(1 + r.below(100)));
    probs[size_t(image % m.classes.size())] += 5 * sum;
    sum *= 6;
    for (float& p : probs) p /= sum;
    quantize_crop(probs.data(), int(m.classes.size()), m.label_type, m.k,
                  l.indices.data() + size_t(c) * size_t(ni),
                  l.values.data() + size_t(c) * size_t(nv));
  }
  return l;
}

uint32_t image_height(uint64_t i) { return 300 + uint32_t(i * 37 % 200); }
uint32_t image_width(uint64_t i) { return 280 + uint32_t(i * 53 % 220); }
ImageLabels store_labels(const Manifest& m, uint64_t i) {
  return explicit_labels(m, i, image_height(i), image_width(i));
}

void expect_same_boxes(const std::vector<CropPlan>& got, const std::vector<CropPlan>& want,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t c = 0; c < got.size(); ++c) {
    const CropPlan &a = got[c], &b = want[c];
    ASSERT_TRUE(a.box.left == b.box.left && a.box.top == b.box.top && a.box.width == b.box.width &&
                a.box.height == b.box.height && a.flip == b.flip)
        << what << " crop " << c << ": (" << a.box.left << "," << a.box.top << "," << a.box.width
        << "," << a.box.height << "," << a.flip << ") vs (" << b.box.left << "," << b.box.top << ","
        << b.box.width << "," << b.box.height << "," << b.flip << ")";
    ASSERT_EQ(a.id, uint32_t(c)) << what;
  }
}

void write_store(const std::string& dir, const Manifest& m,
                 ImageLabels (*labels)(const Manifest&, uint64_t) = store_labels) {
  fs::create_directories(dir);
  write_manifest(dir, m);
  for (uint32_t s = 0; s < m.num_shards; ++s) {
    ShardWriter w(dir, m, s);
    for (uint64_t i = w.next_image(); i < shard_range(m.num_images, s, m.num_shards).second; ++i)
      w.append(i, labels(m, i));
    w.finish();
  }
}

// --- the box section, through both codecs -----------------------------------------------

TEST(StoreBoxes, FieldWidthsFollowTheImageSides) {
  EXPECT_EQ(store::box_field_bits(1), 0);
  EXPECT_EQ(store::box_field_bits(2), 1);
  EXPECT_EQ(store::box_field_bits(256), 8);
  EXPECT_EQ(store::box_field_bits(257), 9);
  EXPECT_EQ(store::box_field_bits(500), 9);
  EXPECT_EQ(store::box_field_bits(65535), 16);
  EXPECT_EQ(store::box_field_bits(65536), 16);
  EXPECT_EQ(store::box_field_bits(65537), 17);
  EXPECT_EQ(store::box_field_bits(0x7fffffffu), 31);
  // 500 x 375: 2 * 9 + 2 * 9 + 1 = 37 bits a crop, 4.625 bytes.
  EXPECT_EQ(store::box_section_bytes(500, 375, 500), (500u * 37 + 7) / 8);
  EXPECT_EQ(store::box_section_bytes(8, 1, 1), 1u);  // only the flips
  EXPECT_EQ(store::box_section_bytes(9, 1, 1), 2u);
}

TEST(StoreBoxes, RoundTripAtManyImageSizesThroughBothCodecs) {
  const std::vector<std::pair<uint32_t, uint32_t>> sizes = {
      {1, 1},           {1, 2},           {2, 1},         {1, 500},   {500, 1},
      {375, 500},       {500, 375},       {3, 3},         {255, 256}, {256, 257},
      {1, 65535},       {65535, 1},       {65535, 65535}, {65536, 3}, {65537, 65536},
      {0x7fffffffu, 3}, {2, 0x7fffffffu}, {1024, 768},    {33, 4097}};
  for (uint32_t crops : {1u, 7u, 64u, 129u}) {
    Manifest m = explicit_manifest(crops, 1);
    const store::RecordFormat f = store::record_format(m);
    ASSERT_TRUE(f.explicit_crops);
    for (const auto& [H, W] : sizes) {
      const std::string what = fmt::format("{} crops of {}x{}", crops, H, W);
      ImageLabels l = explicit_labels(m, 3, H, W);
      for (float& v : l.values) v = round_to_precision(v, m.precision);
      store::check_labels(f, l, what);
      const store::Where where{what, 3, 0};
      // Packed.
      std::vector<uint8_t> packed;
      ASSERT_TRUE(store::encode_packed_record(f, l, packed)) << what;
      ImageLabels got;
      store::decode_packed_record(f, packed.data(), packed.size(), got, where);
      expect_same_boxes(got.boxes, l.boxes, what + " packed");
      EXPECT_EQ(got.crop_hash, store::crops_hash(l.boxes.data(), l.boxes.size())) << what;
      EXPECT_EQ(got.indices, l.indices) << what;
      EXPECT_EQ(got.values, l.values) << what;
      // The box section is exactly its specified size (header + boxes precede the labels).
      store::RecordFormat derived = f;
      derived.explicit_crops = false;
      ImageLabels plain = l;
      plain.boxes.clear();
      std::vector<uint8_t> packed_plain;
      ASSERT_TRUE(store::encode_packed_record(derived, plain, packed_plain));
      EXPECT_EQ(packed.size() - packed_plain.size(), store::box_section_bytes(crops, H, W)) << what;
      // zstd.
      std::vector<uint8_t> raw, frame;
      std::vector<size_t> sections;
      store::encode_record(f, l, raw, sections);
      store::compress_record(raw, sections, frame);
      ImageLabels unz;
      store::decode_record(f, frame.data(), frame.size(), uint32_t(raw.size()), unz, where);
      expect_same_boxes(unz.boxes, l.boxes, what + " zstd");
      EXPECT_EQ(unz.values, l.values) << what;
    }
  }
}

TEST(StoreBoxes, FlipBitsAreStoredPerCrop) {
  Manifest m = explicit_manifest(40, 1);
  const store::RecordFormat f = store::record_format(m);
  ImageLabels l = explicit_labels(m, 0, 1, 1);  // no box bits at all: only the flips
  for (uint32_t c = 0; c < 40; ++c) l.boxes[c].flip = (c * 7 + c / 3) % 5 < 2;
  std::vector<uint8_t> packed;
  ASSERT_TRUE(store::encode_packed_record(f, l, packed));
  ImageLabels got;
  store::decode_packed_record(f, packed.data(), packed.size(), got, store::Where{"mem", 0, 0});
  expect_same_boxes(got.boxes, l.boxes, "1x1");
  for (auto& b : l.boxes) b.flip = !b.flip;
  std::vector<uint8_t> again;
  ASSERT_TRUE(store::encode_packed_record(f, l, again));
  EXPECT_NE(again, packed);
  store::decode_packed_record(f, again.data(), again.size(), got, store::Where{"mem", 0, 0});
  expect_same_boxes(got.boxes, l.boxes, "1x1 flipped");
}

TEST(StoreBoxes, EveryFlippedBitOfTheBoxSectionIsDetected) {
  Manifest m = explicit_manifest(6, 1);
  const store::RecordFormat f = store::record_format(m);
  for (const auto& [H, W] : std::vector<std::pair<uint32_t, uint32_t>>{{375, 500}, {5, 1}}) {
    const ImageLabels l = explicit_labels(m, 1, H, W);
    std::vector<uint8_t> packed;
    ASSERT_TRUE(store::encode_packed_record(f, l, packed));
    const size_t bits =
        size_t(6) * size_t(2 * store::box_field_bits(W) + 2 * store::box_field_bits(H) + 1);
    for (size_t b = 0; b < bits; ++b) {
      std::vector<uint8_t> bad = packed;
      bad[store::kRecordHeaderSize + b / 8] ^= uint8_t(1u << (b % 8));
      ImageLabels got;
      const std::string msg = test::error_message<FormatError>([&] {
        store::decode_packed_record(f, bad.data(), bad.size(), got,
                                    store::Where{"shard.fkdl", 9, 128});
      });
      EXPECT_NE(msg.find("shard.fkdl: image 9 (block at offset 128)"), std::string::npos)
          << H << "x" << W << " bit " << b << ": " << msg;
      EXPECT_TRUE(msg.find("does not match the record's boxes") != std::string::npos ||
                  msg.find("is not inside") != std::string::npos)
          << msg;
    }
  }
}

TEST(StoreBoxes, BoxOutsideTheImageOrTruncatedIsAFormatError) {
  Manifest m = explicit_manifest(4, 1);
  const store::RecordFormat f = store::record_format(m);
  ImageLabels l = explicit_labels(m, 0, 10, 12);
  // 12 wide: 4 bits hold up to 15, so left 10 + width 3 fits the field but not the image.
  l.boxes[2].box = {10, 0, 3, 4};
  std::vector<uint8_t> packed;
  ASSERT_TRUE(store::encode_packed_record(f, l, packed));  // the encoder trusts check_labels
  ImageLabels got;
  std::string msg = test::error_message<FormatError>([&] {
    store::decode_packed_record(f, packed.data(), packed.size(), got, store::Where{"s", 4, 200});
  });
  EXPECT_NE(
      msg.find("s: image 4 (block at offset 200): crop boxes at record offset 16: crop 2: "
               "box (left 10, top 0, width 3, height 4) is not inside the 10x12 (height x width) "
               "image"),
      std::string::npos)
      << msg;
  // Truncated inside the boxes.
  l = explicit_labels(m, 0, 10, 12);
  ASSERT_TRUE(store::encode_packed_record(f, l, packed));
  packed.resize(store::kRecordHeaderSize + 3);
  msg = test::error_message<FormatError>([&] {
    store::decode_packed_record(f, packed.data(), packed.size(), got, store::Where{"s", 4, 200});
  });
  EXPECT_NE(msg.find("crop boxes needs"), std::string::npos) << msg;
}

TEST(StoreBoxes, WriterChecksTheBoxesOfEveryRecord) {
  TempDir dir;
  const Manifest m = explicit_manifest(5, 3);
  fs::create_directories(dir.path());
  write_manifest(dir.path(), m);
  ShardWriter w(dir.path(), m, 0);
  ImageLabels l = store_labels(m, 0);
  l.boxes.pop_back();
  EXPECT_NE(test::error_message<DataError>([&] {
              w.append(0, l);
            }).find("image 0: 4 crop boxes for 5 crops"),
            std::string::npos);
  l = store_labels(m, 0);
  l.boxes[1].box.width = 0;
  EXPECT_NE(test::error_message<DataError>([&] { w.append(0, l); }).find("crop 1: box"),
            std::string::npos);
  l = store_labels(m, 0);
  l.boxes[3].box.left = int(l.width) - l.boxes[3].box.width + 1;
  EXPECT_NE(test::error_message<DataError>([&] { w.append(0, l); }).find("is not inside"),
            std::string::npos);
  l = store_labels(m, 0);
  l.boxes[0].box.top = -1;
  EXPECT_NE(test::error_message<DataError>([&] { w.append(0, l); }).find("crop 0"),
            std::string::npos);
  // The writer computes the hash: whatever the caller put there does not matter.
  l = store_labels(m, 0);
  l.crop_hash = 12345;
  w.append(0, l);
  // A derived store refuses boxes (they would be lost).
  Manifest d = m;
  d.crop_origin = CropOrigin::kDerived;
  TempDir other;
  fs::create_directories(other.path());
  ShardWriter dw(other.path(), d, 0);
  l = store_labels(d, 0);
  l.crop_hash = 0;
  EXPECT_NE(
      test::error_message<DataError>([&] { dw.append(0, l); }).find("the store derives its crops"),
      std::string::npos);
  // Explicit crops have nothing to derive.
  EXPECT_THROW(label_crop_hash(m, 0, 10, 10), ConfigError);
}

TEST(StoreBoxes, NormalizedCoordinatesMapBackToThePixelBox) {
  // docs/label-store.md, "Precision": to_crop_box as float32 comes back to the same pixel box
  // through the reference's rounding (to_pixel_box); rounded to float16, for sides below 1024.
  auto half = [](float v) { return store::half_to_float(store::float_to_half(v)); };
  Rng r(3);
  for (const auto& [H, W] : std::vector<std::pair<int, int>>{{1, 1},
                                                             {375, 500},
                                                             {1023, 1},
                                                             {700, 1023},
                                                             {4000, 3000},
                                                             {65535, 65535},
                                                             {1000000, 7},
                                                             {(1 << 20) - 1, 1 << 19}}) {
    const bool fp16_exact = H < 1024 && W < 1024;
    for (uint32_t c = 0; c < 2000; ++c) {
      const CropPlan p = random_box(r, uint32_t(H), uint32_t(W), c);
      const CropBox n = to_crop_box(p.box, H, W);
      const PixelBox b = to_pixel_box(n, H, W);
      ASSERT_TRUE(b.left == p.box.left && b.top == p.box.top && b.width == p.box.width &&
                  b.height == p.box.height)
          << H << "x" << W << " crop " << c;
      if (!fp16_exact) continue;
      const PixelBox h = to_pixel_box({half(n.i), half(n.j), half(n.h), half(n.w)}, H, W);
      ASSERT_TRUE(h.left == p.box.left && h.top == p.box.top && h.width == p.box.width &&
                  h.height == p.box.height)
          << "fp16 " << H << "x" << W << " crop " << c;
    }
  }
}

// --- stores of explicit crops -------------------------------------------------------------

TEST(StoreBoxes, ManifestKeyVersionAndStoreKey) {
  TempDir dir;
  const Manifest m = explicit_manifest(5, 4);
  write_store(dir.path(), m);
  const nlohmann::json j = nlohmann::json::parse(read_file(dir.path() + "/manifest.json"));
  EXPECT_EQ(j.at("crops"), "explicit");
  EXPECT_EQ(j.at("version"), 3);
  Manifest back = read_manifest(dir.path());
  EXPECT_EQ(back.crop_origin, CropOrigin::kExplicit);
  EXPECT_TRUE(manifest_differences(back, m).empty());
  Manifest derived = m;
  derived.crop_origin = CropOrigin::kDerived;
  EXPECT_NE(store::store_key(derived), store::store_key(m));
  const auto diffs = manifest_differences(derived, m);
  ASSERT_EQ(diffs.size(), 1u);
  EXPECT_EQ(diffs[0], "crops (derived vs explicit)");
  // A derived manifest has no "crops" key (as before version 3), and reads as derived.
  TempDir d2;
  fs::create_directories(d2.path());
  write_manifest(d2.path(), derived);
  EXPECT_FALSE(nlohmann::json::parse(read_file(d2.path() + "/manifest.json")).contains("crops"));
  EXPECT_EQ(read_manifest(d2.path()).crop_origin, CropOrigin::kDerived);

  auto edit = [&](const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json e = j;
    f(e);
    write_file(dir.path() + "/manifest.json", e.dump());
    return test::error_message<FormatError>([&] { read_manifest(dir.path()); });
  };
  EXPECT_NE(edit([](nlohmann::json& e) {
              e["crops"] = "random";
            }).find("key 'crops': expected \"derived\" or \"explicit\", found \"random\""),
            std::string::npos);
  EXPECT_NE(edit([](nlohmann::json& e) {
              e["version"] = 2;
            }).find("crops: explicit crops need format version 3 or later, found 2"),
            std::string::npos);
  // A store whose manifest claims derived crops for explicit shards is another store.
  nlohmann::json no_crops = j;
  no_crops.erase("crops");
  write_file(dir.path() + "/manifest.json", no_crops.dump());
  const std::string msg = test::error_message<FormatError>([&] { StoreReader r(dir.path()); });
  EXPECT_NE(msg.find("crops = explicit, manifest.json says derived"), std::string::npos) << msg;
}

TEST(StoreBoxes, ShardHeaderCropOriginIsChecked) {
  TempDir dir;
  Manifest m = explicit_manifest(3, 2);
  write_store(dir.path(), m);
  const std::string shard = dir.path() + "/" + shard_file_name(0, 1);
  std::string b = read_file(shard);
  EXPECT_EQ(b[58], 1);
  auto reseal = [](std::string& h) {
    store::store_u64(reinterpret_cast<uint8_t*>(&h[120]),
                     store::checksum64(reinterpret_cast<const uint8_t*>(h.data()), 120));
  };
  std::string v2 = b;
  v2[8] = 2;
  reseal(v2);
  std::string msg = test::error_message<FormatError>([&] {
    store::decode_header(reinterpret_cast<const uint8_t*>(v2.data()), v2.size(), "x.fkdl");
  });
  EXPECT_NE(msg.find("x.fkdl: offset 58: expected crop origin 0 (derived) in a version < 3 shard, "
                     "found 1"),
            std::string::npos)
      << msg;
  std::string two = b;
  two[58] = 2;
  reseal(two);
  msg = test::error_message<FormatError>([&] {
    store::decode_header(reinterpret_cast<const uint8_t*>(two.data()), two.size(), "x.fkdl");
  });
  EXPECT_NE(msg.find("offset 58: expected crop origin 0 (derived) or 1 (explicit), found 2"),
            std::string::npos)
      << msg;
}

TEST(StoreBoxes, StoreRoundTripMergeAndVerify) {
  TempDir dir, merged;
  const Manifest m = explicit_manifest(50, 9, 3);
  write_store(dir.path(), m);
  StoreReader r(dir.path());
  EXPECT_EQ(r.manifest().crop_origin, CropOrigin::kExplicit);
  ImageLabels got;
  for (uint64_t i = 0; i < 9; ++i) {
    const ImageLabels want = store_labels(m, i);
    r.read(i, got);
    const std::string what = "image " + std::to_string(i);
    expect_same_boxes(got.boxes, want.boxes, what);
    EXPECT_EQ(got.height, want.height);
    EXPECT_EQ(got.width, want.width);
    EXPECT_EQ(got.indices, want.indices);
    for (uint32_t c = 0; c < 50; ++c) {
      const CropPlan p = store_crop(r.manifest(), got, i, c);
      EXPECT_EQ(p.box.left, want.boxes[c].box.left);
      EXPECT_EQ(p.box.height, want.boxes[c].box.height);
      EXPECT_EQ(p.flip, want.boxes[c].flip);
      EXPECT_EQ(p.id, c);
    }
    EXPECT_TRUE(r.verify_crops(i));
  }
  EXPECT_THROW(store_crop(r.manifest(), got, 8, 50), ConfigError);
  EXPECT_TRUE(verify_store(dir.path()).ok());
  StoreReader checking(dir.path(), /*check_crops=*/true);
  checking.read(4, got);

  merge_store(dir.path(), merged.path() + "/out");
  StoreReader rm(merged.path() + "/out");
  EXPECT_EQ(rm.manifest().crop_origin, CropOrigin::kExplicit);
  EXPECT_EQ(rm.manifest().num_shards, 1u);
  ImageLabels a;
  for (uint64_t i = 0; i < 9; ++i) {
    rm.read(i, a);
    r.read(i, got);
    expect_same_boxes(a.boxes, got.boxes, "merged image " + std::to_string(i));
    EXPECT_EQ(a.values, got.values);
  }
}

TEST(StoreBoxes, DerivedStoresAreTheSameSizeAsBefore) {
  // A version 3 store of derived crops writes the records of version 2, byte for byte.
  Manifest m = explicit_manifest(20, 4);
  m.crop_origin = CropOrigin::kDerived;
  m.seed = 5;
  m.crop.size = 0;
  auto derived = [](const Manifest& mm, uint64_t i) {
    ImageLabels l = store_labels(mm, i);
    l.boxes.clear();
    l.crop_hash = label_crop_hash(mm, i, l.height, l.width);
    return l;
  };
  TempDir v2, v3;
  Manifest m2 = m;
  m2.version = 2;
  write_store(v2.path(), m2, derived);
  write_store(v3.path(), m, derived);
  const std::string a = read_file(v2.path() + "/" + shard_file_name(0, 1));
  const std::string b = read_file(v3.path() + "/" + shard_file_name(0, 1));
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a.substr(128), b.substr(128));  // headers differ in version and store key only
  StoreReader r(v3.path());
  ImageLabels l;
  r.read(2, l);
  EXPECT_TRUE(l.boxes.empty());
  const CropPlan p = store_crop(r.manifest(), l, 2, 7);
  const CropPlan q = derive_label_crop(m.crop, m.seed, 2, 7, int(l.height), int(l.width));
  EXPECT_EQ(p.box.left, q.box.left);
  EXPECT_EQ(p.box.top, q.box.top);
  EXPECT_EQ(p.box.width, q.box.width);
  EXPECT_EQ(p.flip, q.flip);
  EXPECT_EQ(p.id, 7u);
}

TEST(StoreBoxes, CorruptBoxesInAStoreAreNamed) {
  TempDir dir;
  const Manifest m = explicit_manifest(8, 3);
  write_store(dir.path(), m);
  const std::string shard = dir.path() + "/" + shard_file_name(0, 1);
  uint64_t offset = 0;
  {
    StoreReader r(dir.path());
    const std::string b = read_file(shard);
    const auto v =
        store::ShardView::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), shard);
    offset = v.entry(1).offset;
  }
  std::string b = read_file(shard);
  b[offset + store::kBlockHeaderSize + store::kRecordHeaderSize + 2] ^= 0x10;
  write_file(shard, b);
  StoreReader r(dir.path());
  ImageLabels l;
  r.read(0, l);
  const std::string msg = test::error_message<FormatError>([&] { r.read(1, l); });
  EXPECT_NE(
      msg.find(fmt::format("{}: offset {}: block of image 1: checksum mismatch", shard, offset)),
      std::string::npos)
      << msg;
  const StoreVerification v = verify_store(dir.path());
  ASSERT_EQ(v.records.size(), 1u);
  EXPECT_EQ(v.records[0].image, 1u);
}

TEST(StoreBoxes, ReplaceRecordsAndEnsembleKeepTheBoxes) {
  TempDir a, b, out;
  Manifest m = explicit_manifest(12, 5, 2);
  write_store(a.path(), m);
  Manifest m2 = m;
  m2.teacher_hash = "ffffffffffffffffffffffffffffffff";
  write_store(b.path(), m2);
  ensemble_stores({a.path(), b.path()}, out.path() + "/ens");
  StoreReader ra(a.path()), re(out.path() + "/ens");
  EXPECT_EQ(re.manifest().crop_origin, CropOrigin::kExplicit);
  ImageLabels x, y;
  for (uint64_t i = 0; i < 5; ++i) {
    ra.read(i, x);
    re.read(i, y);
    expect_same_boxes(y.boxes, x.boxes, "ensemble image " + std::to_string(i));
    EXPECT_EQ(y.indices, x.indices);  // the same labels twice average to themselves
  }
  // Members on other boxes are refused, naming the image.
  TempDir c;
  write_store(c.path(), m2, [](const Manifest& mm, uint64_t i) {
    ImageLabels l = store_labels(mm, i);
    if (i == 3) std::swap(l.boxes[0].box, l.boxes[1].box);
    return l;
  });
  const std::string msg = test::error_message<ConfigError>([&] {
    ensemble_stores({a.path(), c.path()}, out.path() + "/bad");
  });
  EXPECT_NE(msg.find("image 3 was labeled on other crops"), std::string::npos) << msg;
  // A derived member and an explicit one are not the same crops.
  Manifest d = m2;
  d.crop_origin = CropOrigin::kDerived;
  TempDir e;
  write_store(e.path(), d, [](const Manifest& mm, uint64_t i) {
    ImageLabels l = store_labels(mm, i);
    l.boxes.clear();
    l.crop_hash = label_crop_hash(mm, i, l.height, l.width);
    return l;
  });
  EXPECT_NE(test::error_message<ConfigError>([&] {
              ensemble_stores({a.path(), e.path()}, out.path() + "/x");
            }).find("crops (explicit vs derived)"),
            std::string::npos);

  // replace_records: new labels on new boxes for image 3 (shard 1), others verbatim.
  ImageLabels fresh = explicit_labels(m, 99, image_height(3), image_width(3));
  replace_records(a.path(), 1, {{3, fresh}});
  StoreReader rr(a.path());
  rr.read(3, x);
  expect_same_boxes(x.boxes, fresh.boxes, "replaced");
  rr.read(4, x);
  expect_same_boxes(x.boxes, store_labels(m, 4).boxes, "kept");
}

TEST(StoreBoxes, InspectShowsTheOriginAndTheStoredBoxes) {
  TempDir dir;
  const Manifest m = explicit_manifest(6, 3);
  write_store(dir.path(), m);
  InspectOptions o;
  o.store = dir.path();
  testing::internal::CaptureStdout();
  run_inspect(o);
  const std::string summary = testing::internal::GetCapturedStdout();
  EXPECT_NE(summary.find("crop coordinates stored"), std::string::npos) << summary;
  EXPECT_NE(summary.find("crop origin      explicit: each record's pixel boxes and flips"),
            std::string::npos)
      << summary;
  o.image = 2;
  testing::internal::CaptureStdout();
  run_inspect(o);
  const std::string rows = testing::internal::GetCapturedStdout();
  for (const CropPlan& p : store_labels(m, 2).boxes) {
    const std::string box =
        fmt::format("({},{},{},{})", p.box.left, p.box.top, p.box.width, p.box.height);
    EXPECT_NE(rows.find(box), std::string::npos) << box << " not in\n" << rows;
  }
}

// --- replay in training ---------------------------------------------------------------------

TEST(StoreBoxes, StoreCropSourceReplaysTheStoredBoxes) {
  TempDir dir;
  const Manifest m = explicit_manifest(10, 6);
  write_store(dir.path(), m);
  auto reader = std::make_shared<const StoreReader>(dir.path());
  const int C = int(m.classes.size());
  for (int per_pass : {1, 3, 10}) {
    StoreCropSource source(reader, per_pass, 77);
    for (uint64_t image : {0u, 4u, 5u}) {
      const ImageLabels want = store_labels(m, image);
      for (int64_t pass : {0, 1, 7}) {
        std::vector<CropPlan> plans(static_cast<size_t>(per_pass));
        std::vector<float> soft(static_cast<size_t>(per_pass * C));
        source.crops(image, pass, int(want.height), int(want.width), plans.data(), soft.data());
        std::vector<uint32_t> ids(static_cast<size_t>(per_pass));
        replay_crop_ids(77, image, pass, m.crops_per_image, per_pass, ids.data());
        std::vector<float> dense(static_cast<size_t>(C));
        ImageLabels stored;
        reader->read(image, stored);
        for (int k = 0; k < per_pass; ++k) {
          const CropPlan& got = plans[size_t(k)];
          const CropPlan& box = want.boxes[ids[size_t(k)]];
          const std::string what =
              fmt::format("image {} pass {} k {} of {}", image, pass, k, per_pass);
          EXPECT_EQ(got.box.left, box.box.left) << what;
          EXPECT_EQ(got.box.top, box.box.top) << what;
          EXPECT_EQ(got.box.width, box.box.width) << what;
          EXPECT_EQ(got.box.height, box.box.height) << what;
          EXPECT_EQ(got.flip, box.flip) << what;
          EXPECT_EQ(got.id, ids[size_t(k)]) << what;
          recover_dense(m.label_type, m.k, C, stored.indices.data() + size_t(ids[size_t(k)]) * 5,
                        stored.values.data() + size_t(ids[size_t(k)]) * 5, dense.data());
          EXPECT_EQ(0,
                    std::memcmp(dense.data(), soft.data() + size_t(k) * size_t(C), size_t(C) * 4))
              << what;
        }
      }
    }
  }
  // The boxes are pixel boxes of the labeled size: another size is refused.
  StoreCropSource source(reader, 2, 1);
  std::vector<CropPlan> plans(2);
  const std::string msg = test::error_message<DataError>([&] {
    source.crops(2, 0, int(image_height(2)), int(image_width(2)) + 1, plans.data(), nullptr);
  });
  EXPECT_NE(
      msg.find(fmt::format("image 2 is {}x{} but the label store labeled it at {}x{}",
                           image_height(2), image_width(2) + 1, image_height(2), image_width(2))),
      std::string::npos)
      << msg;
}

}  // namespace
}  // namespace fkd
