#include "fkd/replay.h"

#include <algorithm>
#include <numeric>

#include <fmt/ranges.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/rng.h"
#include "fkd/store.h"

namespace fkd {

void replay_crop_ids(uint64_t seed, uint64_t image, int64_t pass, uint32_t n, int m,
                     uint32_t* out) {
  FKD_CHECK(n >= 1 && m >= 1 && pass >= 0, ConfigError,
            "replay_crop_ids: need n >= 1, m >= 1, pass >= 0 (got {}, {}, {})", n, m, pass);
  std::vector<uint32_t> perm(n);
  int64_t have = -1;  // which permutation `perm` holds
  for (int k = 0; k < m; ++k) {
    const uint64_t pos = uint64_t(pass) * uint64_t(m) + uint64_t(k);
    const int64_t round = int64_t(pos / n);
    if (round != have) {
      std::iota(perm.begin(), perm.end(), 0u);
      Rng rng(seed, RngStream::kCropPick, {image, uint64_t(round)});
      for (uint32_t i = n; i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
      have = round;
    }
    out[k] = perm[pos % n];
  }
}

void check_store_matches(const Manifest& m, const std::string& store_dir, const Dataset& ds,
                         const std::string& data_spec, size_t limit) {
  std::vector<std::string> diffs;
  if (m.num_images != ds.size()) diffs.push_back("another number of images");
  if (m.classes.size() != ds.classes().size()) {
    diffs.push_back(fmt::format("{} classes in the store, {} in the dataset", m.classes.size(),
                                ds.classes().size()));
  } else {
    for (size_t c = 0; c < m.classes.size(); ++c) {
      if (m.classes[c] != ds.classes()[c]) {
        diffs.push_back(fmt::format("class {} is '{}' in the store, '{}' in the dataset", c,
                                    m.classes[c], ds.classes()[c]));
        break;
      }
    }
  }
  if (diffs.empty() && m.dataset_fingerprint != dataset_fingerprint(ds)) {
    diffs.push_back(fmt::format("dataset fingerprint {} vs {}", m.dataset_fingerprint,
                                dataset_fingerprint(ds)));
  }
  FKD_CHECK(diffs.empty(), ConfigError,
            "{}: the labels were made for {} images of --data {} but training reads {} images of "
            "--data {}{} ({}); use the dataset and subset the store was made from",
            store_dir, m.num_images, m.dataset, ds.size(), data_spec,
            limit ? fmt::format(" (--limit-train {})", limit) : "", fmt::join(diffs, ", "));
}

StoreCropSource::StoreCropSource(std::shared_ptr<const StoreReader> store, int crops_per_pass,
                                 uint64_t seed, DamagedRecords damaged)
    : store_(std::move(store)), m_(crops_per_pass), seed_(seed), damaged_(damaged) {
  const Manifest& mf = store_->manifest();
  classes_ = int(mf.classes.size());
  FKD_CHECK(m_ >= 1 && uint32_t(m_) <= mf.crops_per_image, ConfigError,
            "--num-crops {} must be in [1, {}] (the crops per image of the store)", m_,
            mf.crops_per_image);
}

void StoreCropSource::crops(size_t index, int64_t pass, int height, int width, CropPlan* out,
                            float* soft) const {
  thread_local ImageLabels rec;
  const Manifest& mf = store_->manifest();
  try {
    store_->read(index, rec);
  } catch (const FormatError& e) {
    if (damaged_ == DamagedRecords::kSkip) fail<DataError>("{}", e.what());
    fail<FormatError>(
        "{}; fkd label verify lists the damaged records, fkd label repair "
        "remakes them, --skip-damaged-labels trains without them",
        e.what());
  }
  FKD_CHECK(rec.height == uint32_t(height) && rec.width == uint32_t(width), DataError,
            "image {} is {}x{} but the label store labeled it at {}x{}; relabel the dataset", index,
            height, width, rec.height, rec.width);
  thread_local std::vector<uint32_t> id;
  id.resize(size_t(m_));
  replay_crop_ids(seed_, index, pass, rec.num_crops, m_, id.data());
  const int ni = stored_indices(mf.label_type, mf.k);
  const int nv = stored_values(mf.label_type, mf.k, classes_);
  for (int k = 0; k < m_; ++k) {
    out[k] = store_crop(mf, rec, index, id[k]);
    if (soft) {
      recover_dense(mf.label_type, mf.k, classes_, rec.indices.data() + size_t(id[k]) * ni,
                    rec.values.data() + size_t(id[k]) * nv, soft + size_t(k) * classes_);
    }
  }
}

}  // namespace fkd
