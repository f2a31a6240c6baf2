// `fkd inspect`: what a label store holds, in numbers and pictures.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fkd {

class StoreReader;
class Dataset;

struct InspectOptions {
  std::string store;   ///< store directory
  std::string data;    ///< dataset for ground truth and images; default: the manifest's
  int64_t image = -1;  ///< print this image's crops and labels
  std::vector<std::string> render;  ///< {ID, OUT.png}: draw an image with its crops
  size_t limit = 0;                 ///< summarize only this many images, spread evenly (0 = all)
};

struct StoreSummary {
  uint64_t images = 0;
  uint64_t crops = 0;
  uint64_t bytes = 0;  ///< shard files
  double bytes_per_crop = 0;
  double agreement = -1;  ///< % of crops whose top stored class is the image's label (-1: no data)
  double mean_entropy = 0;    ///< nats, of the recovered dense labels
  double mean_topk_mass = 0;  ///< probability mass in the stored values (marginal types)
};

/// Statistics over `limit` images spread evenly over the store (subset_indices; 0 = all);
/// `ds` may be null.
StoreSummary summarize_store(const StoreReader& store, const Dataset* ds, size_t limit);

/// Runs the inspect command, printing to stdout.
void run_inspect(const InspectOptions& opts);

/// Draws image `image` of the dataset with the boxes of its first crops and each crop's top
/// classes in a legend, and writes a PNG.
void render_image_crops(const StoreReader& store, const Dataset& ds, uint64_t image,
                        const std::string& png_path);

}  // namespace fkd
