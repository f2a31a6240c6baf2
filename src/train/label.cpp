#include "fkd/label.h"

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <thread>

#include <fmt/core.h>
#include <fmt/ranges.h>

#include "checkpoint.h"
#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/hash.h"
#include "fkd/loader.h"
#include "fkd/models.h"
#include "fkd/progress.h"
#include "fkd/store.h"
#include "fkd/transforms.h"
#include "session.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {

/// Replays the crops a store's manifest derives (see derive_label_crop).
class LabelCropSource final : public CropSource {
 public:
  explicit LabelCropSource(const Manifest& m) : m_(m) {}
  int crops_per_image() const override { return int(m_.crops_per_image); }
  void crops(size_t index, int64_t /*epoch*/, int height, int width, CropPlan* out,
             float* /*soft*/) const override {
    for (uint32_t c = 0; c < m_.crops_per_image; ++c) {
      out[c] = derive_store_crop(m_, index, c, height, width);
    }
  }

 private:
  Manifest m_;
};

uint32_t parse_u32(const std::string& s, const std::string& what) {
  try {
    size_t pos = 0;
    const unsigned long v = std::stoul(s, &pos);
    if (pos == s.size() && v <= 0xffffffffUL) return uint32_t(v);
  } catch (const std::exception&) {
  }
  fail<ConfigError>("{}: expected a non-negative integer, got '{}'", what, s);
}

}  // namespace

std::pair<uint32_t, uint32_t> resolve_shard(const std::string& spec) {
  std::string i, n, what = "--shard";
  if (!spec.empty()) {
    const size_t slash = spec.find('/');
    FKD_CHECK(slash != std::string::npos, ConfigError, "--shard '{}': expected i/n", spec);
    i = spec.substr(0, slash);
    n = spec.substr(slash + 1);
  } else if (std::getenv("RANK") && std::getenv("WORLD_SIZE")) {
    i = std::getenv("RANK");
    n = std::getenv("WORLD_SIZE");
    what = "RANK/WORLD_SIZE";
  } else if (std::getenv("SLURM_PROCID") && std::getenv("SLURM_NTASKS")) {
    i = std::getenv("SLURM_PROCID");
    n = std::getenv("SLURM_NTASKS");
    what = "SLURM_PROCID/SLURM_NTASKS";
  } else {
    return {0, 1};
  }
  const uint32_t a = parse_u32(i, what), b = parse_u32(n, what);
  FKD_CHECK(b >= 1 && a < b, ConfigError, "{}: shard {} of {} is out of range", what, a, b);
  return {a, b};
}

LabelResult generate_labels(const LabelConfig& cfg) {
  const auto t_start = std::chrono::steady_clock::now();
  configure_threads(cfg.threads);
  const torch::Device device = parse_device(cfg.device);
  FKD_CHECK(!cfg.out.empty(), ConfigError, "--out: a store directory is required");
  FKD_CHECK(cfg.crops >= 1 && cfg.crops <= 65535, ConfigError, "--crops must be in [1, 65535]");
  FKD_CHECK(cfg.batch >= 1, ConfigError, "--batch must be at least 1");
  FKD_CHECK(cfg.temperature > 0, ConfigError, "--temperature must be positive");
  const auto [shard_index, shard_count] = resolve_shard(cfg.shard);

  // The teacher, and the input transform it expects: a checkpoint's own, else the
  // dataset's defaults (a TorchScript file does not say), options taking precedence.
  TrainConfig tc;
  std::unique_ptr<Teacher> teacher;
  bool from_checkpoint = false;
  teacher = open_teacher(cfg.teacher, device, cfg.optimize, &tc, &from_checkpoint);
  if (!from_checkpoint) {
    tc.model = model_names().front();  // only for resolve_config's checks
    tc.input_size = 0;
    tc.eval_resize = 0;
  }
  tc.data = cfg.data;
  if (cfg.channels) tc.channels = cfg.channels;
  if (cfg.input_size) tc.input_size = cfg.input_size;
  if (!cfg.mean.empty()) tc.mean = cfg.mean;
  if (!cfg.std.empty()) tc.std = cfg.std;
  tc.interp = cfg.interp;
  tc.limit_train = 0;
  DatasetOptions dopt;
  dopt.channels = tc.channels;
  dopt.limit = cfg.limit;
  auto ds = open_dataset(cfg.data, Split::kTrain, dopt);
  resolve_config(tc, *ds);
  const int num_classes = int(ds->classes().size());
  // The teacher must produce one logit per class: checked before anything is written, so a
  // refused run leaves no store behind that would block the corrected one.
  check_teacher_classes(*teacher, cfg.teacher, device, tc.channels, tc.input_size, num_classes,
                        cfg.data);

  Manifest m;
  m.num_images = ds->size();
  m.dataset_fingerprint = dataset_fingerprint(*ds);
  m.dataset = cfg.data;
  m.dataset_limit = cfg.limit;
  m.classes = ds->classes();
  m.teacher = fs::path(cfg.teacher).filename().string();
  m.teacher_hash = hash_file_hex(cfg.teacher);
  m.temperature = cfg.temperature;
  m.label_type = parse_label_type(cfg.label_type);
  m.k = (m.label_type == LabelType::kMarginalSmoothing ||
         m.label_type == LabelType::kMarginalRenorm)
            ? (cfg.topk > 0 ? cfg.topk : std::min(kDefaultTopk, num_classes))
            : 1;
  FKD_CHECK(m.k >= 1 && m.k <= num_classes, ConfigError, "--topk {} must be in [1, {}]", cfg.topk,
            num_classes);
  m.precision = parse_precision(cfg.precision);
  m.crops_per_image = uint32_t(cfg.crops);
  m.seed = cfg.seed;
  m.scale[0] = cfg.scale[0];
  m.scale[1] = cfg.scale[1];
  m.ratio[0] = cfg.ratio[0];
  m.ratio[1] = cfg.ratio[1];
  m.flip_prob = cfg.flip;
  {
    const std::string aug = cfg.aug == "auto" ? (tc.input_size <= 64 ? "crop" : "rrc") : cfg.aug;
    FKD_CHECK(aug == "rrc" || aug == "crop", ConfigError,
              "--aug must be rrc, crop or auto, got '{}'", cfg.aug);
    FKD_CHECK(cfg.padding >= 0, ConfigError, "--padding must be >= 0");
    if (aug == "crop") {
      m.crop_sampler = "random_crop";
      m.padding = cfg.padding;
    }
  }
  FKD_CHECK(m.scale[0] > 0 && m.scale[0] <= m.scale[1] && m.scale[1] <= 1, ConfigError,
            "--scale must satisfy 0 < min <= max <= 1");
  FKD_CHECK(m.ratio[0] > 0 && m.ratio[0] <= m.ratio[1], ConfigError,
            "--ratio must satisfy 0 < min <= max");
  m.input_size = tc.input_size;
  m.interpolation = tc.interp;
  m.mean = tc.mean;
  m.std = tc.std;
  m.num_shards = shard_count;

  if (!cfg.reference_crops.empty()) {
    const Manifest ref = read_manifest(cfg.reference_crops);
    FKD_CHECK(ref.dataset_fingerprint == m.dataset_fingerprint && ref.num_images == m.num_images,
              ConfigError, "--reference-crops {}: made from another dataset than {}",
              cfg.reference_crops, cfg.data);
    m.seed = ref.seed;
    m.crops_per_image = ref.crops_per_image;
    m.scale[0] = ref.scale[0];
    m.scale[1] = ref.scale[1];
    m.ratio[0] = ref.ratio[0];
    m.ratio[1] = ref.ratio[1];
    m.flip_prob = ref.flip_prob;
    m.crop_sampler = ref.crop_sampler;
    m.padding = ref.padding;
  }

  const bool have_manifest = fs::exists(fs::path(cfg.out) / "manifest.json");
  if (have_manifest) {
    const Manifest existing = read_manifest(cfg.out);
    // A store begun by an earlier fkd is finished in its own format version.
    if (existing.version < m.version) m.version = existing.version;
    const auto diffs = manifest_differences(existing, m);
    FKD_CHECK(diffs.empty(), WorkMismatch,
              "{}: holds labels made differently ({}); use the same options or a new --out",
              cfg.out, fmt::join(diffs, ", "));
    FKD_CHECK(existing.num_shards == m.num_shards, WorkMismatch,
              "{}: was labeled in {} shards, this run asks for {}", cfg.out, existing.num_shards,
              m.num_shards);
  }

  // Before a shard's first image is labeled, every image of its range must decode: the store
  // covers each image, and the dataset fingerprint covers each file, so an image found bad
  // halfway could only be fixed by changing the dataset and labeling again from the start.
  const auto [range_begin, range_end] = shard_range(m.num_images, shard_index, shard_count);
  const std::string shard_path =
      (fs::path(cfg.out) / shard_file_name(shard_index, shard_count)).string();
  if (!fs::exists(shard_path) && !fs::exists(shard_path + ".partial")) {
    Progress bar("check", range_end - range_begin, "img");
    size_t shown = 0;
    const auto bad = find_unreadable_images(
        *ds, size_t(range_begin), size_t(range_end),
        int(std::max(1u, std::thread::hardware_concurrency())), [&](size_t done) {
          bar.advance(done - shown);
          shown = done;
        });
    bar.finish();
    if (!bad.empty()) {
      std::string others;  // the second file by name, then a count
      if (bad.size() > 1) {
        others = fmt::format("; also {}/{}", ds->root(), ds->item_name(bad[1].index));
      }
      if (bad.size() > 2) others += fmt::format(" and {} more", bad.size() - 2);
      fail<DataError>("{}: {} of the {} images to label cannot be read ({}{}); fix or remove them, "
                      "then run fkd label again (this run labeled nothing)",
                      cfg.data, bad.size(), range_end - range_begin, bad.front().message, others);
    }
  }

  fs::create_directories(cfg.out);
  if (!have_manifest) write_manifest(cfg.out, m);

  ShardWriter writer(cfg.out, m, shard_index);
  LabelResult result;
  result.store = cfg.out;
  if (!writer.finished()) {
    const uint64_t first = writer.next_image();
    const int n_crops = int(m.crops_per_image);
    if (first > range_begin) {
      fmt::print("resuming shard {}/{} of {} at image {} of [{}, {})\n", shard_index, shard_count,
                 cfg.out, first, range_begin, range_end);
    }
    TrainTransform tt = train_transform(tc);
    tt.size = tc.input_size;
    LoaderOptions lopt;
    lopt.shuffle = false;
    lopt.workers = cfg.workers;
    lopt.prefetch = 2;
    lopt.strict = true;  // a store covers every image: a bad one stops the run, named
    lopt.range_begin = first;
    lopt.range_end = range_end;
    // Images per loader batch: about one teacher batch of crops.
    lopt.batch_size = size_t(n_crops) * std::max<size_t>(1, cfg.batch / size_t(n_crops));
    Loader loader(ds, tt, std::make_shared<LabelCropSource>(m), lopt);
    loader.start_epoch(0);

    // Rows stream through fixed-size teacher batches (zero-padded where a run starts or
    // ends), and every crop sits at the batch position it has in one uninterrupted,
    // unsharded run: (image * crops + crop) mod batch. Kernels may round a row differently
    // by its position (vector tails), so resumed and sharded runs write bit-identical labels
    // only this way.
    const int64_t B = int64_t(cfg.batch);
    const int C = tc.channels, S = tc.input_size;
    torch::Tensor in_buf = torch::empty({B, C, S, S}, torch::kFloat32);
    int64_t in_fill = int64_t((first * uint64_t(n_crops)) % uint64_t(B));
    int64_t skip = in_fill;  // leading rows of the next batch that hold no crop
    if (skip > 0) in_buf.narrow(0, 0, skip).zero_();
    std::vector<float> probs;  // [rows, num_classes] not yet written
    struct Pending {
      uint64_t image;
      uint32_t height, width;
    };
    std::deque<Pending> pending;  // images whose rows are in flight, in order
    const int n_idx = stored_indices(m.label_type, m.k);
    const int n_val = stored_values(m.label_type, m.k, num_classes);
    ImageLabels labels;
    Progress bar(fmt::format("label {}/{}", shard_index, shard_count), range_end - first, "img");

    auto run_teacher = [&](int64_t valid) {
      if (valid < B) in_buf.narrow(0, valid, B - valid).zero_();
      const auto t0 = std::chrono::steady_clock::now();
      auto x = in_buf.to(device);
      auto p = torch::softmax(teacher->logits(x).to(torch::kFloat32) / cfg.temperature, 1)
                   .narrow(0, skip, valid - skip)
                   .to(torch::kCPU)
                   .contiguous();
      result.teacher_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      probs.insert(probs.end(), p.data_ptr<float>(),
                   p.data_ptr<float>() + (valid - skip) * num_classes);
      skip = 0;
      // Every image whose crops are all done becomes a record.
      const size_t per_image = size_t(n_crops) * size_t(num_classes);
      size_t consumed = 0;
      while (!pending.empty() && probs.size() - consumed >= per_image) {
        const Pending img = pending.front();
        pending.pop_front();
        labels.height = img.height;
        labels.width = img.width;
        labels.num_crops = uint32_t(n_crops);
        labels.crop_hash = label_crop_hash(m, img.image, img.height, img.width);
        labels.indices.assign(size_t(n_crops) * size_t(n_idx), 0);
        labels.values.assign(size_t(n_crops) * size_t(n_val), 0.f);
        for (int c = 0; c < n_crops; ++c) {
          quantize_crop(probs.data() + consumed + size_t(c) * size_t(num_classes), num_classes,
                        m.label_type, m.k, labels.indices.data() + size_t(c) * size_t(n_idx),
                        labels.values.data() + size_t(c) * size_t(n_val));
        }
        writer.append(img.image, labels);
        consumed += per_image;
        ++result.images;
        result.crops += uint64_t(n_crops);
        bar.advance(1, fmt::format("{:.0f} crops/s", double(result.crops) / bar.elapsed_seconds()));
      }
      probs.erase(probs.begin(), probs.begin() + std::ptrdiff_t(consumed));
    };

    Batch b;
    while (loader.next(b)) {
      const auto x = batch_images(b, torch::kCPU, /*channels_last=*/false);
      for (int r = 0; r < b.n; r += n_crops) {
        pending.push_back({b.sample[size_t(r)], uint32_t(b.heights[size_t(r)]),
                           uint32_t(b.widths[size_t(r)])});
      }
      int64_t row = 0;
      while (row < b.n) {
        const int64_t take = std::min<int64_t>(B - in_fill, b.n - row);
        in_buf.narrow(0, in_fill, take).copy_(x.narrow(0, row, take));
        in_fill += take;
        row += take;
        if (in_fill == B) {
          run_teacher(B);
          in_fill = 0;
        }
      }
    }
    if (in_fill > skip) run_teacher(in_fill);
    bar.finish();
    FKD_CHECK(pending.empty(), Error, "internal: {} images left unlabeled", pending.size());
    writer.finish();
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  result.complete = true;
  for (uint32_t s = 0; s < shard_count; ++s) {
    result.complete = result.complete &&
                      fs::exists(fs::path(cfg.out) / shard_file_name(s, shard_count));
  }
  return result;
}

void ensemble_stores(const std::vector<std::string>& stores, const std::string& out) {
  FKD_CHECK(stores.size() >= 2, ConfigError, "ensemble needs at least two stores");
  std::vector<std::unique_ptr<StoreReader>> readers;
  for (const auto& s : stores) readers.push_back(std::make_unique<StoreReader>(s));
  const Manifest& first = readers[0]->manifest();
  for (size_t i = 1; i < readers.size(); ++i) {
    const Manifest& o = readers[i]->manifest();
    FKD_CHECK(o.dataset_fingerprint == first.dataset_fingerprint && o.seed == first.seed &&
                  o.crops_per_image == first.crops_per_image && o.scale[0] == first.scale[0] &&
                  o.scale[1] == first.scale[1] && o.ratio[0] == first.ratio[0] &&
                  o.ratio[1] == first.ratio[1] && o.flip_prob == first.flip_prob &&
                  o.classes == first.classes,
              ConfigError,
              "{} and {} were not labeled on the same crops of the same dataset (label one "
              "with --reference-crops of the other)",
              stores[0], stores[i]);
  }
  Manifest m = first;
  m.version = Manifest{}.version;  // a new store: the current format
  m.num_shards = 1;
  std::string names, hashes;
  for (const auto& r : readers) {
    names += (names.empty() ? "" : "+") + r->manifest().teacher;
    hashes += r->manifest().teacher_hash;
  }
  m.teacher = "ensemble(" + names + ")";
  m.teacher_hash = hashes;  // the members' identities, in order
  fs::create_directories(out);
  FKD_CHECK(!fs::exists(fs::path(out) / "manifest.json"), ConfigError,
            "{}: already holds a store", out);
  write_manifest(out, m);
  ShardWriter writer(out, m, 0);
  const int C = int(m.classes.size());
  const int n_idx = stored_indices(m.label_type, m.k), n_val = stored_values(m.label_type, m.k, C);
  std::vector<float> dense(static_cast<size_t>(C)), sum(static_cast<size_t>(C));
  ImageLabels in, result;
  Progress bar("ensemble", m.num_images, "img");
  for (uint64_t i = 0; i < m.num_images; ++i) {
    std::vector<ImageLabels> members(readers.size());
    for (size_t r = 0; r < readers.size(); ++r) readers[r]->read(i, members[r]);
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
}

}  // namespace fkd
