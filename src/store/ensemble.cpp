// `fkd label ensemble`: the average of several teachers' labels on identical crops.
#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/progress.h"
#include "fkd/store.h"
#include "store/manifest.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {

/// Members must label the same images on the same crops: the same dataset and classes, and
/// the same sampler, seed and count, so that every record's crops are derived alike (explicit
/// crops: the same origin and count; each record's boxes are compared as it is read).
void check_same_crops(const std::vector<std::unique_ptr<StoreReader>>& readers,
                      const std::vector<std::string>& stores) {
  const Manifest& a = readers[0]->manifest();
  for (size_t i = 1; i < readers.size(); ++i) {
    const Manifest& b = readers[i]->manifest();
    std::vector<std::string> d;
    if (a.dataset_fingerprint != b.dataset_fingerprint || a.num_images != b.num_images)
      d.push_back("dataset");
    if (a.classes != b.classes) d.push_back("classes");
    if (a.crop_origin != b.crop_origin)
      d.push_back(fmt::format("crops ({} vs {})", crop_origin_name(a.crop_origin),
                              crop_origin_name(b.crop_origin)));
    if (a.crops_per_image != b.crops_per_image)
      d.push_back(fmt::format("crops per image ({} vs {})", a.crops_per_image, b.crops_per_image));
    if (a.crop_origin == CropOrigin::kDerived && b.crop_origin == CropOrigin::kDerived) {
      if (a.seed != b.seed) d.push_back(fmt::format("seed ({} vs {})", a.seed, b.seed));
      for (std::string& c : crop_differences(a.crop, b.crop)) d.push_back(std::move(c));
    }
    FKD_CHECK(d.empty(), ConfigError,
              "{} and {} were not labeled on the same crops of the same dataset ({}); label "
              "one with --reference-crops of the other",
              stores[0], stores[i], fmt::join(d, ", "));
  }
}

bool same_boxes(const std::vector<CropPlan>& a, const std::vector<CropPlan>& b) {
  return std::equal(
      a.begin(), a.end(), b.begin(), b.end(), [](const CropPlan& x, const CropPlan& y) {
        return x.box.left == y.box.left && x.box.top == y.box.top && x.box.width == y.box.width &&
               x.box.height == y.box.height && x.flip == y.flip;
      });
}

/// Members whose teachers ran in different precisions give labels of different fidelity:
/// refused unless asked for.
void check_same_amp(const std::vector<std::unique_ptr<StoreReader>>& readers,
                    const std::vector<std::string>& stores, bool mixed_amp) {
  const AmpMode a = readers[0]->manifest().teacher_amp;
  for (size_t i = 1; i < readers.size(); ++i) {
    const AmpMode b = readers[i]->manifest().teacher_amp;
    FKD_CHECK(mixed_amp || a == b, ConfigError,
              "{} and {} were labeled with the teacher in different precisions (teacher_amp {} vs "
              "{}); label both with the same --amp, or pass --mixed-amp to average them anyway",
              stores[0], stores[i], amp_name(a), amp_name(b));
  }
}

/// The manifest of the ensemble: the first member's, naming every member's teacher, with
/// the reduced precision of any member that ran in one.
Manifest ensemble_manifest(const std::vector<std::unique_ptr<StoreReader>>& readers) {
  Manifest m = readers[0]->manifest();
  m.version = Manifest{}.version;  // a new store: the current format
  m.num_shards = 1;
  std::string names, hashes;
  for (const auto& r : readers) {
    names += (names.empty() ? "" : "+") + r->manifest().teacher;
    hashes += r->manifest().teacher_hash;
    if (r->manifest().teacher_amp != AmpMode::kOff) m.teacher_amp = r->manifest().teacher_amp;
  }
  m.teacher = "ensemble(" + names + ")";
  m.teacher_hash = hashes;  // the members' identities, in order
  return m;
}

}  // namespace

bool ensemble_stores(const std::vector<std::string>& stores, const std::string& out,
                     bool mixed_amp) {
  FKD_CHECK(stores.size() >= 2, ConfigError, "ensemble needs at least two stores, got {}",
            stores.size());
  std::vector<std::unique_ptr<StoreReader>> readers;
  for (const auto& s : stores) readers.push_back(std::make_unique<StoreReader>(s));
  check_same_crops(readers, stores);
  check_same_amp(readers, stores, mixed_amp);
  const Manifest m = ensemble_manifest(readers);
  if (store::finished_store_of(out, m)) return false;
  FKD_CHECK(!fs::exists(fs::path(out) / "manifest.json"), ConfigError,
            "{}: already holds another label store; write the ensemble into a new directory", out);
  make_directories(out, "--out");
  // Like any shard, a killed run resumes from the .partial; the manifest comes last.
  ShardWriter writer(out, m, 0);
  const int C = int(m.classes.size());
  const int n_idx = stored_indices(m.label_type, m.k), n_val = stored_values(m.label_type, m.k, C);
  std::vector<float> dense(static_cast<size_t>(C)), sum(static_cast<size_t>(C));
  std::vector<ImageLabels> members(readers.size());
  ImageLabels result;
  Progress bar("ensemble", m.num_images - writer.next_image(), "img");
  for (uint64_t i = writer.next_image(); i < m.num_images; ++i) {
    for (size_t r = 0; r < readers.size(); ++r) {
      readers[r]->read(i, members[r]);
      const ImageLabels& a = members[0];
      const ImageLabels& b = members[r];
      FKD_CHECK(b.height == a.height && b.width == a.width && b.crop_hash == a.crop_hash &&
                    same_boxes(a.boxes, b.boxes),
                ConfigError,
                "{}: image {} was labeled on other crops than in {} ({}x{} image, crop hash "
                "0x{:08x}, against {}x{}, 0x{:08x}); label one with --reference-crops of the "
                "other",
                stores[r], i, stores[0], b.width, b.height, b.crop_hash, a.width, a.height,
                a.crop_hash);
    }
    result = members[0];
    for (uint32_t c = 0; c < m.crops_per_image; ++c) {
      std::fill(sum.begin(), sum.end(), 0.f);
      for (size_t r = 0; r < readers.size(); ++r) {
        const Manifest& rm = readers[r]->manifest();
        const int ri = stored_indices(rm.label_type, rm.k);
        const int rv = stored_values(rm.label_type, rm.k, C);
        recover_dense(rm.label_type, rm.k, C, members[r].indices.data() + size_t(c) * size_t(ri),
                      members[r].values.data() + size_t(c) * size_t(rv), dense.data());
        for (int k = 0; k < C; ++k) sum[size_t(k)] += dense[size_t(k)];
      }
      for (float& v : sum) v /= float(readers.size());
      quantize_crop(sum.data(), C, m.label_type, m.k,
                    result.indices.data() + size_t(c) * size_t(n_idx),
                    result.values.data() + size_t(c) * size_t(n_val));
    }
    writer.append(i, result);
    bar.advance(1);
  }
  bar.finish();
  writer.finish();
  write_manifest(out, m);  // last: a store without its manifest is not a store
  return true;
}

}  // namespace fkd
