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

// --- a small raster canvas with a bitmap font, for --render ------------------------------

// Printable ASCII in cells 5 pixels wide and 9 high: capitals and digits stand on rows 0-6,
// lower case has its x-height on rows 2-6 and descenders (g, j, p, q, y) on rows 7-8. Each
// row is 5 bits, the leftmost pixel the highest.
struct Glyph {
  char c;
  uint8_t rows[9];
};
constexpr Glyph kFont[] = {
    {'A', {14, 17, 17, 31, 17, 17, 17}},
    {'B', {30, 17, 17, 30, 17, 17, 30}},
    {'C', {14, 17, 16, 16, 16, 17, 14}},
    {'D', {30, 17, 17, 17, 17, 17, 30}},
    {'E', {31, 16, 16, 30, 16, 16, 31}},
    {'F', {31, 16, 16, 30, 16, 16, 16}},
    {'G', {14, 17, 16, 23, 17, 17, 15}},
    {'H', {17, 17, 17, 31, 17, 17, 17}},
    {'I', {14, 4, 4, 4, 4, 4, 14}},
    {'J', {7, 2, 2, 2, 2, 18, 12}},
    {'K', {17, 18, 20, 24, 20, 18, 17}},
    {'L', {16, 16, 16, 16, 16, 16, 31}},
    {'M', {17, 27, 21, 21, 17, 17, 17}},
    {'N', {17, 17, 25, 21, 19, 17, 17}},
    {'O', {14, 17, 17, 17, 17, 17, 14}},
    {'P', {30, 17, 17, 30, 16, 16, 16}},
    {'Q', {14, 17, 17, 17, 21, 18, 13}},
    {'R', {30, 17, 17, 30, 20, 18, 17}},
    {'S', {15, 16, 16, 14, 1, 1, 30}},
    {'T', {31, 4, 4, 4, 4, 4, 4}},
    {'U', {17, 17, 17, 17, 17, 17, 14}},
    {'V', {17, 17, 17, 17, 17, 10, 4}},
    {'W', {17, 17, 17, 21, 21, 21, 10}},
    {'X', {17, 17, 10, 4, 10, 17, 17}},
    {'Y', {17, 17, 17, 10, 4, 4, 4}},
    {'Z', {31, 1, 2, 4, 8, 16, 31}},
    {'a', {0, 0, 14, 1, 15, 17, 15}},
    {'b', {16, 16, 22, 25, 17, 17, 30}},
    {'c', {0, 0, 14, 16, 16, 17, 14}},
    {'d', {1, 1, 13, 19, 17, 17, 15}},
    {'e', {0, 0, 14, 17, 31, 16, 14}},
    {'f', {6, 9, 8, 28, 8, 8, 8}},
    {'g', {0, 0, 15, 17, 17, 17, 15, 1, 14}},
    {'h', {16, 16, 22, 25, 17, 17, 17}},
    {'i', {4, 0, 12, 4, 4, 4, 14}},
    {'j', {2, 0, 6, 2, 2, 2, 2, 18, 12}},
    {'k', {16, 16, 18, 20, 24, 20, 18}},
    {'l', {12, 4, 4, 4, 4, 4, 14}},
    {'m', {0, 0, 26, 21, 21, 21, 21}},
    {'n', {0, 0, 22, 25, 17, 17, 17}},
    {'o', {0, 0, 14, 17, 17, 17, 14}},
    {'p', {0, 0, 30, 17, 17, 17, 30, 16, 16}},
    {'q', {0, 0, 15, 17, 17, 17, 15, 1, 1}},
    {'r', {0, 0, 22, 25, 16, 16, 16}},
    {'s', {0, 0, 15, 16, 14, 1, 30}},
    {'t', {8, 8, 28, 8, 8, 9, 6}},
    {'u', {0, 0, 17, 17, 17, 19, 13}},
    {'v', {0, 0, 17, 17, 17, 10, 4}},
    {'w', {0, 0, 17, 17, 21, 21, 10}},
    {'x', {0, 0, 17, 10, 4, 10, 17}},
    {'y', {0, 0, 17, 17, 17, 17, 15, 1, 14}},
    {'z', {0, 0, 31, 2, 4, 8, 31}},
    {'0', {14, 17, 19, 21, 25, 17, 14}},
    {'1', {4, 12, 4, 4, 4, 4, 14}},
    {'2', {14, 17, 1, 2, 4, 8, 31}},
    {'3', {31, 2, 4, 2, 1, 17, 14}},
    {'4', {2, 6, 10, 18, 31, 2, 2}},
    {'5', {31, 16, 30, 1, 1, 17, 14}},
    {'6', {6, 8, 16, 30, 17, 17, 14}},
    {'7', {31, 1, 2, 4, 8, 8, 8}},
    {'8', {14, 17, 17, 14, 17, 17, 14}},
    {'9', {14, 17, 17, 15, 1, 2, 12}},
    {'.', {0, 0, 0, 0, 0, 12, 12}},
    {',', {0, 0, 0, 0, 12, 4, 8}},
    {':', {0, 12, 12, 0, 12, 12, 0}},
    {';', {0, 12, 12, 0, 12, 4, 8}},
    {'!', {4, 4, 4, 4, 4, 0, 4}},
    {'?', {14, 17, 1, 2, 4, 0, 4}},
    {'-', {0, 0, 0, 31, 0, 0, 0}},
    {'+', {0, 4, 4, 31, 4, 4, 0}},
    {'=', {0, 0, 31, 0, 31, 0, 0}},
    {'_', {0, 0, 0, 0, 0, 0, 0, 31}},
    {'/', {0, 1, 2, 4, 8, 16, 0}},
    {'\\', {0, 16, 8, 4, 2, 1, 0}},
    {'(', {2, 4, 8, 8, 8, 4, 2}},
    {')', {8, 4, 2, 2, 2, 4, 8}},
    {'[', {14, 8, 8, 8, 8, 8, 14}},
    {']', {14, 2, 2, 2, 2, 2, 14}},
    {'{', {2, 4, 4, 8, 4, 4, 2}},
    {'}', {8, 4, 4, 2, 4, 4, 8}},
    {'<', {2, 4, 8, 16, 8, 4, 2}},
    {'>', {8, 4, 2, 1, 2, 4, 8}},
    {'%', {24, 25, 2, 4, 8, 19, 3}},
    {'#', {10, 10, 31, 10, 31, 10, 10}},
    {'&', {12, 18, 20, 8, 21, 18, 13}},
    {'*', {0, 4, 21, 14, 21, 4, 0}},
    {'@', {14, 17, 1, 13, 21, 21, 14}},
    {'$', {4, 15, 20, 14, 5, 30, 4}},
    {'\'', {4, 4, 8, 0, 0, 0, 0}},
    {'"', {10, 10, 0, 0, 0, 0, 0}},
    {'`', {8, 4, 2, 0, 0, 0, 0}},
    {'^', {4, 10, 17, 0, 0, 0, 0}},
    {'~', {0, 0, 8, 21, 2, 0, 0}},
    {'|', {4, 4, 4, 4, 4, 4, 4, 4, 4}},
};
constexpr int kGlyphRows = 9;
constexpr int kGlyphAdvance = 6;  // columns per character, the space between included

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
  /// Draws `s` (UTF-8) from (x, y), `scale` pixels per font pixel; a character the font
  /// lacks is an empty box, one per code point.
  void text(int x, int y, const std::string& s, int scale, const uint8_t* c) {
    for (char ch : s) {
      if ((static_cast<unsigned char>(ch) & 0xc0) == 0x80) continue;  // inside a code point
      const Glyph* glyph = nullptr;
      for (const Glyph& g : kFont)
        if (g.c == ch) glyph = &g;
      if (glyph) {
        for (int r = 0; r < kGlyphRows; ++r)
          for (int b = 0; b < 5; ++b)
            if (glyph->rows[r] & (1 << (4 - b)))
              fill(x + b * scale, y + r * scale, scale, scale, c);
      } else if (ch != ' ') {
        rect(x, y + scale, 5 * scale, 6 * scale, std::max(1, scale / 2), c);
      }
      x += kGlyphAdvance * scale;
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
  const int k = std::max(1, m.k);
  uint64_t agree = 0, counted = 0;
  double entropy = 0, mass = 0;
  ImageLabels l;
  std::vector<float> dense;
  for (const size_t i : subset_indices(size_t(s.images), limit)) {
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
  // What is drawn: the image and every box, which may reach past the image into the
  // padding of RandomCrop (the area replay fills with zeros). Their extent, in image pixels,
  // is shown at about 448 px on its longer side, the padding the boxes reach in gray.
  const int crops = int(std::min<uint32_t>(8, l.num_crops));
  std::vector<CropPlan> plans;
  int x0 = 0, y0 = 0, x1 = src.width, y1 = src.height;
  for (int c = 0; c < crops; ++c) {
    plans.push_back(crop_of(m, image, uint32_t(c), l));
    const PixelBox& b = plans.back().box;
    x0 = std::min(x0, b.left);
    y0 = std::min(y0, b.top);
    x1 = std::max(x1, b.left + b.width);
    y1 = std::max(y1, b.top + b.height);
  }
  const double f = 448.0 / std::max(x1 - x0, y1 - y0);
  const int pad = 16, line = 22, scale = 2;
  // Canvas x of image column x (and y of row y): an edge at x lands on px(x).
  auto px = [&](int x) { return pad + int(std::lround((x - x0) * f)); };
  auto py = [&](int y) { return pad + int(std::lround((y - y0) * f)); };
  const int dw = std::max(1, px(src.width) - px(0)), dh = std::max(1, py(src.height) - py(0));
  std::vector<uint8_t> shown(size_t(dh) * size_t(dw) * 3), scratch;
  resized_crop(src, {0, 0, src.width, src.height}, false, dh, dw, Interp::kBilinear, shown.data(),
               scratch);

  // The legend beside the drawing, never over it: the title, two lines per crop (beside its
  // color) and a note on the padding, each cut to at most 58 characters.
  struct Text {
    int x, y;  ///< from the legend's top left
    std::string s;
  };
  std::vector<Text> legend;
  constexpr size_t kLegendChars = 58;
  std::string title = fmt::format("image {} ({}x{})", image, l.width, l.height);
  if (size_t(ds.label(size_t(image))) < m.classes.size()) {
    title += " label " + m.classes[size_t(ds.label(size_t(image)))];
  }
  if (uint32_t(crops) < l.num_crops) {
    title += fmt::format(", crops 0-{} of {}", crops - 1, l.num_crops);
  }
  legend.push_back({0, 0, title});
  std::vector<float> dense;
  for (int c = 0; c < crops; ++c) {
    dense_of(m, l, uint32_t(c), dense);
    std::string cls;
    for (const auto& t : top_classes(dense, 2)) {
      cls += fmt::format("{}{} {:.0f}%", cls.empty() ? "" : ", ", m.classes[size_t(t.first)],
                         100 * t.second);
    }
    const int y = 30 + c * 2 * line;
    legend.push_back({22, y, fmt::format("crop {}{}", c, plans[size_t(c)].flip ? " flip" : "")});
    legend.push_back({22, y + line, cls});
  }
  const bool padded = x0 < 0 || y0 < 0 || x1 > src.width || y1 > src.height;
  if (padded) legend.push_back({0, 30 + crops * 2 * line, "gray: padding the crops reach"});
  int legend_w = 0;
  for (Text& t : legend) {
    const size_t room = kLegendChars - size_t(t.x / (kGlyphAdvance * scale));
    if (t.s.size() > room) t.s.resize(room);
    legend_w = std::max(legend_w, t.x + int(t.s.size()) * kGlyphAdvance * scale);
  }
  const int lx = px(x1) + pad, legend_h = legend.back().y + line;
  Canvas cv(lx + legend_w + pad, std::max(py(y1) + pad, legend_h + 2 * pad));
  if (padded) {
    const uint8_t gray[3] = {96, 96, 96};
    cv.fill(px(x0), py(y0), px(x1) - px(x0), py(y1) - py(y0), gray);
  }
  for (int y = 0; y < dh; ++y)
    for (int x = 0; x < dw; ++x) cv.put(px(0) + x, py(0) + y, &shown[(size_t(y) * dw + x) * 3]);
  for (int c = 0; c < crops; ++c) {
    const PixelBox& b = plans[size_t(c)].box;
    const int left = px(b.left), top = py(b.top);
    cv.rect(left, top, std::max(3, px(b.left + b.width) - left),
            std::max(3, py(b.top + b.height) - top), 2, kColors[c]);
    cv.fill(lx, pad + 30 + c * 2 * line, 14, 14, kColors[c]);
  }
  const uint8_t black[3] = {0, 0, 0};
  for (const Text& t : legend) cv.text(lx + t.x, pad + t.y, t.s, scale, black);

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
  fmt::print("labels           {}, {} classes\n", describe_labels(m), m.classes.size());
  fmt::print("teacher          {} (xxh128 {}), temperature {}\n", m.teacher, m.teacher_hash,
             m.temperature);
  fmt::print("teacher amp      {} (the teacher ran in {})\n", amp_name(m.teacher_amp),
             amp_dtype_name(m.teacher_amp));
  if (m.crop_origin == CropOrigin::kExplicit) {
    fmt::print(
        "crop origin      explicit: each record's pixel boxes and flips (teacher input {} "
        "px)\n",
        m.crop.size);
  } else {
    fmt::print("crop origin      derived: {}, seed {}\n", describe_crops(m.crop), m.seed);
  }
  const std::string over =
      o.limit && o.limit < s.images ? fmt::format(" (over {} images spread evenly)", o.limit) : "";
  if (s.agreement >= 0) {
    fmt::print("top-1 agreement  {:.2f}% of crops' top class is the image's label{}\n", s.agreement,
               over);
  } else {
    fmt::print(
        "top-1 agreement  (dataset not found: pass --data to compare with the ground truth)\n");
  }
  fmt::print("mean entropy     {:.4f} nats{}\n", s.mean_entropy, over);
  if (m.label_type == LabelType::kMarginalSmoothing || m.label_type == LabelType::kMarginalRenorm) {
    fmt::print("top-{} mass       {:.4f} mean probability the stored top {} classes hold{}\n", m.k,
               s.mean_topk_mass, m.k, over);
  } else {
    fmt::print("top-1 mass       {:.4f} mean probability of a crop's most probable class{}\n",
               s.mean_topk_mass, over);
  }
}

}  // namespace fkd
