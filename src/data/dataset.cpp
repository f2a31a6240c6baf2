#include "fkd/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "fkd/error.h"
#include "fkd/file_io.h"

namespace fs = std::filesystem;

namespace fkd {

ImageBand Dataset::load_rows(size_t i, const RowPicker& pick) const {
  ImageBand band;
  band.image = load(i);
  band.full_height = band.image.height;
  pick(band.image.height, band.image.width);
  return band;
}

const char* split_name(Split s) { return s == Split::kTrain ? "train" : "val"; }

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                                 "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

namespace {

/// Reads a whole file, gunzipping it when it is gzip-compressed (zlib reads plain files as is).
std::string read_maybe_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  FKD_CHECK(f != nullptr, IoError, "{}: cannot open: {}", path, std::strerror(errno));
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, size_t(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string why = (n < 0 || err < 0) ? std::string(msg ? msg : "read error") : "";
  gzclose(f);
  FKD_CHECK(why.empty(), DataError, "{}: corrupt or truncated gzip data: {}", path, why);
  return out;
}

uint32_t be32(const std::string& b, size_t off) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data() + off);
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

/// MNIST-format dataset held in memory: N images of rows x cols uint8, N labels.
class IdxDataset final : public Dataset {
 public:
  IdxDataset(const std::string& dir, Split split, int want_channels,
             const std::vector<std::string>* class_names) {
    root_ = dir;
    const std::string prefix = split == Split::kTrain ? "train" : "t10k";
    images_path_ = find(dir, prefix + "-images-idx3-ubyte");
    const std::string labels_path = find(dir, prefix + "-labels-idx1-ubyte");
    images_ = read_maybe_gz(images_path_);
    const std::string labels = read_maybe_gz(labels_path);

    FKD_CHECK(images_.size() >= 16 && be32(images_, 0) == 0x803, FormatError,
              "{}: not an IDX image file (expected magic 0x00000803)", images_path_);
    const size_t n = be32(images_, 4);
    rows_ = int(be32(images_, 8));
    cols_ = int(be32(images_, 12));
    FKD_CHECK(rows_ > 0 && cols_ > 0 && rows_ <= 65536 && cols_ <= 65536, FormatError,
              "{}: bad image size {}x{}", images_path_, rows_, cols_);
    FKD_CHECK(images_.size() - 16 == n * size_t(rows_) * size_t(cols_), FormatError,
              "{}: header says {} images of {}x{} ({} bytes) but the file holds {} bytes",
              images_path_, n, rows_, cols_, n * size_t(rows_) * cols_, images_.size() - 16);
    FKD_CHECK(labels.size() >= 8 && be32(labels, 0) == 0x801, FormatError,
              "{}: not an IDX label file (expected magic 0x00000801)", labels_path);
    FKD_CHECK(be32(labels, 4) == n && labels.size() - 8 == n, FormatError,
              "{}: holds {} labels but {} has {} images", labels_path, labels.size() - 8,
              images_path_, n);
    FKD_CHECK(n > 0, DataError, "{}: holds no images", images_path_);
    labels_.resize(n);
    int max_label = 0;
    for (size_t i = 0; i < n; ++i) {
      labels_[i] = static_cast<unsigned char>(labels[8 + i]);
      max_label = std::max(max_label, int(labels_[i]));
    }
    if (class_names) {
      FKD_CHECK(max_label < int(class_names->size()), DataError,
                "{}: label {} out of range for {} classes", labels_path, max_label,
                class_names->size());
      classes_ = *class_names;
    } else {
      for (int c = 0; c <= max_label; ++c) classes_.push_back(std::to_string(c));
    }
    images_.erase(0, 16);  // keep only pixels
    channels_ = want_channels == 3 ? 3 : 1;
    images_name_ = fs::path(images_path_).filename().string();
  }

  size_t size() const override { return labels_.size(); }
  int64_t label(size_t i) const override { return labels_[i]; }
  std::string item_name(size_t i) const override { return images_name_ + "#" + std::to_string(i); }
  uint64_t item_bytes(size_t) const override { return uint64_t(rows_) * cols_; }

  Image load(size_t i) const override {
    Image img;
    img.height = rows_;
    img.width = cols_;
    img.channels = channels_;
    const size_t px = size_t(rows_) * cols_;
    const auto* src = reinterpret_cast<const uint8_t*>(images_.data()) + i * px;
    if (channels_ == 1) {
      img.pixels.assign(src, src + px);
    } else {
      img.pixels.resize(px * 3);
      for (size_t k = 0; k < px; ++k) std::fill_n(&img.pixels[k * 3], 3, src[k]);
    }
    return img;
  }

 private:
  static std::string find(const std::string& dir, const std::string& base) {
    for (const char* ext : {"", ".gz"}) {
      const std::string p = dir + "/" + base + ext;
      if (fs::exists(p)) return p;
    }
    fail<DataError>("{}: missing {} (or {}.gz)", dir, base, base);
  }

  std::string images_path_, images_name_;
  std::string images_;  ///< N * rows * cols uint8 pixels
  std::vector<uint8_t> labels_;
  int rows_ = 0, cols_ = 0;
};

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  // torchvision's IMG_EXTENSIONS: the files its ImageFolder lists.
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".ppm" || ext == ".bmp" ||
         ext == ".pgm" || ext == ".tif" || ext == ".tiff" || ext == ".webp";
}

/// True when some sub-folder of `dir` directly holds an image file: `dir` is then a split
/// (the folder torchvision's ImageFolder is given), not a dataset root.
bool looks_like_split_folder(const fs::path& dir) {
  std::error_code ec;
  for (const auto& sub : fs::directory_iterator(dir, ec)) {
    if (!sub.is_directory()) continue;
    for (const auto& e : fs::directory_iterator(sub.path(), ec)) {
      if (e.is_regular_file() && has_image_extension(e.path())) return true;
    }
  }
  return false;
}

/// torchvision-style ImageFolder: root/<split>/<class>/**/<image>.
class ImageFolderDataset final : public Dataset {
 public:
  ImageFolderDataset(const std::string& root, Split split, int want_channels) {
    root_ = root;
    const fs::path dir = fs::path(root) / split_name(split);
    if (!fs::is_directory(dir)) {
      // torchvision's ImageFolder(root) takes the split folder itself; fkd wants its parent.
      FKD_CHECK(!looks_like_split_folder(root), DataError,
                "{}: holds class folders of images, so it is a split, not a dataset root: "
                "pass its parent, which must hold train/ and val/ (each with one folder per "
                "class)",
                root);
      fail<DataError>(
          "{}: missing split folder '{}' (an ImageFolder root holds train/ and val/, "
          "each with one folder per class)",
          root, split_name(split));
    }
    std::vector<std::string> class_dirs;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.is_directory()) class_dirs.push_back(e.path().filename().string());
    }
    std::sort(class_dirs.begin(), class_dirs.end());
    FKD_CHECK(!class_dirs.empty(), DataError, "{}: no class folders", dir.string());
    for (size_t c = 0; c < class_dirs.size(); ++c) {
      // torchvision walks each class folder with sorted(os.walk(...)) and sorted file
      // names: order by (folder, file name).
      std::vector<std::pair<std::string, std::string>> files;
      const fs::path cdir = dir / class_dirs[c];
      for (const auto& e : fs::recursive_directory_iterator(
               cdir, fs::directory_options::follow_directory_symlink)) {
        // torchvision lists every file with an image extension, a dangling link included
        // (it fails when loaded): so does fkd, so that it is reported, not silently lost.
        const bool dangling = e.is_symlink() && !fs::exists(e.path());
        if (!e.is_regular_file() && !dangling) continue;
        if (!has_image_extension(e.path())) {
          continue;  // torchvision's ImageFolder also skips non-image files
        }
        files.emplace_back(e.path().parent_path().string(), e.path().filename().string());
      }
      FKD_CHECK(!files.empty(), DataError, "{}: empty class folder (no image files)",
                cdir.string());
      std::sort(files.begin(), files.end());
      for (const auto& [folder, name] : files) {
        const fs::path full = fs::path(folder) / name;
        std::error_code ec;
        const uintmax_t bytes = fs::file_size(full, ec);  // a dangling link: 0
        // Named by where it sits in the tree, not where a symlink points (as torchvision's
        // paths are): fs::relative would resolve links.
        const fs::path item =
            fs::path(split_name(split)) / class_dirs[c] / full.lexically_relative(cdir);
        items_.push_back({item.string(), int64_t(c), ec ? 0 : bytes});
      }
    }
    classes_ = class_dirs;
    channels_ = want_channels == 1 ? 1 : 3;
  }

  size_t size() const override { return items_.size(); }
  int64_t label(size_t i) const override { return items_[i].label; }
  std::string item_name(size_t i) const override { return items_[i].rel_path; }
  uint64_t item_bytes(size_t i) const override { return items_[i].bytes; }
  Image load(size_t i) const override {
    return read_image(root_ + "/" + items_[i].rel_path, channels_);
  }
  ImageBand load_rows(size_t i, const RowPicker& pick) const override {
    const std::string path = root_ + "/" + items_[i].rel_path;
    const std::vector<uint8_t> bytes = read_whole_file(path);
    return decode_image_rows(bytes.data(), bytes.size(), channels_, path, pick);
  }

 private:
  struct Item {
    std::string rel_path;
    int64_t label;
    uint64_t bytes;
  };
  std::vector<Item> items_;
};

/// Every k-th sample of another dataset (a deterministic subset for quick runs).
class SubsetDataset final : public Dataset {
 public:
  SubsetDataset(std::shared_ptr<Dataset> base, size_t limit) : base_(std::move(base)) {
    classes_ = base_->classes();
    channels_ = base_->channels();
    root_ = base_->root();
    index_ = subset_indices(base_->size(), limit);
  }
  size_t size() const override { return index_.size(); }
  int64_t label(size_t i) const override { return base_->label(index_[i]); }
  Image load(size_t i) const override { return base_->load(index_[i]); }
  ImageBand load_rows(size_t i, const RowPicker& pick) const override {
    return base_->load_rows(index_[i], pick);
  }
  std::string item_name(size_t i) const override { return base_->item_name(index_[i]); }
  uint64_t item_bytes(size_t i) const override { return base_->item_bytes(index_[i]); }
  size_t split_index(size_t i) const override { return base_->split_index(index_[i]); }

 private:
  std::shared_ptr<Dataset> base_;
  std::vector<size_t> index_;
};

bool is_idx_dir(const std::string& dir) {
  for (const char* f : {"/train-images-idx3-ubyte", "/train-images-idx3-ubyte.gz",
                        "/t10k-images-idx3-ubyte", "/t10k-images-idx3-ubyte.gz"}) {
    if (fs::exists(dir + f)) return true;
  }
  return false;
}

}  // namespace

std::vector<UnreadableImage> find_unreadable_images(
    const Dataset& ds, size_t begin, size_t end, int threads,
    const std::function<void(size_t done)>& progress) {
  std::atomic<size_t> next{begin}, done{0};
  std::mutex mu;
  std::vector<UnreadableImage> bad;
  auto work = [&](bool report) {
    for (size_t i; (i = next.fetch_add(1)) < end;) {
      try {
        ds.load(i);
      } catch (const std::exception& e) {  // fkd's DataError / IoError, or out of memory
        std::lock_guard<std::mutex> lock(mu);
        bad.push_back({i, e.what()});
      }
      const size_t d = done.fetch_add(1) + 1;
      if (report && progress) progress(d);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, false);
  work(true);
  for (auto& t : pool) t.join();
  if (progress) progress(done.load());
  std::sort(bad.begin(), bad.end(),
            [](const UnreadableImage& a, const UnreadableImage& b) { return a.index < b.index; });
  return bad;
}

std::vector<size_t> subset_indices(size_t n, size_t limit) {
  if (limit == 0 || limit > n) limit = n;
  std::vector<size_t> index(limit);
  for (size_t k = 0; k < limit; ++k) index[k] = k * n / limit;
  return index;
}

std::shared_ptr<Dataset> open_dataset(const std::string& spec, Split split,
                                      const DatasetOptions& opts) {
  FKD_CHECK(opts.channels == 0 || opts.channels == 1 || opts.channels == 3, ConfigError,
            "channels must be 1 or 3, got {}", opts.channels);
  std::shared_ptr<Dataset> ds;
  if (spec == "fashion-mnist") {
    FKD_CHECK(fs::is_directory(kFashionMnistDir), DataError,
              "{}: not found; install Debian's dataset-fashion-mnist package "
              "(scripts/install-deps does)",
              kFashionMnistDir);
    ds = std::make_shared<IdxDataset>(kFashionMnistDir, split, opts.channels,
                                      &fashion_mnist_classes());
  } else {
    FKD_CHECK(fs::exists(spec), NotFoundError,
              "{}: no such dataset directory (expected 'fashion-mnist', an IDX folder or an "
              "ImageFolder root with train/ and val/)",
              spec);
    FKD_CHECK(fs::is_directory(spec), DataError,
              "{}: no such dataset directory (expected 'fashion-mnist', an IDX folder or an "
              "ImageFolder root with train/ and val/)",
              spec);
    if (is_idx_dir(spec)) {
      ds = std::make_shared<IdxDataset>(spec, split, opts.channels, nullptr);
    } else {
      ds = std::make_shared<ImageFolderDataset>(spec, split, opts.channels);
    }
  }
  if (opts.limit > 0 && opts.limit < ds->size()) {
    ds = std::make_shared<SubsetDataset>(std::move(ds), opts.limit);
  }
  return ds;
}

}  // namespace fkd
