// Datasets: an indexed collection of (image, class) pairs, split into train and val.
//
// Two kinds, chosen by open_dataset from the --data argument:
//   - ImageFolder: root/{train,val}/<class>/**/<image> with torchvision's extensions (JPEG,
//     PNG, WebP, TIFF, BMP, PNM); classes are the sub-folder names in sorted order and files
//     are ordered as torchvision's ImageFolder orders them (sorted walk), so class indices
//     and sample indices agree with PyTorch.
//   - IDX (MNIST / Fashion-MNIST): {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz],
//     held in memory. "fashion-mnist" names the copy Debian's dataset-fashion-mnist installs.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fkd/image.h"

namespace fkd {

enum class Split { kTrain, kVal };
const char* split_name(Split s);

class Dataset {
 public:
  virtual ~Dataset() = default;
  /// Number of samples.
  virtual size_t size() const = 0;
  /// Class index of sample i, in [0, classes().size()).
  virtual int64_t label(size_t i) const = 0;
  /// Decodes sample i (thread-safe). Throws DataError / IoError naming the file.
  virtual Image load(size_t i) const = 0;
  /// Decodes only the rows `pick` chooses once the size is known (see decode_image_rows):
  /// cheaper for JPEG files when the crops cover part of the image. Default: load() whole.
  virtual ImageBand load_rows(size_t i, const RowPicker& pick) const;
  /// The sample's identity for messages and fingerprints: a path relative to the
  /// dataset root ("train/Coat/0001.png"), or "train-images-idx3-ubyte.gz#123" for IDX.
  virtual std::string item_name(size_t i) const = 0;
  /// Bytes of the sample's encoded file (IDX: bytes of one image), for fingerprints.
  virtual uint64_t item_bytes(size_t i) const = 0;
  /// The index of sample i in the whole split: i itself, except in a subset (limit).
  virtual size_t split_index(size_t i) const { return i; }
  /// Class names, index = class id.
  const std::vector<std::string>& classes() const { return classes_; }
  /// Channels of the images load() returns (1 or 3).
  int channels() const { return channels_; }
  /// Where the data lives (for messages).
  const std::string& root() const { return root_; }

 protected:
  std::vector<std::string> classes_;
  int channels_ = 3;
  std::string root_;
};

/// Options for opening a dataset.
struct DatasetOptions {
  /// Image channels to produce: 0 = the dataset's natural choice (IDX: 1, ImageFolder: 3,
  /// as torchvision converts to RGB), or 1 / 3 to force grayscale / RGB.
  int channels = 0;
  /// Keep only `limit` samples spread evenly over the split: sample k of the subset is
  /// sample subset_indices(n, limit)[k] (every n/limit-th; 0 or >= n = all). Not the first
  /// `limit`: those of an ImageFolder would be its first classes only.
  size_t limit = 0;
};

/// The samples a limit keeps of a split of n: floor(k * n / limit) for k in [0, limit), the
/// subset every `--limit`, `--limit-train` and `--limit-val` of fkd selects (and
/// fkd.subset_indices in Python); all n when limit is 0 or at least n.
std::vector<size_t> subset_indices(size_t n, size_t limit);

/// Opens a split of the dataset named by `spec`: "fashion-mnist", a directory holding IDX
/// files, or an ImageFolder root with train/ and val/. Checks everything that can be
/// checked without decoding (split present, no empty class, labels in range) and throws
/// DataError with one line naming the path otherwise.
std::shared_ptr<Dataset> open_dataset(const std::string& spec, Split split,
                                      const DatasetOptions& opts = {});

/// A sample that does not decode, with the one-line error naming its file.
struct UnreadableImage {
  size_t index = 0;
  std::string message;
};

/// Decodes samples [begin, end) on `threads` threads (the caller's included) and returns
/// those that fail, in index order. `progress(done)` is called on the calling thread with the
/// count decoded so far.
std::vector<UnreadableImage> find_unreadable_images(
    const Dataset& ds, size_t begin, size_t end, int threads,
    const std::function<void(size_t done)>& progress = {});

/// Hex XXH64 of the split's ordered "item_name \t item_bytes \n" lines (a label store's
/// record of what it was made from): changes when an image is added, removed, renamed,
/// reordered or rewritten with another size.
std::string dataset_fingerprint(const Dataset& ds);

/// The directory Debian's dataset-fashion-mnist package installs.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Class names of Fashion-MNIST, in label order.
const std::vector<std::string>& fashion_mnist_classes();

}  // namespace fkd
