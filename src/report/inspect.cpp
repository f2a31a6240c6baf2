#include "fkd/inspect.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string_view>

#include <fmt/core.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/image.h"
#include "fkd/store.h"
#include "fkd/transforms.h"

namespace fkd {

namespace {

/// The top `n` (class, probability) pairs of a dense label, most probable first.
std::vector<std::pair<int, float>> top_classes(const std::vector<float>& dense, int n) {
  std::vector<int> order(dense.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
  n = std::min<int>(n, int(order.size()));
  std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int a, int b) {
    return dense[size_t(a)] > dense[size_t(b)] || (dense[size_t(a)] == dense[size_t(b)] && a < b);
  });
  std::vector<std::pair<int, float>> out;
  for (int i = 0; i < n; ++i) out.push_back({order[size_t(i)], dense[size_t(order[size_t(i)])]});
  return out;
}

/// Dense label of crop c of a record.
void dense_of(const Manifest& m, const ImageLabels& l, uint32_t c, std::vector<float>& dense) {
  const int C = int(m.classes.size());
  const int ni = stored_indices(m.label_type, m.k), nv = stored_values(m.label_type, m.k, C);
  dense.resize(size_t(C));
  recover_dense(m.label_type, m.k, C, l.indices.data() + size_t(c) * size_t(ni),
                l.values.data() + size_t(c) * size_t(nv), dense.data());
}

CropPlan crop_of(const Manifest& m, uint64_t image, uint32_t c, const ImageLabels& l) {
  return store_crop(m, l, image, c);
}

// --- a small raster canvas with a 5x7 bitmap font, for --render -----------------------

struct Glyph {
  char c;
  uint8_t rows[7];
};
constexpr Glyph kFont[] = {
    {'A', {14, 17, 17, 31, 17, 17, 17}}, {'B', {30, 17, 17, 30, 17, 17, 30}},
    {'C', {14, 17, 16, 16, 16, 17, 14}}, {'D', {30, 17, 17, 17, 17, 17, 30}},
    {'E', {31, 16, 16, 30, 16, 16, 31}}, {'F', {31, 16, 16, 30, 16, 16, 16}},
    {'G', {14, 17, 16, 23, 17, 17, 15}}, {'H', {17, 17, 17, 31, 17, 17, 17}},
    {'I', {14, 4, 4, 4, 4, 4, 14}},      {'J', {7, 2, 2, 2, 2, 18, 12}},
    {'K', {17, 18, 20, 24, 20, 18, 17}}, {'L', {16, 16, 16, 16, 16, 16, 31}},
    {'M', {17, 27, 21, 21, 17, 17, 17}}, {'N', {17, 17, 25, 21, 19, 17, 17}},
    {'O', {14, 17, 17, 17, 17, 17, 14}}, {'P', {30, 17, 17, 30, 16, 16, 16}},
    {'Q', {14, 17, 17, 17, 21, 18, 13}}, {'R', {30, 17, 17, 30, 20, 18, 17}},
    {'S', {15, 16, 16, 14, 1, 1, 30}},   {'T', {31, 4, 4, 4, 4, 4, 4}},
    {'U', {17, 17, 17, 17, 17, 17, 14}}, {'V', {17, 17, 17, 17, 17, 10, 4}},
    {'W', {17, 17, 17, 21, 21, 21, 10}}, {'X', {17, 17, 10, 4, 10, 17, 17}},
    {'Y', {17, 17, 17, 10, 4, 4, 4}},    {'Z', {31, 1, 2, 4, 8, 16, 31}},
    {'0', {14, 17, 19, 21, 25, 17, 14}}, {'1', {4, 12, 4, 4, 4, 4, 14}},
    {'2', {14, 17, 1, 2, 4, 8, 31}},     {'3', {31, 2, 4, 2, 1, 17, 14}},
    {'4', {2, 6, 10, 18, 31, 2, 2}},     {'5', {31, 16, 30, 1, 1, 17, 14}},
    {'6', {6, 8, 16, 30, 17, 17, 14}},   {'7', {31, 1, 2, 4, 8, 8, 8}},
    {'8', {14, 17, 17, 14, 17, 17, 14}}, {'9', {14, 17, 17, 15, 1, 2, 12}},
    {'.', {0, 0, 0, 0, 0, 12, 12}},      {'%', {24, 25, 2, 4, 8, 19, 3}},
    {':', {0, 12, 12, 0, 12, 12, 0}},    {'-', {0, 0, 0, 31, 0, 0, 0}},
    {'/', {0, 1, 2, 4, 8, 16, 0}},       {'(', {2, 4, 8, 8, 8, 4, 2}},
    {')', {8, 4, 2, 2, 2, 4, 8}},        {',', {0, 0, 0, 0, 12, 4, 8}},
    {'=', {0, 0, 31, 0, 31, 0, 0}},      {'#', {10, 10, 31, 10, 31, 10, 10}},
};

struct Canvas {
  int w, h;
  std::vector<uint8_t> rgb;
  Canvas(int w_, int h_) : w(w_), h(h_), rgb(size_t(w_) * size_t(h_) * 3, 255) {}
  void put(int x, int y, const uint8_t* c) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    std::copy(c, c + 3, &rgb[(size_t(y) * size_t(w) + size_t(x)) * 3]);
  }
  void fill(int x0, int y0, int ww, int hh, const uint8_t* c) {
    for (int y = y0; y < y0 + hh; ++y)
      for (int x = x0; x < x0 + ww; ++x) put(x, y, c);
  }
  void rect(int x0, int y0, int ww, int hh, int t, const uint8_t* c) {
    fill(x0, y0, ww, t, c);
    fill(x0, y0 + hh - t, ww, t, c);
    fill(x0, y0, t, hh, c);
    fill(x0 + ww - t, y0, t, hh, c);
  }
  void text(int x, int y, const std::string& s, int scale, const uint8_t* c) {
    for (char ch : s) {
      const char u = char(std::toupper(static_cast<unsigned char>(ch)));
      for (const Glyph& g : kFont) {
        if (g.c != u) continue;
        for (int r = 0; r < 7; ++r)
          for (int b = 0; b < 5; ++b)
            if (g.rows[r] & (1 << (4 - b))) fill(x + b * scale, y + r * scale, scale, scale, c);
      }
      x += 6 * scale;
    }
  }
};

constexpr uint8_t kColors[8][3] = {{230, 25, 75},  {60, 180, 75},  {0, 130, 200},  {245, 130, 48},
                                   {145, 30, 180}, {70, 240, 240}, {240, 50, 230}, {128, 128, 0}};

}  // namespace

StoreSummary summarize_store(const StoreReader& store, const Dataset* ds, size_t limit) {
  const Manifest& m = store.manifest();
  StoreSummary s;
  s.images = store.num_images();
  s.crops = s.images * m.crops_per_image;
  s.bytes = store.shard_bytes();
  s.bytes_per_crop = s.crops ? double(s.bytes) / double(s.crops) : 0;
  const uint64_t n = limit ? std::min<uint64_t>(limit, s.images) : s.images;
  const int k = std::max(1, m.k);
  uint64_t agree = 0, counted = 0;
  double entropy = 0, mass = 0;
  ImageLabels l;
  std::vector<float> dense;
  for (uint64_t i = 0; i < n; ++i) {
    store.read(i, l);
    for (uint32_t c = 0; c < l.num_crops; ++c) {
      dense_of(m, l, c, dense);
      const auto top = top_classes(dense, k);
      if (ds) agree += top[0].first == ds->label(i);
      double h = 0, kept = 0;
      for (float p : dense)
        if (p > 0) h -= double(p) * std::log(double(p));
      for (const auto& t : top) kept += t.second;
      entropy += h;
      mass += kept;
      ++counted;
    }
  }
  if (counted) {
    s.mean_entropy = entropy / double(counted);
    s.mean_topk_mass = mass / double(counted);
    if (ds) s.agreement = 100.0 * double(agree) / double(counted);
  }
  return s;
}

void render_image_crops(const StoreReader& store, const Dataset& ds, uint64_t image,
                        const std::string& png_path) {
  const Manifest& m = store.manifest();
  FKD_CHECK(image < store.num_images(), ConfigError, "--render: image {} out of range [0, {})",
            image, store.num_images());
  ImageLabels l;
  store.read(image, l);
  Image src = ds.load(size_t(image));
  if (src.channels == 1) {
    Image rgb = src;
    rgb.channels = 3;
    rgb.pixels.resize(src.pixels.size() * 3);
    for (size_t p = 0; p < src.pixels.size(); ++p)
      std::fill_n(&rgb.pixels[p * 3], 3, src.pixels[p]);
    src = std::move(rgb);
  }
  // Show the image at about 448 px on its longer side.
  const double f = 448.0 / std::max(src.height, src.width);
  const int dh = std::max(1, int(std::lround(src.height * f)));
  const int dw = std::max(1, int(std::lround(src.width * f)));
  std::vector<uint8_t> shown(size_t(dh) * size_t(dw) * 3), scratch;
  resized_crop(src, {0, 0, src.width, src.height}, false, dh, dw, Interp::kBilinear, shown.data(),
               scratch);

  const int crops = int(std::min<uint32_t>(8, l.num_crops));
  const int pad = 16, legend_w = 700, line = 22;
  Canvas cv(pad * 3 + dw + legend_w, std::max(dh, 40 + crops * 2 * line) + 2 * pad);
  for (int y = 0; y < dh; ++y)
    for (int x = 0; x < dw; ++x) cv.put(pad + x, pad + y, &shown[(size_t(y) * dw + x) * 3]);
  const uint8_t black[3] = {0, 0, 0};
  std::string title = fmt::format("image {} ({}x{})", image, l.width, l.height);
  if (size_t(ds.label(size_t(image))) < m.classes.size()) {
    title += " label " + m.classes[size_t(ds.label(size_t(image)))];
  }
  if (uint32_t(crops) < l.num_crops) {
    title += fmt::format(", crops 0-{} of {}", crops - 1, l.num_crops);
  }
  const int lx = pad * 2 + dw;
  cv.text(lx, pad, title, 2, black);
  std::vector<float> dense;
  const double sx = double(dw) / l.width, sy = double(dh) / l.height;
  for (int c = 0; c < crops; ++c) {
    const CropPlan p = crop_of(m, image, uint32_t(c), l);
    cv.rect(pad + int(p.box.left * sx), pad + int(p.box.top * sy),
            std::max(3, int(p.box.width * sx)), std::max(3, int(p.box.height * sy)), 2, kColors[c]);
    dense_of(m, l, uint32_t(c), dense);
    const auto top = top_classes(dense, 2);
    const int y = pad + 30 + c * 2 * line;
    cv.fill(lx, y, 14, 14, kColors[c]);
    cv.text(lx + 22, y, fmt::format("crop {}{}", c, p.flip ? " flip" : ""), 2, black);
    std::string cls;
    for (const auto& t : top) {
      cls += fmt::format("{}{} {:.0f}%", cls.empty() ? "" : ", ", m.classes[size_t(t.first)],
                         100 * t.second);
    }
    cv.text(lx + 22, y + line, cls.substr(0, 54), 2, black);
  }

  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  img.width = png_uint_32(cv.w);
  img.height = png_uint_32(cv.h);
  img.format = PNG_FORMAT_RGB;
  // Encoded in memory first, so the file is replaced durably like every output.
  png_alloc_size_t png_size = 0;
  FKD_CHECK(png_image_write_to_memory(&img, nullptr, &png_size, 0, cv.rgb.data(), 0, nullptr) != 0,
            IoError, "{}: cannot encode PNG: {}", png_path, img.message);
  std::string png(png_size, '\0');
  FKD_CHECK(
      png_image_write_to_memory(&img, png.data(), &png_size, 0, cv.rgb.data(), 0, nullptr) != 0,
      IoError, "{}: cannot encode PNG: {}", png_path, img.message);
  write_file_durably(png_path, std::string_view(png.data(), png_size));
}

void run_inspect(const InspectOptions& o) {
  // An unfinished store (labeling stopped or still running): how far it has come.
  const StoreProgress progress = store_progress(o.store);
  if (!progress.complete()) {
    FKD_CHECK(o.image < 0 && o.render.empty(), FormatError,
              "{}: unfinished ({} of {} images labeled): resume labeling to finish it", o.store,
              progress.done, progress.total);
    fmt::print("store            {} (unfinished)\n", o.store);
    fmt::print("images           {} of {} labeled ({:.1f}%)\n", progress.done, progress.total,
               progress.total ? 100.0 * double(progress.done) / double(progress.total) : 0.0);
    for (size_t i = 0; i < progress.shards.size(); ++i) {
      const auto& sh = progress.shards[i];
      const char* state = sh.finished  ? "finished"
                          : sh.started ? "in progress or stopped"
                                       : "not started";
      fmt::print("shard {:>5}/{}  {} of {} images, {}\n", i, progress.shards.size(), sh.done,
                 sh.total, state);
    }
    fmt::print("to finish it, run the same fkd label command again (it resumes)\n");
    return;
  }
  StoreReader store(o.store);
  const Manifest& m = store.manifest();
  // The dataset: --data, else the one the manifest names (if it is still there).
  std::shared_ptr<Dataset> ds;
  const std::string data = !o.data.empty() ? o.data : m.dataset;
  if (!data.empty() &&
      (!o.data.empty() || data == "fashion-mnist" || std::filesystem::is_directory(data))) {
    DatasetOptions dopt;
    dopt.limit = labeled_subset_limit(m);
    ds = open_dataset(data, Split::kTrain, dopt);
    const std::string fingerprint = dataset_fingerprint(*ds);
    FKD_CHECK(ds->size() == m.num_images && fingerprint == m.dataset_fingerprint, ConfigError,
              "{} {}: not the dataset {} labels ({} training images of fingerprint {}, the store "
              "{} of {}): pass the one it was made from as --data",
              o.data.empty() ? "dataset (named by manifest.json)" : "--data", data, o.store,
              ds->size(), fingerprint, m.num_images, m.dataset_fingerprint);
  }
  if (!o.render.empty()) {
    FKD_CHECK(ds != nullptr, ConfigError, "--render needs --data (the images to draw)");
    const std::string& id_text = o.render[0];
    FKD_CHECK(!id_text.empty() && id_text.size() <= 19 &&
                  id_text.find_first_not_of("0123456789") == std::string::npos,
              ConfigError, "--render: '{}' is not an image id (a number in [0, {}))", id_text,
              store.num_images());
    const uint64_t id = std::stoull(id_text);
    render_image_crops(store, *ds, id, o.render[1]);
    fmt::print("wrote {}\n", o.render[1]);
    return;
  }
  if (o.image >= 0) {
    FKD_CHECK(uint64_t(o.image) < store.num_images(), ConfigError,
              "--image {} out of range [0, {})", o.image, store.num_images());
    ImageLabels l;
    store.read(uint64_t(o.image), l);
    fmt::print("image {}: {}x{} (width x height) when labeled, {} crops", o.image, l.width,
               l.height, l.num_crops);
    if (ds) {
      fmt::print(", {} (label {} {})", ds->item_name(size_t(o.image)), ds->label(size_t(o.image)),
                 m.classes[size_t(ds->label(size_t(o.image)))]);
    }
    fmt::print("\n{:>5}  {:>24}  {:>30}  {:>4}  top classes\n", "crop", "box (left,top,w,h) px",
               "(i, j, h, w) normalized", "flip");
    std::vector<float> dense;
    for (uint32_t c = 0; c < l.num_crops; ++c) {
      const CropPlan p = crop_of(m, uint64_t(o.image), c, l);
      const CropBox n = to_crop_box(p.box, int(l.height), int(l.width));
      dense_of(m, l, c, dense);
      std::string cls;
      for (const auto& t : top_classes(dense, std::max(1, m.k))) {
        cls += fmt::format("{} {:.4f}  ", m.classes[size_t(t.first)], t.second);
      }
      fmt::print("{:>5}  {:>24}  {:>30}  {:>4}  {}\n", c,
                 fmt::format("({},{},{},{})", p.box.left, p.box.top, p.box.width, p.box.height),
                 fmt::format("({:.4f}, {:.4f}, {:.4f}, {:.4f})", n.i, n.j, n.h, n.w),
                 p.flip ? "yes" : "no", cls);
    }
    return;
  }
  const StoreSummary s = summarize_store(store, ds.get(), o.limit);
  fmt::print("store            {} (format version {})\n", o.store, m.version);
  fmt::print("images           {}\n", s.images);
  fmt::print("crops            {} ({} per image)\n", s.crops, m.crops_per_image);
  fmt::print("bytes            {} ({:.2f} per crop, crop coordinates {})\n", s.bytes,
             s.bytes_per_crop, m.crop_origin == CropOrigin::kExplicit ? "stored" : "derived");
  fmt::print(
      "labels           {}{} in {}, {} classes\n", label_type_name(m.label_type),
      (m.label_type == LabelType::kMarginalSmoothing || m.label_type == LabelType::kMarginalRenorm)
          ? fmt::format(" top-{}", m.k)
          : "",
      precision_name(m.precision), m.classes.size());
  fmt::print("teacher          {} (xxh128 {}), temperature {}\n", m.teacher, m.teacher_hash,
             m.temperature);
  if (m.crop_origin == CropOrigin::kExplicit) {
    fmt::print(
        "crop origin      explicit: each record's pixel boxes and flips (teacher input {} "
        "px)\n",
        m.crop.size);
  } else {
    fmt::print("crop origin      derived: {}, seed {}\n", describe_crops(m.crop), m.seed);
  }
  const std::string over = o.limit ? fmt::format(" (first {} images)", o.limit) : "";
  if (s.agreement >= 0) {
    fmt::print("top-1 agreement  {:.2f}% of crops' top class is the image's label{}\n", s.agreement,
               over);
  } else {
    fmt::print(
        "top-1 agreement  (dataset not found: pass --data to compare with the ground truth)\n");
  }
  fmt::print("mean entropy     {:.4f} nats{}\n", s.mean_entropy, over);
  fmt::print("top-{} mass       {:.4f} mean probability kept by the top {} classes{}\n",
             std::max(1, m.k), s.mean_topk_mass, std::max(1, m.k), over);
}

}  // namespace fkd
