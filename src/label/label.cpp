// `fkd label`: a teacher labels derived crops of every training image once, into a label
// store. generate_labels checks everything first (options, teacher, existing store, every
// image of the shard), then streams the shard's crops through the teacher.
#include "fkd/label.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <thread>

#include <fmt/core.h>
#include <fmt/ranges.h>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/hash.h"
#include "fkd/launch.h"
#include "fkd/loader.h"
#include "fkd/models.h"
#include "fkd/progress.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "fkd/transforms.h"
#include "label/labeler.h"
#include "label/teacher_batcher.h"
#include "models/autocast.h"
#include "train/device.h"
#include "train/input.h"
#include "train/teachers.h"

namespace fs = std::filesystem;

namespace fkd {

namespace {

/// The record of image `index` in a store of explicit crops, checked against the size the
/// image decodes to (the boxes are pixel boxes of that size).
void read_reference(const StoreReader& ref, const std::string& name, uint64_t index, int height,
                    int width, ImageLabels& rec) {
  ref.read(index, rec);
  FKD_CHECK(rec.height == uint32_t(height) && rec.width == uint32_t(width), DataError,
            "--reference-crops {}: image {} is {}x{} but the store's boxes are for {}x{}; use the "
            "dataset the store was made from",
            name, index, height, width, rec.height, rec.width);
}

/// Every crop of a store's manifest: derived, or (explicit crops) those of the reference
/// store given by --reference-crops.
class LabelCropSource final : public CropSource {
 public:
  LabelCropSource(const Manifest& m, std::shared_ptr<const StoreReader> ref, std::string ref_name)
      : m_(m), ref_(std::move(ref)), ref_name_(std::move(ref_name)) {}
  int crops_per_image() const override { return int(m_.crops_per_image); }
  void crops(size_t index, int64_t /*epoch*/, int height, int width, CropPlan* out,
             float* /*soft*/) const override {
    if (ref_) {
      thread_local ImageLabels rec;
      read_reference(*ref_, ref_name_, index, height, width, rec);
      for (uint32_t c = 0; c < m_.crops_per_image; ++c) out[c] = store_crop(m_, rec, index, c);
      return;
    }
    for (uint32_t c = 0; c < m_.crops_per_image; ++c) {
      out[c] = derive_label_crop(m_.crop, m_.seed, index, c, height, width);
    }
  }

 private:
  Manifest m_;
  std::shared_ptr<const StoreReader> ref_;
  std::string ref_name_;
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

InputOverrides input_overrides(const LabelConfig& cfg) {
  InputOverrides o;
  o.channels = cfg.channels;
  o.input_size = cfg.crop.size;
  o.mean = cfg.mean;
  o.std = cfg.std;
  o.interp = cfg.interp;
  return o;
}

/// What the store will hold: the dataset, the teacher, the quantization and the crops.
Manifest build_manifest(const LabelConfig& cfg, const Dataset& ds, const TrainConfig& input,
                        uint32_t shard_count) {
  const int num_classes = int(ds.classes().size());
  Manifest m;
  m.num_images = ds.size();
  m.dataset_fingerprint = dataset_fingerprint(ds);
  m.dataset = cfg.data;
  m.dataset_limit = cfg.limit;
  m.classes = ds.classes();
  m.teacher = fs::path(cfg.teacher).filename().string();
  m.teacher_hash = hash_file_hex(cfg.teacher);
  m.temperature = cfg.temperature;
  m.label_type = parse_label_type(cfg.label_type);
  const bool marginal =
      m.label_type == LabelType::kMarginalSmoothing || m.label_type == LabelType::kMarginalRenorm;
  m.k = marginal ? (cfg.topk > 0 ? cfg.topk : std::min(kDefaultTopk, num_classes)) : 1;
  FKD_CHECK(m.k <= num_classes, ConfigError, "--topk {}: {} has only {} classes", m.k, cfg.data,
            num_classes);
  m.precision = parse_precision(cfg.precision);
  m.crops_per_image = uint32_t(cfg.crops);
  m.seed = cfg.seed;
  m.crop = cfg.crop;
  m.crop.size = input.crop.size;
  // Auto: the crops a checkpoint teacher trained on, else those of the data's recipe.
  if (m.crop.kind == CropKind::kAuto) {
    m.crop.kind = input.crop.kind == CropKind::kNone ? CropKind::kRandomResized : input.crop.kind;
  }
  if (m.crop.kind == CropKind::kRandomResized) m.crop.padding = 0;  // not part of its crops
  m.interpolation = input.interp;
  m.mean = input.mean;
  m.std = input.std;
  m.num_shards = shard_count;
  if (!cfg.reference_crops.empty()) {
    // Exactly the reference's crops: its sampler (input size included: RandomCrop boxes
    // depend on it), seed and count, on the same dataset.
    const Manifest ref = read_manifest(cfg.reference_crops);
    FKD_CHECK(ref.dataset_fingerprint == m.dataset_fingerprint && ref.num_images == m.num_images,
              ConfigError, "--reference-crops {}: made from another dataset than {}",
              cfg.reference_crops, cfg.data);
    m.seed = ref.seed;
    m.crops_per_image = ref.crops_per_image;
    m.crop = ref.crop;
    m.crop.size = input.crop.size;    // this teacher's input (RandomResizedCrop boxes ignore it)
    m.crop_origin = ref.crop_origin;  // explicit: the reference's boxes, copied record by record
    FKD_CHECK(ref.crop_origin == CropOrigin::kExplicit || ref.crop.kind != CropKind::kPadded ||
                  ref.crop.size == input.crop.size,
              ConfigError,
              "--reference-crops {}: its RandomCrop boxes are {} px but this teacher takes {} "
              "px inputs (pass --input-size {})",
              cfg.reference_crops, ref.crop.size, input.crop.size, ref.crop.size);
  }
  return m;
}

/// A store already in cfg.out must have been made the same way (it is then resumed); one
/// begun by an earlier fkd is finished in its own format version.
void check_existing_store(const std::string& out, Manifest& m) {
  const Manifest existing = read_manifest(out);
  FKD_CHECK(existing.crop_origin == m.crop_origin, WorkMismatch,
            "{}: holds labels of {} crops, this run labels {} ones; {}", out,
            crop_origin_name(existing.crop_origin), crop_origin_name(m.crop_origin),
            existing.crop_origin == CropOrigin::kExplicit
                ? "label into it only with --reference-crops of the store whose boxes it holds"
                : "use the same options or a new --out");
  if (existing.version < m.version) m.version = existing.version;
  const auto diffs = manifest_differences(existing, m);
  FKD_CHECK(diffs.empty(), WorkMismatch,
            "{}: holds labels made differently ({}); use the same options or a new --out", out,
            fmt::join(diffs, ", "));
  FKD_CHECK(existing.num_shards == m.num_shards, WorkMismatch,
            "{}: was labeled in {} shards, this run asks for {}", out, existing.num_shards,
            m.num_shards);
}

/// Before a shard's first image is labeled, every image of its range must decode: the store
/// covers each image, and the dataset fingerprint covers each file, so an image found bad
/// halfway could only be fixed by changing the dataset and labeling again from the start.
void check_images_readable(const Dataset& ds, const std::string& data, uint64_t begin,
                           uint64_t end) {
  Progress bar("check", end - begin, "img");
  size_t shown = 0;
  const auto bad = find_unreadable_images(ds, size_t(begin), size_t(end),
                                          int(std::max(1u, std::thread::hardware_concurrency())),
                                          [&](size_t done) {
                                            bar.advance(done - shown);
                                            shown = done;
                                          });
  bar.finish();
  if (bad.empty()) return;
  std::string others;  // the second file by name, then a count
  if (bad.size() > 1) others = fmt::format("; also {}/{}", ds.root(), ds.item_name(bad[1].index));
  if (bad.size() > 2) others += fmt::format(" and {} more", bad.size() - 2);
  fail<DataError>(
      "{}: {} of the {} images to label cannot be read ({}{}); fix or remove them, "
      "then run fkd label again (this run labeled nothing)",
      data, bad.size(), end - begin, bad.front().message, others);
}

}  // namespace

void validate_label_config(const LabelConfig& cfg) {
  FKD_CHECK(!cfg.teacher.empty(), ConfigError, "label: --teacher is required");
  FKD_CHECK(!cfg.out.empty(), ConfigError, "label: --out (the store directory) is required");
  FKD_CHECK(cfg.crops >= 1 && uint64_t(cfg.crops) <= kMaxCropsPerImage, ConfigError,
            "--crops {}: expected 1 to {}", cfg.crops, kMaxCropsPerImage);
  FKD_CHECK(cfg.batch >= 1, ConfigError, "--batch {}: expected at least 1", cfg.batch);
  parse_amp(cfg.amp);  // throws naming the choices
  FKD_CHECK(cfg.topk >= 0, ConfigError, "--topk {}: expected at least 1 (0 = the label type's k)",
            cfg.topk);
  FKD_CHECK(cfg.temperature > 0, ConfigError, "--temperature {}: expected a positive value",
            cfg.temperature);
  FKD_CHECK(cfg.channels == 0 || cfg.channels == 1 || cfg.channels == 3, ConfigError,
            "--channels {}: expected 1 or 3 (0 = auto)", cfg.channels);
  FKD_CHECK(cfg.threads >= 0, ConfigError, "--threads {}: expected >= 0 (0 = all cores)",
            cfg.threads);
  FKD_CHECK(cfg.workers >= 0, ConfigError, "--workers {}: expected >= 0", cfg.workers);
  FKD_CHECK(cfg.crop.kind != CropKind::kNone, ConfigError,
            "--aug none: labels need random crops (rrc or crop)");
  CropSampler sized = cfg.crop;
  if (sized.size == 0) sized.size = 224;  // the size is checked once it is known
  const std::string crop_problem = crop_sampler_problem(sized);
  FKD_CHECK(crop_problem.empty(), ConfigError, "{}", crop_problem);
  parse_label_type(cfg.label_type);
  parse_precision(cfg.precision);
  parse_interp(cfg.interp);
  resolve_shard(cfg.shard);
}

std::pair<uint32_t, uint32_t> resolve_shard(const std::string& spec) {
  std::string i, n, what = "--shard";
  if (!spec.empty()) {
    const size_t slash = spec.find('/');
    FKD_CHECK(slash != std::string::npos, ConfigError, "--shard '{}': expected i/n", spec);
    i = spec.substr(0, slash);
    n = spec.substr(slash + 1);
  } else {
    // The launcher's variables, read by the parser distributed training uses.
    const JobRank j = job_rank_from_environment();
    return {uint32_t(j.rank), uint32_t(j.world)};
  }
  const uint32_t a = parse_u32(i, what), b = parse_u32(n, what);
  FKD_CHECK(b >= 1 && a < b, ConfigError, "{}: shard {} of {} is out of range", what, a, b);
  return {a, b};
}

LabelStats label_images(const LabelJob& job, uint64_t begin, uint64_t end, const std::string& title,
                        const std::function<void(uint64_t image, const ImageLabels&)>& out) {
  const Manifest& m = job.m;
  const int n_crops = int(m.crops_per_image);
  const int num_classes = int(m.classes.size());
  LoaderOptions lopt;
  lopt.shuffle = false;
  lopt.workers = job.cfg.workers;
  lopt.prefetch = 2;
  lopt.strict = true;  // a store covers every image: a bad one stops the run, named
  lopt.range_begin = begin;
  lopt.range_end = end;
  // Images per loader batch: about one teacher batch of crops.
  lopt.batch_size = size_t(n_crops) * std::max<size_t>(1, job.cfg.batch / size_t(n_crops));
  // Explicit crops come from the reference store, read again where each record is written.
  std::shared_ptr<const StoreReader> ref;
  if (m.crop_origin == CropOrigin::kExplicit) {
    FKD_CHECK(!job.cfg.reference_crops.empty(), ConfigError,
              "a store of explicit crops is labeled only on the boxes of --reference-crops STORE");
    ref = std::make_shared<StoreReader>(job.cfg.reference_crops);
  }
  Loader loader(job.ds, train_transform(job.input),
                std::make_shared<LabelCropSource>(m, ref, job.cfg.reference_crops), lopt);
  loader.start_epoch(0);

  LabelStats st;
  const int n_idx = stored_indices(m.label_type, m.k);
  const int n_val = stored_values(m.label_type, m.k, num_classes);
  ImageLabels labels;
  Progress bar(title, end - begin, "img");
  FKD_CHECK(job.teacher.amp() == m.teacher_amp, ConfigError,
            "internal: the teacher runs in {} but the store records {}",
            amp_name(job.teacher.amp()), amp_name(m.teacher_amp));
  auto forward = [&](const torch::Tensor& x) {
    const auto t0 = std::chrono::steady_clock::now();
    // The teacher runs in the store's precision, on the layout that suits it.
    const torch::Tensor logits = job.teacher.logits(x);
    // The softmax and the quantization in float32, whatever the teacher computed in.
    torch::Tensor p = torch::softmax(logits.to(torch::kFloat32) / job.cfg.temperature, 1);
    p = p.to(torch::kCPU);
    st.teacher_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return p;
  };
  auto emit = [&](uint64_t image, uint32_t height, uint32_t width, const float* probs) {
    labels.height = height;
    labels.width = width;
    labels.num_crops = uint32_t(n_crops);
    if (ref) {
      thread_local ImageLabels rec;
      read_reference(*ref, job.cfg.reference_crops, image, int(height), int(width), rec);
      labels.boxes = rec.boxes;  // the writer stores them and their hash
    } else {
      labels.crop_hash = label_crop_hash(m, image, height, width);
    }
    labels.indices.assign(size_t(n_crops) * size_t(n_idx), 0);
    labels.values.assign(size_t(n_crops) * size_t(n_val), 0.f);
    for (int c = 0; c < n_crops; ++c) {
      quantize_crop(probs + size_t(c) * size_t(num_classes), num_classes, m.label_type, m.k,
                    labels.indices.data() + size_t(c) * size_t(n_idx),
                    labels.values.data() + size_t(c) * size_t(n_val));
    }
    out(image, labels);
    ++st.images;
    st.crops += uint64_t(n_crops);
    bar.advance(1, fmt::format("{:.0f} crops/s", double(st.crops) / bar.elapsed_seconds()));
  };
  TeacherBatcher batcher(int64_t(job.cfg.batch), job.input.channels, job.input.crop.size, n_crops,
                         num_classes, begin, forward, emit);
  Batch b;
  std::vector<uint64_t> images;
  std::vector<uint32_t> heights, widths;
  while (loader.next(b)) {
    images.clear();
    heights.clear();
    widths.clear();
    for (int r = 0; r < b.n; r += n_crops) {
      images.push_back(b.sample[size_t(r)]);
      heights.push_back(uint32_t(b.heights[size_t(r)]));
      widths.push_back(uint32_t(b.widths[size_t(r)]));
    }
    batcher.add(batch_images(b, torch::kCPU, /*channels_last=*/false), images, heights, widths);
  }
  batcher.finish();
  bar.finish();
  return st;
}

AmpMode label_teacher_amp(AmpMode requested, const torch::Device& device,
                          const std::optional<Manifest>& existing) {
  if (requested != AmpMode::kAuto) return resolve_amp(requested, device);
  if (existing) return existing->teacher_amp;  // resuming or adding a shard: as it was made
  return native_bf16(device) ? AmpMode::kBf16 : AmpMode::kOff;
}

LabelResult generate_labels(const LabelConfig& cfg) {
  validate_label_config(cfg);
  DatasetOptions dopt;
  dopt.channels = cfg.channels;
  dopt.limit = cfg.limit;
  return generate_labels(cfg, open_dataset(cfg.data, Split::kTrain, dopt));
}

LabelResult generate_labels(const LabelConfig& cfg, std::shared_ptr<const Dataset> ds) {
  const auto t_start = std::chrono::steady_clock::now();
  validate_label_config(cfg);
  configure_threads(cfg.threads);
  const torch::Device device = parse_device(cfg.device);
  const auto [shard_index, shard_count] = resolve_shard(cfg.shard);

  // The teacher, and the input it takes: a checkpoint's own transform, else the dataset's
  // defaults, options taking precedence. Checked before anything is written, so a refused
  // run leaves no store behind that would block the corrected one.
  const bool have_manifest = fs::exists(fs::path(cfg.out) / "manifest.json");
  const std::optional<Manifest> existing =
      have_manifest ? std::optional<Manifest>(read_manifest(cfg.out)) : std::nullopt;
  const AmpMode amp = label_teacher_amp(parse_amp(cfg.amp), device, existing);
  OpenedTeacher teacher = open_teacher(cfg.teacher, device, {cfg.optimize, amp});
  std::vector<std::string> notes;
  const TrainConfig input = model_input(teacher.recorded ? &*teacher.recorded : nullptr,
                                        input_overrides(cfg), cfg.data, *ds, &notes);
  for (const std::string& n : notes) fmt::print("{}\n", n);
  const int num_classes = int(ds->classes().size());
  check_teacher_classes(*teacher.net, cfg.teacher, device, input.channels, input.crop.size,
                        num_classes, cfg.data);

  Manifest m = build_manifest(cfg, *ds, input, shard_count);
  m.teacher_amp = amp;
  if (have_manifest) check_existing_store(cfg.out, m);
  const auto [range_begin, range_end] = shard_range(m.num_images, shard_index, shard_count);
  const std::string shard_path =
      (fs::path(cfg.out) / shard_file_name(shard_index, shard_count)).string();
  if (!fs::exists(shard_path) && !fs::exists(shard_path + ".partial")) {
    check_images_readable(*ds, cfg.data, range_begin, range_end);
  }
  make_directories(cfg.out, "--out");
  if (!have_manifest) write_manifest(cfg.out, m);

  ShardWriter writer(cfg.out, m, shard_index);
  LabelResult result;
  result.store = cfg.out;
  result.teacher_amp = amp;
  if (!writer.finished()) {
    const uint64_t first = writer.next_image();
    if (first > range_begin) {
      fmt::print("resuming shard {}/{} of {} at image {} of [{}, {})\n", shard_index, shard_count,
                 cfg.out, first, range_begin, range_end);
    }
    const LabelJob job{cfg, ds, m, input, *teacher.net, device};
    const LabelStats st = label_images(
        job, first, range_end, fmt::format("label shard {}/{}", shard_index, shard_count),
        [&](uint64_t image, const ImageLabels& labels) { writer.append(image, labels); });
    writer.finish();
    result.images = st.images;
    result.crops = st.crops;
    result.teacher_seconds = st.teacher_seconds;
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  result.complete = true;
  for (uint32_t s = 0; s < shard_count; ++s) {
    result.complete =
        result.complete && fs::exists(fs::path(cfg.out) / shard_file_name(s, shard_count));
  }
  return result;
}

}  // namespace fkd
