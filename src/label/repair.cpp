// `fkd label repair`: relabels exactly the images whose records are damaged. Crops derive
// from the manifest and each crop goes through the teacher at the batch position it had
// (TeacherBatcher), so the repaired store equals the undamaged one byte for byte.
#include <filesystem>
#include <map>

#include <fmt/core.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/hash.h"
#include "fkd/label.h"
#include "fkd/progress.h"
#include "fkd/store.h"
#include "label/labeler.h"
#include "train/device.h"
#include "train/input.h"
#include "train/teachers.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {

/// The dataset the store labels, checked by its fingerprint.
std::shared_ptr<const Dataset> store_dataset(const Manifest& m, const RepairConfig& cfg) {
  const std::string data = cfg.data.empty() ? m.dataset : cfg.data;
  DatasetOptions dopt;
  dopt.channels = int(m.mean.size());
  dopt.limit = labeled_subset_limit(m);
  auto ds = open_dataset(data, Split::kTrain, dopt);
  FKD_CHECK(ds->size() == m.num_images && dataset_fingerprint(*ds) == m.dataset_fingerprint,
            ConfigError,
            "{}: labels {} images of --data {} (fingerprint {}); --data {} is another dataset: "
            "give the one the store was made from",
            cfg.store, m.num_images, m.dataset, m.dataset_fingerprint, data);
  return ds;
}

/// Images [begin, end) of the job, labeled into a map.
void relabel(const LabelJob& job, uint64_t begin, uint64_t end,
             std::map<uint64_t, ImageLabels>& out) {
  label_images(job, begin, end, fmt::format("relabel {}", begin),
               [&](uint64_t image, const ImageLabels& l) { out[image] = l; });
}

}  // namespace

RepairResult repair_store(const RepairConfig& cfg) {
  FKD_CHECK(cfg.batch >= 1, ConfigError, "--batch {}: expected at least 1", cfg.batch);
  FKD_CHECK(!cfg.teacher.empty(), ConfigError,
            "repair: --teacher (the store's teacher) is required");
  configure_threads(cfg.threads);
  const torch::Device device = parse_device(cfg.device);
  RepairResult result;
  const StoreVerification before = verify_store(cfg.store);
  if (before.ok()) return result;
  // Shards that are whole but all disagree with manifest.json: relabeling them to match an
  // edited manifest would destroy the labels; the manifest is what needs repair.
  FKD_CHECK(before.manifest_problem.empty(), FormatError, "{}; repair changed nothing",
            before.manifest_problem);
  result.needed = true;

  const Manifest m = read_manifest(cfg.store);
  FKD_CHECK(m.crop_origin == CropOrigin::kDerived, ConfigError,
            "{}: holds explicit crops, and a damaged record's boxes are lost with it: repair "
            "cannot relabel them; import or label the store again (fkd label verify lists the "
            "images)",
            cfg.store);
  const auto ds = store_dataset(m, cfg);
  FKD_CHECK(hash_file_hex(cfg.teacher) == m.teacher_hash, ConfigError,
            "{}: was labeled by {} (xxh128 {}); {} is another teacher: repair with the same one",
            cfg.store, m.teacher, m.teacher_hash, cfg.teacher);
  // The teacher in the precision the store was labeled in, or the labels would differ.
  FKD_CHECK(m.teacher_amp != AmpMode::kFp16 || device.is_cuda(), ConfigError,
            "{}: was labeled with the teacher in fp16, which runs on CUDA devices only: repair "
            "it with --device cuda",
            cfg.store);
  OpenedTeacher teacher = open_teacher(cfg.teacher, device, {cfg.optimize, m.teacher_amp});
  // The input exactly as the store records it.
  InputOverrides over;
  over.channels = int(m.mean.size());
  over.input_size = m.crop.size;
  over.mean = m.mean;
  over.std = m.std;
  over.interp = m.interpolation;
  const TrainConfig input =
      model_input(teacher.recorded ? &*teacher.recorded : nullptr, over, m.dataset, *ds);
  LabelConfig lc;
  lc.teacher = cfg.teacher;
  lc.batch = cfg.batch;
  lc.temperature = m.temperature;
  lc.workers = cfg.workers;
  const LabelJob job{lc, ds, m, input, *teacher.net, device};

  // A shard that cannot be read is labeled again whole; the broken file is kept aside.
  for (const StoreVerification::Shard& s : before.shards) {
    if (fs::exists(s.shard)) fs::rename(s.shard, s.shard + ".damaged");
    ShardWriter writer(cfg.store, m, s.index);
    label_images(job, writer.next_image(), s.image_end, fmt::format("shard {}", s.index),
                 [&](uint64_t image, const ImageLabels& l) { writer.append(image, l); });
    writer.finish();
    ++result.shards;
    result.images += s.image_end - s.image_begin;
  }
  // Damaged records of readable shards: each run of consecutive images labeled at once,
  // then each shard rewritten with them.
  std::map<uint32_t, std::map<uint64_t, ImageLabels>> by_shard;
  const auto& recs = before.records;
  for (size_t r = 0; r < recs.size();) {
    size_t e = r + 1;
    while (e < recs.size() && recs[e].image == recs[e - 1].image + 1 &&
           recs[e].shard == recs[r].shard) {
      ++e;
    }
    uint32_t shard = 0;
    while (shard_range(m.num_images, shard, m.num_shards).second <= recs[r].image) ++shard;
    relabel(job, recs[r].image, recs[e - 1].image + 1, by_shard[shard]);
    r = e;
  }
  for (const auto& [shard, records] : by_shard) {
    replace_records(cfg.store, shard, records);
    result.images += records.size();
  }
  const StoreVerification after = verify_store(cfg.store);
  FKD_CHECK(after.ok(), FormatError, "{}: still damaged after the repair: {}", cfg.store,
            after.records.empty() ? after.shards.front().problem : after.records.front().problem);
  return result;
}

}  // namespace fkd
