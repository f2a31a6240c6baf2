// Reference label files <-> explicit-crop label stores (docs/reference-labels.md).
#include "fkd/reference_labels.h"

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/image.h"
#include "fkd/progress.h"
#include "fkd/reference_file.h"
#include "fkd/store.h"
#include "store/bytes.h"
#include "store/record.h"

namespace fs = std::filesystem;

namespace fkd {
namespace {

/// The label file the reference writes for a train image: its path below train/, the file
/// name cut at its first dot (generate_soft_label.py: name.split('.')[0] + '.tar').
std::string label_rel_path(const std::string& item_name) {
  std::string rel = item_name.rfind("train/", 0) == 0 ? item_name.substr(6) : item_name;
  const size_t slash = rel.rfind('/');
  const size_t dot = rel.find('.', slash == std::string::npos ? 0 : slash + 1);
  if (dot != std::string::npos) rel.resize(dot);
  return rel + ".tar";
}

std::shared_ptr<Dataset> open_image_folder(const std::string& data, size_t limit,
                                           const std::string& why) {
  DatasetOptions o;
  o.limit = limit;
  auto ds = open_dataset(data, Split::kTrain, o);
  FKD_CHECK(ds->size() > 0 && ds->item_name(0).rfind("train/", 0) == 0, ConfigError,
            "--data {}: {} needs an ImageFolder (root/train/<class>/<image>), whose file names "
            "name the label files",
            data, why);
  return ds;
}

int thread_count(int requested) {
  return requested > 0 ? requested : int(std::max(1u, std::thread::hardware_concurrency()));
}

/// Runs f(i) for i in [begin, end) on `threads` threads (the caller's included).
template <typename F>
void parallel_for(uint64_t begin, uint64_t end, int threads, F&& f) {
  std::atomic<uint64_t> next{begin};
  auto work = [&] {
    for (uint64_t i; (i = next.fetch_add(1)) < end;) f(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads && uint64_t(t) < end - begin; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

bool is_float(RefDType t) {
  return t == RefDType::kFloat16 || t == RefDType::kFloat32 || t == RefDType::kFloat64;
}

/// What the shapes of a file's labels say its label type is ("" when none fits).
std::string label_kind(const RefArray& labels, int classes) {
  const auto& s = labels.shape;
  if (s.size() == 1) return "hard";
  if (s.size() == 2 && s[1] == 2 && classes != 2) return "smoothing";
  if (s.size() == 2 && s[1] == classes) return "full";
  if (s.size() == 3 && s[1] == 2 && s[2] >= 1 && s[2] <= classes) return "marginal";
  return "";
}

/// How far above 1 the sum of a crop's top-k probabilities may be: float16 rounding of the
/// values (relative 2^-11 of the sum, within 0.001) and, for the export of a u8 store, each
/// value's rounding to the nearest 1/255 (at most 1/510 each).
double marginal_sum_tolerance(int k) { return 1e-3 + double(k) / 510.0; }

/// What every file of one import shares, from the first file (or the options).
struct Layout {
  LabelType type = LabelType::kMarginalSmoothing;
  int k = 1;
  int classes = 0;
  uint32_t crops = 0;
  RefArray first_coords, first_labels;  ///< the first file's arrays (dtypes, shapes)
  std::string first;                    ///< the first file's path
};

/// The record of one file for an image of height x width pixels: its crops as pixel boxes
/// (PIL's rounding of the normalized coords), flips and labels, checked against the layout.
void to_record(const ReferenceFile& f, const std::string& file, const Layout& lay, uint32_t height,
               uint32_t width, ImageLabels& rec) {
  const RefArray &co = f.coords, &fl = f.flips, &lb = f.labels;
  FKD_CHECK(co.shape.size() == 2 && co.shape[1] == 4 && is_float(co.dtype), DataError,
            "{}: coords are a {}, expected float [N, 4]", file, co.describe());
  const uint32_t n = uint32_t(co.shape[0]);
  FKD_CHECK(n == lay.crops, DataError,
            "{}: holds {} crops, {} holds {}: one store holds as many "
            "crops of every image",
            file, n, lay.first, lay.crops);
  FKD_CHECK(fl.shape.size() == 1 && fl.shape[0] == co.shape[0] &&
                (fl.dtype == RefDType::kBool || fl.dtype == RefDType::kUint8),
            DataError, "{}: flips are a {}, expected bool [{}]", file, fl.describe(), n);
  FKD_CHECK(co.dtype == lay.first_coords.dtype && lb.dtype == lay.first_labels.dtype &&
                lb.shape == lay.first_labels.shape,
            DataError,
            "{}: coords {} and labels {}, but {} holds coords {} and labels {}: every "
            "file must be of one label type, shape and precision",
            file, co.describe(), lb.describe(), lay.first, lay.first_coords.describe(),
            lay.first_labels.describe());
  rec.height = height;
  rec.width = width;
  rec.num_crops = n;
  rec.boxes.resize(n);
  for (uint32_t c = 0; c < n; ++c) {
    // float32 holds float16 and float32 coords exactly (float64 ones are rounded to it).
    const CropBox b{float(co.at(4 * c)), float(co.at(4 * c + 1)), float(co.at(4 * c + 2)),
                    float(co.at(4 * c + 3))};
    CropPlan& p = rec.boxes[c];
    try {
      p.box = to_pixel_box(b, int(height), int(width));
    } catch (const DataError& e) {
      fail<DataError>("{}: crop {}: {}", file, c, e.what());
    }
    // PIL's crop of a box whose rounded corners meet is empty, and the reference's training
    // cannot resize it; a store keeps boxes of at least one pixel, which would replay other
    // pixels than the file says.
    const double top = double(b.i) * height, left = double(b.j) * width;
    const double rows = std::nearbyint(top + double(b.h) * height) - std::nearbyint(top);
    const double cols = std::nearbyint(left + double(b.w) * width) - std::nearbyint(left);
    FKD_CHECK(rows >= 1 && cols >= 1, DataError,
              "{}: crop {} (i={}, j={}, h={}, w={}) of the {}x{} image is an empty box ({} rows, "
              "{} columns once rounded as PIL crops): it cannot be stored or replayed",
              file, c, b.i, b.j, b.h, b.w, width, height, rows, cols);
    FKD_CHECK(p.box.left >= 0 && p.box.top >= 0 && p.box.left + p.box.width <= int(width) &&
                  p.box.top + p.box.height <= int(height),
              DataError,
              "{}: crop {} (i={}, j={}, h={}, w={}) is the box left {} top {} width {} height {}, "
              "outside the {}x{} image",
              file, c, b.i, b.j, b.h, b.w, p.box.left, p.box.top, p.box.width, p.box.height, width,
              height);
    p.flip = fl.at(c) != 0;
    p.id = c;
  }
  const int ni = stored_indices(lay.type, lay.k), nv = stored_values(lay.type, lay.k, lay.classes);
  const bool marginal =
      lay.type == LabelType::kMarginalSmoothing || lay.type == LabelType::kMarginalRenorm;
  rec.indices.resize(size_t(n) * size_t(ni));
  rec.values.resize(size_t(n) * size_t(nv));
  // Element (crop c, row r, column j) of the labels: [N], [N, 2], [N, 2, k] or [N, C].
  const size_t per_crop = lb.numel() / std::max<size_t>(n, 1);
  const size_t row = lb.shape.size() == 3 ? size_t(lb.shape[2]) : 1;
  for (uint32_t c = 0; c < n; ++c) {
    for (int j = 0; j < ni; ++j) {
      const double v = lb.at(c * per_crop + size_t(j));
      FKD_CHECK(std::isfinite(v) && v == std::floor(v) && v >= 0 && v < lay.classes, DataError,
                "{}: crop {}: class index {} is not an integer in [0, {})", file, c, v,
                lay.classes);
      rec.indices[size_t(c) * ni + j] = int32_t(v);
    }
    const size_t first_value = lay.type == LabelType::kFull ? 0 : row;
    double sum = 0;
    for (int j = 0; j < nv; ++j) {
      const double v = lb.at(c * per_crop + first_value + size_t(j));
      FKD_CHECK(v >= 0 && v <= 1, DataError, "{}: crop {}: value {} is not a probability in [0, 1]",
                file, c, v);
      FKD_CHECK(!marginal || j == 0 || v <= rec.values[size_t(c) * nv + j - 1], DataError,
                "{}: crop {}: top-{} probabilities not in descending order ({} after {}): the "
                "reference stores a crop's top k most probable first",
                file, c, nv, v, rec.values[size_t(c) * nv + j - 1]);
      sum += v;
      rec.values[size_t(c) * nv + j] = float(v);
    }
    FKD_CHECK(!marginal || sum <= 1 + marginal_sum_tolerance(nv), DataError,
              "{}: crop {}: top-{} probabilities sum to {:.6g}, above 1 (by more than the {:.3g} "
              "their rounding explains)",
              file, c, nv, sum, marginal_sum_tolerance(nv));
    if (ni > 1) {
      std::vector<int32_t> ids(rec.indices.begin() + ptrdiff_t(c) * ni,
                               rec.indices.begin() + ptrdiff_t(c + 1) * ni);
      std::sort(ids.begin(), ids.end());
      FKD_CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end(), DataError,
                "{}: crop {}: a class index appears twice among its top {}", file, c, ni);
    }
  }
  rec.crop_hash = 0;  // the writer computes it from the boxes
}

/// The label type and its parameters, from the first file and the options.
Layout layout_of(const ReferenceFile& f, const std::string& file, const ReferenceImportConfig& cfg,
                 int classes) {
  Layout lay;
  lay.classes = classes;
  lay.first = file;
  lay.first_coords = f.coords;
  lay.first_labels = f.labels;
  FKD_CHECK(f.coords.shape.size() == 2 && f.coords.shape[1] == 4 && f.coords.shape[0] >= 1 &&
                uint64_t(f.coords.shape[0]) <= kMaxCropsPerImage,
            DataError, "{}: coords are a {}, expected float [N, 4] with 1 <= N <= {}", file,
            f.coords.describe(), kMaxCropsPerImage);
  lay.crops = uint32_t(f.coords.shape[0]);
  const RefArray& lb = f.labels;
  FKD_CHECK(!lb.shape.empty() && lb.shape[0] == f.coords.shape[0], DataError,
            "{}: labels are a {} for {} crops", file, lb.describe(), lay.crops);
  const std::string kind = label_kind(lb, classes);
  if (!cfg.label_type.empty()) {
    lay.type = parse_label_type(cfg.label_type);
    const bool marginal =
        lay.type == LabelType::kMarginalSmoothing || lay.type == LabelType::kMarginalRenorm;
    const std::string want = marginal ? "marginal" : label_type_name(lay.type);
    const bool fits = kind == want || (classes == 2 && lb.shape.size() == 2 &&
                                       (want == "smoothing" || want == "full"));
    FKD_CHECK(
        fits, DataError, "{}: labels are a {}, {}, not --label-type {}", file, lb.describe(),
        kind.empty() ? "of none of the reference's label types" : "which is " + kind + " labels",
        cfg.label_type);
  } else {
    FKD_CHECK(!(classes == 2 && lb.shape.size() == 2), ConfigError,
              "{}: labels [N, 2] of a 2-class dataset may be smoothing or full labels: pass "
              "--label-type",
              file);
    FKD_CHECK(!kind.empty(), DataError,
              "{}: labels are a {}, none of the reference's label types ([N] hard, [N, 2] "
              "smoothing, [N, 2, k] marginal top-k, [N, {}] full)",
              file, lb.describe(), classes);
    lay.type = kind == "marginal" ? LabelType::kMarginalSmoothing : parse_label_type(kind);
  }
  lay.k = lay.type == LabelType::kMarginalSmoothing || lay.type == LabelType::kMarginalRenorm
              ? int(lb.shape[2])
              : 1;
  FKD_CHECK(lay.type == LabelType::kHard ? lb.dtype != RefDType::kBool : is_float(lb.dtype),
            DataError, "{}: labels are a {}, expected {}", file, lb.describe(),
            lay.type == LabelType::kHard ? "integers" : "floats");
  return lay;
}

std::string hex128(const XXH128_hash_t& h) {
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

/// One file read, hashed and converted.
struct Loaded {
  uint64_t hash = 0, bytes = 0;
  ImageLabels rec;
};

Loaded load_file(const std::string& path, const Layout& lay, uint32_t height, uint32_t width) {
  Loaded l;
  const std::vector<uint8_t> bytes = read_whole_file(path);
  l.hash = XXH3_64bits(bytes.data(), bytes.size());
  l.bytes = bytes.size();
  const ReferenceFile f = parse_reference_file(bytes.data(), bytes.size(), path);
  to_record(f, path, lay, height, width, l.rec);
  return l;
}

/// The image's height and width, from as little decoding as its format allows.
std::pair<uint32_t, uint32_t> image_size(const Dataset& ds, uint64_t i) {
  int h = 0, w = 0;
  ds.load_rows(size_t(i), [&](int height, int width) {
    h = height;
    w = width;
    return RowRange{0, 1};
  });
  return {uint32_t(h), uint32_t(w)};
}

/// How many label files shared by several images a result names.
constexpr size_t kNamed = 3;

/// Every file below `root` that labels no image (`image_of` holds those that do): counted in
/// `r.ignored_count` and named in `r.ignored` in name order, relative to `root`, a top
/// folder that is no class of the dataset once with its count of files.
void list_ignored(const std::string& root,
                  const std::unordered_map<std::string, uint64_t>& image_of,
                  const std::vector<std::string>& classes, ReferenceImportResult& r) {
  std::vector<std::string> files;
  std::map<std::string, uint64_t> stray_folders;  // top folder that is no class -> files
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(
           root, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_directory(type_ec)) continue;
    const std::string rel = it->path().lexically_relative(root).generic_string();
    if (image_of.count(rel)) continue;
    const size_t slash = rel.find('/');
    const std::string top = slash == std::string::npos ? "" : rel.substr(0, slash);
    if (!top.empty() && std::find(classes.begin(), classes.end(), top) == classes.end()) {
      if (stray_folders[top]++ > 0) continue;  // named once, as the folder
      files.push_back(top + "/");
    } else {
      files.push_back(rel);
    }
  }
  std::sort(files.begin(), files.end());
  for (const auto& [folder, count] : stray_folders) r.ignored_count += count;
  r.ignored_count += files.size() - stray_folders.size();
  for (const std::string& f : files) {
    const auto folder =
        f.back() == '/' ? stray_folders.find(f.substr(0, f.size() - 1)) : stray_folders.end();
    r.ignored.push_back(folder == stray_folders.end()
                            ? f
                            : fmt::format("{} ({} file{}; no class of the dataset)", f,
                                          folder->second, folder->second == 1 ? "" : "s"));
  }
}

}  // namespace

ReferenceImportResult import_reference_labels(const ReferenceImportConfig& cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  FKD_CHECK(fs::is_directory(cfg.src), ConfigError, "{}: no such folder of reference label files",
            cfg.src);
  FKD_CHECK(cfg.shards >= 1 && cfg.shards <= 99999, ConfigError, "--shards {}: expected 1 to 99999",
            cfg.shards);
  FKD_CHECK(cfg.input_size >= 1, ConfigError, "--input-size {}: expected >= 1", cfg.input_size);
  const Precision forced =
      cfg.precision.empty() ? Precision::kFp16 : parse_precision(cfg.precision);
  const auto ds = open_image_folder(cfg.data, 0, "importing reference labels");
  const uint64_t n = ds->size();
  const int classes = int(ds->classes().size());
  // The reference's training code reads SOFTLABELS/train/<class>/...: take that folder too.
  std::string root = cfg.src;
  if (fs::is_directory(fs::path(cfg.src) / "train") &&
      !fs::is_directory(fs::path(cfg.src) / ds->classes()[0]))
    root = (fs::path(cfg.src) / "train").string();
  std::vector<std::string> paths(n);
  std::vector<std::string> missing;
  uint64_t missing_count = 0;
  ReferenceImportResult result;
  std::unordered_map<std::string, uint64_t> image_of;  // label file (below root) -> image
  for (uint64_t i = 0; i < n; ++i) {
    const std::string rel = label_rel_path(ds->item_name(i));
    paths[i] = root + "/" + rel;
    const auto [at, fresh] = image_of.emplace(rel, i);
    if (!fresh) {  // the reference writes one file for both, the later image's labels
      if (result.shared_files.size() < kNamed) {
        result.shared_files.push_back(
            fmt::format("{} for {} and {}", rel, ds->item_name(at->second), ds->item_name(i)));
      }
      ++result.shared_count;
    }
    std::error_code ec;
    const fs::file_status st = fs::status(paths[i], ec);  // through links
    if (!fs::exists(st)) {
      if (missing.size() < 3) missing.push_back(paths[i]);
      ++missing_count;
    } else if (!fs::is_regular_file(st)) {
      ReadableFile(paths[i], "reference label file");  // "PATH: is a FIFO, not a ..."
    }
  }
  FKD_CHECK(missing_count == 0, DataError, "{}: no label file for {} of the {} images of {}: {}{}",
            cfg.src, missing_count, n, cfg.data, fmt::join(missing, ", "),
            missing_count > missing.size() ? ", ..." : "");
  list_ignored(root, image_of, ds->classes(), result);

  // Pass 1: every file read, hashed and checked, every image's size read, before anything
  // is written; the first file sets the label type and shapes all others must have.
  const Layout lay = layout_of(read_reference_file(paths[0]), paths[0], cfg, classes);
  std::vector<uint64_t> hashes(n);
  std::vector<std::pair<uint32_t, uint32_t>> sizes(n);
  std::atomic<uint64_t> src_bytes{0};
  std::mutex mu;
  uint64_t first_bad = n;
  std::exception_ptr bad;  // the error of the first bad image, rethrown as it was
  {
    Progress bar("check", n, "file");
    std::atomic<uint64_t> done{0};
    parallel_for(0, n, thread_count(cfg.threads), [&](uint64_t i) {
      try {
        sizes[i] = image_size(*ds, i);
        const Loaded l = load_file(paths[i], lay, sizes[i].first, sizes[i].second);
        hashes[i] = l.hash;
        src_bytes += l.bytes;
      } catch (const Error& e) {
        std::lock_guard<std::mutex> lock(mu);
        if (i < first_bad) first_bad = i, bad = std::current_exception();
      }
      const uint64_t d = ++done;
      if (d % 256 == 0) {
        std::lock_guard<std::mutex> lock(mu);
        bar.advance(256);
      }
    });
    bar.finish();
  }
  if (first_bad < n) std::rethrow_exception(bad);

  Manifest m;
  m.num_images = n;
  m.dataset_fingerprint = dataset_fingerprint(*ds);
  m.classes = ds->classes();
  m.dataset = cfg.data;
  m.teacher = "reference labels " + cfg.src;
  {
    // The files' identity: XXH3-128 of each file's (XXH3-64, size) in image order.
    std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(),
                                                                &XXH3_freeState);
    XXH3_128bits_reset(st.get());
    for (uint64_t i = 0; i < n; ++i) {
      uint8_t b[8];
      store::store_u64(b, hashes[i]);
      XXH3_128bits_update(st.get(), b, 8);
    }
    m.teacher_hash = hex128(XXH3_128bits_digest(st.get()));
  }
  m.temperature = 1.0f;
  m.label_type = lay.type;
  m.k = lay.k;
  m.precision = !cfg.precision.empty()                         ? forced
                : lay.first_labels.dtype == RefDType::kFloat16 ? Precision::kFp16
                                                               : Precision::kFp32;
  m.crops_per_image = lay.crops;
  m.crop = {
      CropKind::kRandomResized, cfg.input_size, {0.08f, 1.0f}, {3.f / 4.f, 4.f / 3.f}, 0, 0.5f};
  m.crop_origin = CropOrigin::kExplicit;
  m.seed = 0;
  m.mean = {0.485f, 0.456f, 0.406f};
  m.std = {0.229f, 0.224f, 0.225f};
  m.num_shards = cfg.shards;

  result.crops = lay.crops;
  result.src_bytes = src_bytes;
  if (fs::exists(fs::path(cfg.out) / "manifest.json")) {
    const auto diffs = manifest_differences(read_manifest(cfg.out), m);
    FKD_CHECK(diffs.empty(), WorkMismatch,
              "{}: holds labels imported differently ({}); use the same options or a new --out",
              cfg.out, fmt::join(diffs, ", "));
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return result;  // complete: the manifest is written last
  }
  fs::create_directories(cfg.out);

  // Pass 2: the records, converted in parallel in chunks and appended in image order. A
  // killed run resumes at each shard's next image (ShardWriter keeps its verified prefix).
  constexpr uint64_t kChunk = 256;
  const int threads = thread_count(cfg.threads);
  std::vector<Loaded> chunk(kChunk);
  Progress bar("import", n, "img");
  for (uint32_t s = 0; s < cfg.shards; ++s) {
    ShardWriter writer(cfg.out, m, s);
    const uint64_t end = shard_range(n, s, cfg.shards).second;
    bar.advance(writer.next_image() - shard_range(n, s, cfg.shards).first);
    if (writer.finished()) continue;
    for (uint64_t begin = writer.next_image(); begin < end; begin += kChunk) {
      const uint64_t stop = std::min(end, begin + kChunk);
      first_bad = n;
      parallel_for(begin, stop, threads, [&](uint64_t i) {
        try {
          chunk[i - begin] = load_file(paths[i], lay, sizes[i].first, sizes[i].second);
          FKD_CHECK(chunk[i - begin].hash == hashes[i], DataError,
                    "{}: changed while it was being imported; run the import again", paths[i]);
        } catch (const Error& e) {
          std::lock_guard<std::mutex> lock(mu);
          if (i < first_bad) first_bad = i, bad = std::current_exception();
        }
      });
      if (first_bad < n) std::rethrow_exception(bad);
      for (uint64_t i = begin; i < stop; ++i) writer.append(i, chunk[i - begin].rec);
      result.images += stop - begin;
      bar.advance(stop - begin);
    }
    writer.finish();
  }
  bar.finish();
  write_manifest(cfg.out, m);  // last: a store without its manifest is not a store
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

ReferenceExportResult export_reference_labels(const ReferenceExportConfig& cfg) {
  StoreReader reader(cfg.store);
  const Manifest& m = reader.manifest();
  const std::string data = cfg.data.empty() ? m.dataset : cfg.data;
  const auto ds = open_image_folder(data, labeled_subset_limit(m), "exporting to reference files");
  FKD_CHECK(ds->size() == m.num_images && dataset_fingerprint(*ds) == m.dataset_fingerprint,
            ConfigError,
            "--data {}: not the dataset {} was made from (other files, names or sizes than "
            "its fingerprint records)",
            data, cfg.store);
  const uint32_t n = m.crops_per_image;
  const int classes = int(m.classes.size());
  const int ni = stored_indices(m.label_type, m.k), nv = stored_values(m.label_type, m.k, classes);
  const RefDType real = cfg.fp16 ? RefDType::kFloat16 : RefDType::kFloat32;
  ReferenceExportResult result;
  ImageLabels rec;
  Progress bar("export", m.num_images, "img");
  for (uint64_t i = 0; i < m.num_images; ++i) {
    const std::string rel = label_rel_path(ds->item_name(i));
    const std::string path = cfg.out + "/" + rel;
    reader.read(i, rec);
    ReferenceFile f;
    f.coords.dtype = real;
    f.coords.shape = {int64_t(n), 4};
    f.flips.dtype = RefDType::kBool;
    f.flips.shape = {int64_t(n)};
    std::vector<double> coords(size_t(n) * 4), labels;
    for (uint32_t c = 0; c < n; ++c) {
      const CropPlan p = store_crop(m, rec, i, c);
      FKD_CHECK(p.box.left >= 0 && p.box.top >= 0 && p.box.left + p.box.width <= int(rec.width) &&
                    p.box.top + p.box.height <= int(rec.height),
                ConfigError,
                "{}: crop {} of {} reaches outside the {}x{} image (RandomCrop with padding): the "
                "reference's files cannot express such crops",
                cfg.store, c, ds->item_name(i), rec.width, rec.height);
      const CropBox b = to_crop_box(p.box, int(rec.height), int(rec.width));
      const float v[4] = {b.i, b.j, b.h, b.w};
      CropBox stored;
      float* sv[4] = {&stored.i, &stored.j, &stored.h, &stored.w};
      for (int k = 0; k < 4; ++k) {
        *sv[k] = cfg.fp16 ? store::half_to_float(store::float_to_half(v[k])) : v[k];
        coords[4 * c + k] = *sv[k];
      }
      const PixelBox replay = to_pixel_box(stored, int(rec.height), int(rec.width));
      const bool same = replay.left == p.box.left && replay.top == p.box.top &&
                        replay.width == p.box.width && replay.height == p.box.height;
      FKD_CHECK(same || cfg.fp16, FormatError,
                "{}: crop {} of {}: float32 coords do not replay to its box (internal error)",
                cfg.store, c, ds->item_name(i));
      result.moved_boxes += !same;
      f.flips.bytes.push_back(p.flip ? 1 : 0);
    }
    auto put = [](RefArray& a, const std::vector<double>& v) {
      a.bytes.resize(v.size() * ref_dtype_size(a.dtype));
      for (size_t k = 0; k < v.size(); ++k) {
        uint8_t* p = a.bytes.data() + k * ref_dtype_size(a.dtype);
        if (a.dtype == RefDType::kFloat16) {
          const uint16_t h = store::float_to_half(float(v[k]));
          p[0] = uint8_t(h & 0xff);
          p[1] = uint8_t(h >> 8);
        } else if (a.dtype == RefDType::kFloat32) {
          const float x = float(v[k]);
          uint32_t u;
          std::memcpy(&u, &x, 4);
          store::store_u32(p, u);
        } else {  // int64
          store::store_u64(p, uint64_t(int64_t(v[k])));
        }
      }
    };
    put(f.coords, coords);
    // The labels as label_quantization returns them: hard [N] int64 (float16 with --fp16, as
    // the reference's np.float16 makes it), smoothing [N, 2], marginal [N, 2, k] with the
    // class ids as floats in row 0, full [N, C].
    f.labels.dtype = m.label_type == LabelType::kHard && !cfg.fp16 ? RefDType::kInt64 : real;
    switch (m.label_type) {
      case LabelType::kHard:
        f.labels.shape = {int64_t(n)};
        break;
      case LabelType::kSmoothing:
        f.labels.shape = {int64_t(n), 2};
        break;
      case LabelType::kFull:
        f.labels.shape = {int64_t(n), int64_t(classes)};
        break;
      default:
        f.labels.shape = {int64_t(n), 2, int64_t(m.k)};
    }
    for (uint32_t c = 0; c < n; ++c) {
      for (int j = 0; j < ni; ++j) labels.push_back(rec.indices[size_t(c) * ni + j]);
      for (int j = 0; j < nv; ++j) labels.push_back(rec.values[size_t(c) * nv + j]);
    }
    put(f.labels, labels);
    const std::string stem = fs::path(path).stem().string();
    const std::string bytes = serialize_reference_file(f, stem);
    if (fs::is_regular_file(path)) {
      // A file of an earlier run of this export (each one is renamed into place whole) is
      // the same bytes; a reference file that differs is another store's or another
      // option's export, which this one must not mix with. Anything else is rewritten.
      const std::vector<uint8_t> old = read_whole_file(path);
      if (old.size() == bytes.size() && std::memcmp(old.data(), bytes.data(), old.size()) == 0) {
        ++result.skipped;
        bar.advance(1);
        continue;
      }
      bool parses = true;
      try {
        parse_reference_file(old.data(), old.size(), path);
      } catch (const Error&) {
        parses = false;
      }
      FKD_CHECK(!parses, WorkMismatch,
                "{}: holds other labels for {} than {} gives (another store's or another "
                "option's export); export into a new folder",
                path, ds->item_name(i), cfg.store);
    }
    fs::create_directories(fs::path(path).parent_path());
    write_file_durably(path, bytes);
    ++result.written;
    bar.advance(1);
  }
  bar.finish();
  return result;
}

}  // namespace fkd
