// manifest.json (read, validate, write atomically, compare), the store key that ties shards
// to their manifest, shard ranges and names, and the crop hash.
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/rng.h"
#include "fkd/store.h"
#include "fkd/transforms.h"
#include "store/bytes.h"
#include "store/manifest.h"
#include "store/record.h"

namespace fkd {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kDerivedCrops = "derived";  ///< manifest key "crops"
constexpr const char* kExplicitCrops = "explicit";
constexpr const char* kFormatName = "fkd-label-store";

std::string type_name(const json& v) {
  if (v.is_number_unsigned() || v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

/// Reads typed keys of the manifest object, naming the file and key in every error.
class Fields {
 public:
  Fields(const json& j, std::string file) : j_(j), file_(std::move(file)) {}

  const json* find(const char* key, bool required) const {
    const auto it = j_.find(key);
    if (it == j_.end()) {
      FKD_CHECK(!required, FormatError, "{}: missing required key '{}'", file_, key);
      return nullptr;
    }
    return &*it;
  }
  [[noreturn]] void wrong(const char* key, const char* expected, const json& v) const {
    fail<FormatError>("{}: key '{}': expected {}, found {} {}", file_, key, expected, type_name(v),
                      v.dump().substr(0, 60));
  }
  uint64_t u64(const char* key, bool required, uint64_t def, uint64_t max) const {
    const json* v = find(key, required);
    if (!v) return def;
    if (v->is_number_unsigned()) {
      const uint64_t x = v->get<uint64_t>();
      FKD_CHECK(x <= max, FormatError, "{}: key '{}': expected at most {}, found {}", file_, key,
                max, x);
      return x;
    }
    wrong(key, "a non-negative integer", *v);
  }
  int64_t i64(const char* key, bool required, int64_t def) const {
    const json* v = find(key, required);
    if (!v) return def;
    if (v->is_number_integer() || v->is_number_unsigned()) {
      const bool fits = v->is_number_unsigned()
                            ? v->get<uint64_t>() <= uint64_t(std::numeric_limits<int32_t>::max())
                            : v->get<int64_t>() >= std::numeric_limits<int32_t>::min() &&
                                  v->get<int64_t>() <= std::numeric_limits<int32_t>::max();
      FKD_CHECK(fits, FormatError, "{}: key '{}': {} is out of the 32-bit integer range", file_,
                key, v->dump());
      return v->get<int64_t>();
    }
    wrong(key, "an integer", *v);
  }
  float f32(const json& v, const char* key) const {
    if (!v.is_number()) wrong(key, "a number", v);
    const double d = v.get<double>();
    FKD_CHECK(std::isfinite(d) && std::fabs(d) <= double(std::numeric_limits<float>::max()),
              FormatError, "{}: key '{}': {} is not a finite 32-bit float", file_, key, d);
    return float(d);
  }
  float f32(const char* key, bool required, float def) const {
    const json* v = find(key, required);
    return v ? f32(*v, key) : def;
  }
  std::vector<float> floats(const char* key, bool required) const {
    const json* v = find(key, required);
    std::vector<float> out;
    if (!v) return out;
    if (!v->is_array()) wrong(key, "an array of numbers", *v);
    for (const auto& e : *v) out.push_back(f32(e, key));
    return out;
  }
  std::string str(const char* key, bool required, const std::string& def) const {
    const json* v = find(key, required);
    if (!v) return def;
    if (!v->is_string()) wrong(key, "a string", *v);
    return v->get<std::string>();
  }
  std::vector<std::string> strings(const char* key, bool required) const {
    const json* v = find(key, required);
    std::vector<std::string> out;
    if (!v) return out;
    if (!v->is_array()) wrong(key, "an array of strings", *v);
    out.reserve(v->size());
    for (const auto& e : *v) {
      if (!e.is_string()) wrong(key, "an array of strings", e);
      out.push_back(e.get<std::string>());
    }
    return out;
  }

 private:
  const json& j_;
  std::string file_;
};

/// The shortest decimal that reads back as the same float (0.08f -> 0.08, not 0.0799999982).
json float_json(float f) { return json(std::stod(fmt::format("{}", f))); }

json floats_json(const float* v, size_t n) {
  json a = json::array();
  for (size_t i = 0; i < n; ++i) a.push_back(float_json(v[i]));
  return a;
}

std::string show(const std::vector<float>& v) { return fmt::format("[{}]", fmt::join(v, ", ")); }

}  // namespace

namespace store {

std::string k_problem(LabelType t, int64_t k, uint64_t C) {
  switch (t) {
    case LabelType::kHard:
    case LabelType::kSmoothing:
      if (k != 1)
        return fmt::format("must be 1 for label type {}, found {}", label_type_name(t), k);
      break;
    case LabelType::kMarginalSmoothing:
    case LabelType::kMarginalRenorm:
      if (k < 1 || uint64_t(k) > C)
        return fmt::format("{} is not in [1, {}] (the class count)", k, C);
      break;
    case LabelType::kFull:
      if (k < 0 || uint64_t(k) > C)
        return fmt::format("{} is not in [0, {}] (ignored for full)", k, C);
      break;
  }
  return "";
}

std::string manifest_problem(const Manifest& m) {
  if (m.version < 1 || m.version > kStoreFormatVersion)
    return fmt::format("version: {} is not in [1, {}]", m.version, kStoreFormatVersion);
  if (m.classes.empty()) return "classes: the list is empty";
  if (m.classes.size() > kMaxClasses)
    return fmt::format("classes: {} names is more than {}", m.classes.size(), kMaxClasses);
  const uint64_t C = m.classes.size();
  if (!(std::isfinite(m.temperature) && m.temperature > 0))
    return fmt::format("temperature: {} is not > 0", m.temperature);
  if (m.teacher_amp == AmpMode::kAuto) return "teacher_amp: auto is not a precision";
  if (int(m.label_type) > int(LabelType::kFull))
    return fmt::format("label_type: unknown value {}", int(m.label_type));
  if (int(m.precision) > int(Precision::kU8))
    return fmt::format("precision: unknown value {}", int(m.precision));
  const std::string kp = k_problem(m.label_type, m.k, C);
  if (!kp.empty()) return "k: " + kp;
  if (m.crops_per_image < 1 || m.crops_per_image > kMaxCropsPerImage)
    return fmt::format("crops_per_image: {} is not in [1, {}]", m.crops_per_image,
                       kMaxCropsPerImage);
  const CropSampler& s = m.crop;
  if (!(std::isfinite(s.scale[0]) && std::isfinite(s.scale[1]) && s.scale[0] > 0 &&
        s.scale[0] <= s.scale[1]))
    return fmt::format("scale: [{}, {}] does not satisfy 0 < min <= max", s.scale[0], s.scale[1]);
  if (!(std::isfinite(s.ratio[0]) && std::isfinite(s.ratio[1]) && s.ratio[0] > 0 &&
        s.ratio[0] <= s.ratio[1]))
    return fmt::format("ratio: [{}, {}] does not satisfy 0 < min <= max", s.ratio[0], s.ratio[1]);
  if (!(s.flip >= 0 && s.flip <= 1)) return fmt::format("flip_prob: {} is not in [0, 1]", s.flip);
  if (s.size < 0) return fmt::format("input_size: {} is negative", s.size);
  if (s.kind != CropKind::kRandomResized && s.kind != CropKind::kPadded)
    return fmt::format("crop_sampler: '{}' is not {} or {}", crop_kind_name(s.kind),
                       store::kRandomResizedCrop, store::kRandomCrop);
  if (s.kind == CropKind::kPadded && !(s.size >= 1 && s.padding >= 0 && s.padding <= 4096))
    return fmt::format("random_crop needs input_size >= 1 and padding in [0, 4096] (got {}, {})",
                       s.size, s.padding);
  if (int(m.crop_origin) > int(CropOrigin::kExplicit))
    return fmt::format("crops: unknown value {}", int(m.crop_origin));
  if (m.crop_origin == CropOrigin::kExplicit && m.version < kExplicitCropsSince)
    return fmt::format("crops: explicit crops need format version {} or later, found {}",
                       kExplicitCropsSince, m.version);
  if (m.num_shards < 1 || m.num_shards > kMaxShards)
    return fmt::format("num_shards: {} is not in [1, {}]", m.num_shards, kMaxShards);
  const uint64_t raw = record_format(m).max_raw_size();
  if (raw > kMaxRecordBytes)
    return fmt::format(
        "crops_per_image: records of {} crops could need {} bytes, more than the limit {}",
        m.crops_per_image, raw, kMaxRecordBytes);
  return "";
}

namespace {
/// Little-endian canonical serialization for the store key.
struct KeyWriter {
  std::string b;
  void u8(uint8_t v) { b.push_back(char(v)); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(char(uint8_t(v >> (8 * i))));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(char(uint8_t(v >> (8 * i))));
  }
  void f32(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    u32(x);
  }
  void str(const std::string& s) {
    u64(s.size());
    b += s;
  }
  void floats(const std::vector<float>& v) {
    u64(v.size());
    for (float f : v) f32(f);
  }
};
}  // namespace

uint64_t store_key(const Manifest& m) {
  KeyWriter w;
  w.b = "fkd-label-store-key";
  w.u32(uint32_t(m.version));
  w.u64(m.num_images);
  w.str(m.dataset_fingerprint);
  w.u64(m.classes.size());
  for (const auto& c : m.classes) w.str(c);
  w.str(m.teacher_hash);
  w.f32(m.temperature);
  w.u8(uint8_t(m.label_type));
  w.u32(uint32_t(m.k));
  w.u8(uint8_t(m.precision));
  w.u32(m.crops_per_image);
  w.u64(m.seed);
  w.f32(m.crop.scale[0]);
  w.f32(m.crop.scale[1]);
  w.f32(m.crop.ratio[0]);
  w.f32(m.crop.ratio[1]);
  w.f32(m.crop.flip);
  w.u32(uint32_t(m.crop.size));
  w.str(m.interpolation);
  if (m.crop.kind != CropKind::kRandomResized) {  // absent for the original sampler
    w.str(store::kRandomCrop);
    w.u32(uint32_t(m.crop.padding));
  }
  w.floats(m.mean);
  w.floats(m.std);
  if (m.crop_origin != CropOrigin::kDerived) w.str(kExplicitCrops);    // absent for derived crops
  if (m.teacher_amp != AmpMode::kOff) w.str(amp_name(m.teacher_amp));  // absent for float32
  return XXH3_64bits(w.b.data(), w.b.size());
}

}  // namespace store

namespace {
/// Why a store directory has no manifest.json, for the error that says so.
std::string why_no_manifest(const std::string& store_dir) {
  if (!fs::exists(store_dir)) return "no such store directory";
  // fkd label merge and ensemble write the manifest last: shards without it are their
  // unfinished work.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(store_dir, ec)) {
    if (e.path().extension() == ".partial") {
      return "not written yet: an interrupted fkd label merge or ensemble writes it last; run "
             "the same command again to finish";
    }
  }
  return "no such file";
}
}  // namespace

Manifest read_manifest(const std::string& store_dir) {
  const std::string file = (fs::path(store_dir) / kManifestName).string();
  FKD_CHECK(fs::exists(store_dir), NotFoundError, "{}: cannot open the store's manifest ({})", file,
            why_no_manifest(store_dir));
  FKD_CHECK(fs::exists(file), FormatError, "{}: cannot open the store's manifest ({})", file,
            why_no_manifest(store_dir));
  const std::vector<uint8_t> bytes = read_whole_file(file);
  return parse_manifest(std::string(bytes.begin(), bytes.end()), file);
}

Manifest parse_manifest(const std::string& text, const std::string& file) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail<FormatError>("{}: not valid JSON: {}", file, e.what());
  }
  FKD_CHECK(j.is_object(), FormatError, "{}: expected a JSON object, found {}", file,
            j.type_name());
  const Fields f(j, file);
  const std::string format = f.str("format", true, "");
  FKD_CHECK(format == kFormatName, FormatError, "{}: key 'format': expected \"{}\", found \"{}\"",
            file, kFormatName, format);
  Manifest m;
  // The version comes first: a newer manifest may lack keys this version requires.
  const int64_t version = f.i64("version", true, 0);
  FKD_CHECK(version <= int64_t(kStoreFormatVersion), FormatError,
            "{}: store format version {} is newer than this fkd supports ({}): upgrade fkd", file,
            version, kStoreFormatVersion);
  FKD_CHECK(version >= 1, FormatError,
            "{}: key 'version': format version {}: no fkd version wrote it (versions are 1 to {})",
            file, version, kStoreFormatVersion);
  m.version = int(version);
  m.num_images = f.u64("num_images", true, 0, std::numeric_limits<uint64_t>::max());
  m.dataset_fingerprint = f.str("dataset_fingerprint", true, "");
  m.classes = f.strings("classes", true);
  m.dataset = f.str("dataset", false, "");
  m.dataset_limit = f.u64("dataset_limit", false, 0, std::numeric_limits<uint64_t>::max());
  m.teacher = f.str("teacher", false, "");
  m.teacher_hash = f.str("teacher_hash", true, "");
  m.temperature = f.f32("temperature", true, 1.0f);
  const std::string amp = f.str("teacher_amp", false, amp_name(AmpMode::kOff));
  FKD_CHECK(amp == amp_name(AmpMode::kOff) || amp == amp_name(AmpMode::kBf16) ||
                amp == amp_name(AmpMode::kFp16),
            FormatError,
            "{}: key 'teacher_amp': expected \"off\", \"bf16\" or \"fp16\", found \"{}\"", file,
            amp);
  m.teacher_amp = parse_amp(amp);
  try {
    m.label_type = parse_label_type(f.str("label_type", true, ""));
    m.precision = parse_precision(f.str("precision", true, ""));
  } catch (const ConfigError& e) {
    fail<FormatError>("{}: {}", file, e.what());
  }
  m.k = int(f.i64("k", true, 0));
  m.crops_per_image = uint32_t(f.u64("crops_per_image", true, 0, store::kMaxCropsPerImage));
  m.seed = f.u64("seed", true, 0, std::numeric_limits<uint64_t>::max());
  const auto scale = f.floats("scale", true), ratio = f.floats("ratio", true);
  FKD_CHECK(scale.size() == 2, FormatError, "{}: key 'scale': expected 2 numbers, found {}", file,
            scale.size());
  FKD_CHECK(ratio.size() == 2, FormatError, "{}: key 'ratio': expected 2 numbers, found {}", file,
            ratio.size());
  m.crop.scale[0] = scale[0];
  m.crop.scale[1] = scale[1];
  m.crop.ratio[0] = ratio[0];
  m.crop.ratio[1] = ratio[1];
  m.crop.flip = f.f32("flip_prob", true, 0.5f);
  const std::string sampler = f.str("crop_sampler", false, store::kRandomResizedCrop);
  FKD_CHECK(sampler == store::kRandomResizedCrop || sampler == store::kRandomCrop, FormatError,
            "{}: key 'crop_sampler': expected \"{}\" or \"{}\", found \"{}\"", file,
            store::kRandomResizedCrop, store::kRandomCrop, sampler);
  m.crop.kind = sampler == store::kRandomCrop ? CropKind::kPadded : CropKind::kRandomResized;
  m.crop.padding = int(f.i64("padding", false, 0));
  m.crop.size = int(f.i64("input_size", false, 0));
  m.interpolation = f.str("interpolation", false, "bilinear");
  m.mean = f.floats("mean", false);
  m.std = f.floats("std", false);
  m.num_shards = uint32_t(f.u64("num_shards", true, 1, store::kMaxShards));
  const std::string crops = f.str("crops", false, kDerivedCrops);
  FKD_CHECK(crops == kDerivedCrops || crops == kExplicitCrops, FormatError,
            "{}: key 'crops': expected \"{}\" or \"{}\", found \"{}\"", file, kDerivedCrops,
            kExplicitCrops, crops);
  m.crop_origin = crops == kExplicitCrops ? CropOrigin::kExplicit : CropOrigin::kDerived;
  const std::string problem = store::manifest_problem(m);
  FKD_CHECK(problem.empty(), FormatError, "{}: {}", file, problem);
  return m;
}

void write_manifest(const std::string& store_dir, const Manifest& m) {
  const std::string problem = store::manifest_problem(m);
  FKD_CHECK(problem.empty(), ConfigError, "manifest for {}: {}", store_dir, problem);
  json j;
  j["format"] = kFormatName;
  j["version"] = m.version;
  j["num_images"] = m.num_images;
  j["dataset_fingerprint"] = m.dataset_fingerprint;
  j["dataset"] = m.dataset;
  j["dataset_limit"] = m.dataset_limit;
  j["teacher"] = m.teacher;
  j["teacher_hash"] = m.teacher_hash;
  j["temperature"] = float_json(m.temperature);
  j["teacher_amp"] = amp_name(m.teacher_amp);
  j["label_type"] = label_type_name(m.label_type);
  j["k"] = m.k;
  j["precision"] = precision_name(m.precision);
  j["crops_per_image"] = m.crops_per_image;
  j["seed"] = m.seed;
  if (m.crop_origin != CropOrigin::kDerived) j["crops"] = crop_origin_name(m.crop_origin);
  j["scale"] = floats_json(m.crop.scale.data(), 2);
  j["ratio"] = floats_json(m.crop.ratio.data(), 2);
  j["flip_prob"] = float_json(m.crop.flip);
  if (m.crop.kind != CropKind::kRandomResized) {
    j["crop_sampler"] = store::kRandomCrop;
    j["padding"] = m.crop.padding;
  }
  j["input_size"] = m.crop.size;
  j["interpolation"] = m.interpolation;
  j["mean"] = floats_json(m.mean.data(), m.mean.size());
  j["std"] = floats_json(m.std.data(), m.std.size());
  j["num_shards"] = m.num_shards;
  j["classes"] = m.classes;
  const std::string text = j.dump(2) + "\n";

  write_file_durably((fs::path(store_dir) / kManifestName).string(), text);
}

std::vector<std::string> manifest_differences(const Manifest& a, const Manifest& b) {
  std::vector<std::string> d;
  auto cmp = [&](const char* name, const auto& x, const auto& y) {
    if (!(x == y)) d.push_back(fmt::format("{} ({} vs {})", name, x, y));
  };
  cmp("version", a.version, b.version);
  cmp("num_images", a.num_images, b.num_images);
  cmp("dataset_fingerprint", a.dataset_fingerprint, b.dataset_fingerprint);
  if (a.classes.size() != b.classes.size()) {
    d.push_back(fmt::format("classes ({} names vs {} names)", a.classes.size(), b.classes.size()));
  } else {
    for (size_t i = 0; i < a.classes.size(); ++i) {
      if (a.classes[i] != b.classes[i]) {
        d.push_back(fmt::format("classes[{}] ('{}' vs '{}')", i, a.classes[i], b.classes[i]));
        break;
      }
    }
  }
  cmp("teacher_hash", a.teacher_hash, b.teacher_hash);
  cmp("temperature", a.temperature, b.temperature);
  cmp("teacher_amp", std::string(amp_name(a.teacher_amp)), std::string(amp_name(b.teacher_amp)));
  cmp("label_type", std::string(label_type_name(a.label_type)),
      std::string(label_type_name(b.label_type)));
  cmp("k", a.k, b.k);
  cmp("precision", std::string(precision_name(a.precision)),
      std::string(precision_name(b.precision)));
  cmp("crops_per_image", a.crops_per_image, b.crops_per_image);
  cmp("crops", std::string(crop_origin_name(a.crop_origin)),
      std::string(crop_origin_name(b.crop_origin)));
  cmp("seed", a.seed, b.seed);
  for (std::string& c : crop_differences(a.crop, b.crop)) d.push_back(std::move(c));
  // The teacher's input size; crop_differences names it already where it shapes the boxes.
  if (a.crop.kind != CropKind::kPadded || b.crop.kind != CropKind::kPadded)
    cmp("input_size", a.crop.size, b.crop.size);
  cmp("interpolation", a.interpolation, b.interpolation);
  if (a.mean != b.mean) d.push_back(fmt::format("mean ({} vs {})", show(a.mean), show(b.mean)));
  if (a.std != b.std) d.push_back(fmt::format("std ({} vs {})", show(a.std), show(b.std)));
  return d;
}

bool store::finished_store_of(const std::string& dir, const Manifest& m) {
  if (!fs::exists(fs::path(dir) / kManifestName)) return false;
  const Manifest have = read_manifest(dir);
  if (have.num_shards != m.num_shards || !manifest_differences(have, m).empty()) return false;
  for (uint32_t i = 0; i < m.num_shards; ++i) {
    if (!fs::is_regular_file(fs::path(dir) / shard_file_name(i, m.num_shards))) return false;
  }
  return true;
}

std::pair<uint64_t, uint64_t> shard_range(uint64_t num_images, uint32_t index, uint32_t count) {
  FKD_CHECK(count >= 1 && index < count, ConfigError, "shard {} of {} does not exist", index,
            count);
  auto edge = [&](uint64_t i) { return uint64_t((unsigned __int128)num_images * i / count); };
  return {edge(index), edge(uint64_t(index) + 1)};
}

std::string describe_labels(const Manifest& m) {
  switch (m.label_type) {
    case LabelType::kHard:
      return "hard";
    case LabelType::kMarginalSmoothing:
    case LabelType::kMarginalRenorm:
      return fmt::format("{} top-{} in {}", label_type_name(m.label_type), m.k,
                         precision_name(m.precision));
    default:
      return fmt::format("{} in {}", label_type_name(m.label_type), precision_name(m.precision));
  }
}

std::string shard_file_name(uint32_t index, uint32_t count) {
  return fmt::format("shard-{:05d}-of-{:05d}.fkdl", index, count);
}

const char* crop_origin_name(CropOrigin o) {
  return o == CropOrigin::kExplicit ? kExplicitCrops : kDerivedCrops;
}

namespace store {
uint32_t crops_hash(const CropPlan* crops, size_t n) {
  thread_local std::vector<uint8_t> bytes;  // no allocation per record on the reader's path
  bytes.resize(n * 20);
  for (size_t c = 0; c < n; ++c) {
    const CropPlan& p = crops[c];
    uint8_t* o = bytes.data() + c * 20;
    store_u32(o, uint32_t(p.box.left));
    store_u32(o + 4, uint32_t(p.box.top));
    store_u32(o + 8, uint32_t(p.box.width));
    store_u32(o + 12, uint32_t(p.box.height));
    store_u32(o + 16, p.flip ? 1u : 0u);
  }
  return XXH32(bytes.data(), bytes.size(), 0);
}
}  // namespace store

uint32_t label_crop_hash(const Manifest& m, uint64_t image, uint32_t height, uint32_t width) {
  FKD_CHECK(m.crop_origin == CropOrigin::kDerived, ConfigError,
            "label_crop_hash: image {}: a store of explicit crops derives none (its records "
            "hold the hash of their boxes)",
            image);
  FKD_CHECK(height >= 1 && width >= 1 && height <= 0x7fffffffu && width <= 0x7fffffffu, DataError,
            "label_crop_hash: image {} has size {}x{}", image, height, width);
  std::vector<CropPlan> crops(m.crops_per_image);
  for (uint32_t c = 0; c < m.crops_per_image; ++c) {
    crops[c] = derive_label_crop(m.crop, m.seed, image, c, int(height), int(width));
  }
  return store::crops_hash(crops.data(), crops.size());
}

CropPlan store_crop(const Manifest& m, const ImageLabels& rec, uint64_t image, uint32_t crop) {
  if (m.crop_origin == CropOrigin::kDerived) {
    return derive_label_crop(m.crop, m.seed, image, crop, int(rec.height), int(rec.width));
  }
  FKD_CHECK(crop < rec.boxes.size(), ConfigError,
            "store_crop: image {}: crop {} of a record with {} explicit boxes", image, crop,
            rec.boxes.size());
  return rec.boxes[crop];
}

}  // namespace fkd
