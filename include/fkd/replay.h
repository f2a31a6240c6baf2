// FKD's data source: the crops of a label store, replayed with their soft labels.
//
// In pass p over the images, image i trains on m of its N stored crops. Which ones is a pure
// function of (seed, i, p): the crop sequence of image i is a concatenation of seeded
// permutations of [0, N) (permutation r keyed by (seed, i, r)), and pass p takes its
// positions [p*m, p*m + m). Every stored crop is used once before any is reused, and any
// pass can be computed without the ones before it (resume, any worker count).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fkd/loader.h"

namespace fkd {

class Dataset;
class StoreReader;
struct Manifest;

/// The m crop ids image `image` trains on in pass `pass` of a store with `n` crops per
/// image (see the file comment). Pure; writes m ids to `out`.
void replay_crop_ids(uint64_t seed, uint64_t image, int64_t pass, uint32_t n, int m, uint32_t* out);

/// Checks that a store labels exactly this dataset (same images in the same order, same
/// classes); throws ConfigError naming the store and every difference otherwise.
void check_store_matches(const Manifest& m, const std::string& store_dir, const Dataset& ds,
                         const std::string& data_spec, size_t limit);

/// What a damaged record (a failed checksum or a record that does not decode) does to
/// training. Store damage is not bad data: by default it stops the run.
enum class DamagedRecords {
  kStop,  ///< FormatError naming the shard, the image and the offset: the loader stops
  kSkip,  ///< DataError with the same message: the loader skips the image and counts it
};

/// A CropSource over a label store: m stored crops per image per pass (the loader's epoch
/// is the pass), each with its dense soft label recovered by the store's label type.
/// Thread-safe. Throws DataError when a decoded image's size differs from the size the
/// store labeled (the crops would not be the teacher's).
class StoreCropSource final : public CropSource {
 public:
  StoreCropSource(std::shared_ptr<const StoreReader> store, int crops_per_pass, uint64_t seed,
                  DamagedRecords damaged = DamagedRecords::kStop);
  int crops_per_image() const override { return m_; }
  int soft_label_classes() const override { return classes_; }
  void crops(size_t index, int64_t pass, int height, int width, CropPlan* out,
             float* soft) const override;

 private:
  std::shared_ptr<const StoreReader> store_;
  int m_;
  uint64_t seed_;
  int classes_;
  DamagedRecords damaged_;
};

}  // namespace fkd
