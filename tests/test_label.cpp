// Soft-label generation: teacher agreement with PyTorch, resume after kill -9, shards,
// merge, reference crops, ensembles, and refusals.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/image.h"
#include "fkd/inspect.h"
#include "fkd/label.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "fkd/transforms.h"
#include "label/teacher_batcher.h"
#include "testutil.h"

namespace fs = std::filesystem;
using namespace fkd;
using fkd::test::TempDir;

namespace {

/// A 40-image, 10-class IDX dataset and a traced teacher for it.
struct Fixture {
  TempDir dir;
  std::string data, teacher;
  Fixture() {
    data = dir.file("data");
    fs::create_directories(data);
    fkd::test::write_idx_split(data, "train", 40, 28, 28, 10);
    fkd::test::write_idx_split(data, "t10k", 10, 28, 28, 10);
    teacher = dir.file("teacher.pt");
    const auto r = fkd::test::run_python("label_teacher.py", {"make", teacher, "1", "10"});
    if (r.status != 0) throw std::runtime_error("cannot make the teacher");
  }
  LabelConfig config(const std::string& out) const {
    LabelConfig c;
    c.teacher = teacher;
    c.data = data;
    c.out = out;
    c.crops = 12;
    c.batch = 32;
    c.threads = 1;
    c.workers = 2;
    c.seed = 5;
    return c;
  }
};

/// The defaults of fkd label with one teacher thread and `crops` crops per image.
LabelConfig one_thread_config(const std::string& teacher, const std::string& data,
                              const std::string& out, int crops) {
  LabelConfig c;
  c.teacher = teacher;
  c.data = data;
  c.out = out;
  c.crops = crops;
  c.threads = 1;
  return c;
}

std::vector<ImageLabels> all_records(const std::string& store) {
  StoreReader r(store);
  std::vector<ImageLabels> out(r.num_images());
  for (uint64_t i = 0; i < r.num_images(); ++i) r.read(i, out[i]);
  return out;
}

void expect_same_records(const std::string& a, const std::string& b) {
  const auto ra = all_records(a), rb = all_records(b);
  ASSERT_EQ(ra.size(), rb.size());
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(ra[i].height, rb[i].height) << i;
    EXPECT_EQ(ra[i].crop_hash, rb[i].crop_hash) << i;
    EXPECT_EQ(ra[i].indices, rb[i].indices) << "image " << i;
    EXPECT_EQ(ra[i].values, rb[i].values) << "image " << i;
  }
}

}  // namespace

/// Full fp32 labels of the fixture's teacher with --amp `amp` against PyTorch's softmax of
/// the same teacher on the same crop pixels, in float32 or under torch.autocast (bf16);
/// returns the largest difference of a probability.
double full_labels_against_pytorch(const std::string& amp) {
  Fixture fx;
  LabelConfig c = fx.config(fx.dir.file("full"));
  c.label_type = "full";
  c.precision = "fp32";
  c.temperature = 2.0f;
  c.amp = amp;
  const LabelResult res = generate_labels(c);
  EXPECT_TRUE(res.complete);
  EXPECT_EQ(res.images, 40u);
  EXPECT_EQ(res.crops, 480u);
  EXPECT_EQ(amp_name(res.teacher_amp), amp);

  // The oracle: PyTorch's softmax of the same teacher on the same crop pixels.
  StoreReader store(c.out);
  const Manifest& m = store.manifest();
  auto ds = open_dataset(fx.data, Split::kTrain);
  const int n_images = 5, S = m.crop.size;
  EXPECT_EQ(amp_name(m.teacher_amp), amp);
  EXPECT_EQ(S, 28);
  torch::Tensor x = torch::empty({n_images * c.crops, 1, S, S});
  std::vector<uint8_t> hwc(size_t(S) * S), scratch;
  Normalize norm;
  norm.mean[0] = m.mean[0];
  norm.std[0] = m.std[0];
  for (int i = 0; i < n_images; ++i) {
    const Image im = ds->load(size_t(i));
    for (int k = 0; k < c.crops; ++k) {
      const CropPlan p =
          derive_label_crop(m.crop, m.seed, uint64_t(i), uint32_t(k), im.height, im.width);
      resized_crop(im, p.box, p.flip, S, S, Interp::kBilinear, hwc.data(), scratch);
      to_float_chw(hwc.data(), S, S, 1, norm, x[i * c.crops + k].data_ptr<float>());
    }
  }
  const std::vector<char> bytes = torch::pickle_save(x);
  fkd::test::write_file(fx.dir.file("x.pt"), std::string(bytes.begin(), bytes.end()));
  const auto py = fkd::test::run_python(
      "label_teacher.py",
      {"softmax", fx.teacher, fx.dir.file("x.pt"), fx.dir.file("p.pt"), "2.0", amp});
  EXPECT_EQ(py.status, 0);
  const std::string pbytes = fkd::test::read_file(fx.dir.file("p.pt"));
  const torch::Tensor p =
      torch::pickle_load(std::vector<char>(pbytes.begin(), pbytes.end())).toTensor();
  EXPECT_EQ(p.size(1), 10);
  double max_diff = 0;
  ImageLabels l;
  for (int i = 0; i < n_images; ++i) {
    store.read(uint64_t(i), l);
    for (int k = 0; k < c.crops; ++k) {
      for (int cls = 0; cls < 10; ++cls) {
        const double d = std::fabs(double(l.values[size_t(k) * 10 + size_t(cls)]) -
                                   p[i * c.crops + k][cls].item<double>());
        max_diff = std::max(max_diff, d);
      }
    }
  }
  std::cout << "[ info ] --amp " << amp << ": max |p - PyTorch's| " << max_diff << "\n";
  return max_diff;
}

TEST(Label, FullLabelsMatchPyTorchSoftmax) {
  // Same network, same pixels; only the order of float operations differs (oneDNN,
  // frozen graph): measured ~1e-7.
  EXPECT_LT(full_labels_against_pytorch("off"), 1e-5);
}

TEST(Label, Bf16LabelsMatchPyTorchAutocast) {
  // The same bfloat16 computation on both sides (TorchScript's autocast pass on a frozen or
  // a loaded graph): measured equal. Float32 labels differ from them by about 3e-4 here.
  EXPECT_LT(full_labels_against_pytorch("bf16"), 5e-5);
}

TEST(Label, MarginalSmoothingIsQuantizedSoftmax) {
  Fixture fx;
  LabelConfig full = fx.config(fx.dir.file("full"));
  full.label_type = "full";
  full.precision = "fp32";
  generate_labels(full);
  LabelConfig ms = fx.config(fx.dir.file("ms"));
  ms.label_type = "marginal_smoothing";
  ms.topk = 3;
  generate_labels(ms);
  StoreReader a(full.out), b(ms.out);
  ImageLabels la, lb;
  std::vector<float> dense_b(10);
  for (uint64_t i = 0; i < a.num_images(); ++i) {
    a.read(i, la);
    b.read(i, lb);
    for (int k = 0; k < ms.crops; ++k) {
      int32_t idx[3];
      float val[3];
      quantize_crop(la.values.data() + size_t(k) * 10, 10, LabelType::kMarginalSmoothing, 3, idx,
                    val);
      for (int t = 0; t < 3; ++t) {
        EXPECT_EQ(lb.indices[size_t(k) * 3 + size_t(t)], idx[t]);
        EXPECT_EQ(lb.values[size_t(k) * 3 + size_t(t)],
                  round_to_precision(val[t], Precision::kFp16));
      }
    }
  }
}

TEST(Label, ShardsAndMergeEqualOneRun) {
  Fixture fx;
  LabelConfig one = fx.config(fx.dir.file("one"));
  generate_labels(one);
  LabelConfig part = fx.config(fx.dir.file("sharded"));
  part.shard = "1/3";
  EXPECT_FALSE(generate_labels(part).complete);
  part.shard = "0/3";
  generate_labels(part);
  part.shard = "2/3";
  part.workers = 1;  // execution may differ between processes
  EXPECT_TRUE(generate_labels(part).complete);
  expect_same_records(one.out, part.out);
  merge_store(part.out, fx.dir.file("merged"));
  expect_same_records(one.out, fx.dir.file("merged"));
  EXPECT_EQ(fkd::test::read_file(fx.dir.file("merged/") + shard_file_name(0, 1)),
            fkd::test::read_file(one.out + "/" + shard_file_name(0, 1)));
}

TEST(Label, ShardsAreBitIdenticalAtFp32) {
  // fp32 `full` labels keep every bit of the teacher's softmax: shards that start mid-batch
  // (13 x 12 and 26 x 12 rows are not multiples of 32) must still compute each crop at the
  // batch position it has in one run.
  Fixture fx;
  LabelConfig one = fx.config(fx.dir.file("one"));
  one.label_type = "full";
  one.precision = "fp32";
  generate_labels(one);
  LabelConfig part = one;
  part.out = fx.dir.file("sharded");
  for (const char* s : {"0/3", "1/3", "2/3"}) {
    part.shard = s;
    generate_labels(part);
  }
  expect_same_records(one.out, part.out);
}

/// Sets (or, with nullptr, unsets) environment variables for a scope; restores them after.
class ScopedEnv {
 public:
  ScopedEnv(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const auto& [name, value] : vars) {
      const char* old = std::getenv(name);
      saved_.push_back({name, old ? std::optional<std::string>(old) : std::nullopt});
      value ? setenv(name, value, 1) : unsetenv(name);
    }
  }
  ~ScopedEnv() {
    for (const auto& [name, old] : saved_) old ? setenv(name, old->c_str(), 1) : unsetenv(name);
  }

 private:
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

TEST(Label, ShardFromEnvironment) {
  // Whatever launched the test (Slurm sets SLURM_*, torchrun RANK/WORLD_SIZE) is set aside.
  const ScopedEnv clean({{"RANK", nullptr},
                         {"WORLD_SIZE", nullptr},
                         {"SLURM_PROCID", nullptr},
                         {"SLURM_NTASKS", nullptr}});
  {
    const ScopedEnv slurm({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "3"}});
    EXPECT_EQ(resolve_shard(""), (std::pair<uint32_t, uint32_t>{1, 3}));
  }
  setenv("RANK", "2", 1);
  setenv("WORLD_SIZE", "4", 1);
  EXPECT_EQ(resolve_shard(""), (std::pair<uint32_t, uint32_t>{2, 4}));
  EXPECT_EQ(resolve_shard("0/1"), (std::pair<uint32_t, uint32_t>{0, 1}));
  setenv("RANK", "4", 1);
  EXPECT_THROW(resolve_shard(""), ConfigError);
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
  EXPECT_EQ(resolve_shard(""), (std::pair<uint32_t, uint32_t>{0, 1}));
  EXPECT_THROW(resolve_shard("3"), ConfigError);
  // The same parser as fkd train's: RANK without WORLD_SIZE is an error (it once labeled
  // every image, or took Slurm's variables), and an empty variable counts as unset.
  {
    const ScopedEnv half({{"RANK", "1"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}});
    EXPECT_EQ(fkd::test::error_message<ConfigError>([] { resolve_shard(""); }),
              "RANK=1 is set but WORLD_SIZE is not (torchrun sets both)");
  }
  {
    const ScopedEnv empty({{"RANK", ""}, {"WORLD_SIZE", "4"}});
    EXPECT_EQ(fkd::test::error_message<ConfigError>([] { resolve_shard(""); }),
              "WORLD_SIZE=4 is set but RANK is not (torchrun sets both)");
  }
  {
    const ScopedEnv cleared({{"RANK", ""}, {"WORLD_SIZE", ""}});
    EXPECT_EQ(resolve_shard(""), (std::pair<uint32_t, uint32_t>{0, 1}));
  }
}

TEST(Label, KilledAndResumedEqualsUninterrupted) {
  Fixture fx;
  fkd::test::write_idx_split(fx.data, "train", 400, 28, 28, 10);  // a longer run to interrupt
  LabelConfig ref = fx.config(fx.dir.file("ref"));
  ref.crops = 16;
  generate_labels(ref);

  const std::string out = fx.dir.file("killed");
  const std::string cmd = std::string(FKD_BINARY_DIR) + "/fkd";
  const std::vector<std::string> args = {cmd,       "label",  "--teacher", fx.teacher, "--data",
                                         fx.data,   "--out",  out,         "--crops",  "16",
                                         "--batch", "32",     "--threads", "1",        "--workers",
                                         "2",       "--seed", "5"};
  const std::string partial = out + "/" + shard_file_name(0, 1) + ".partial";
  // Kill at several points: early, in the middle, late.
  for (uintmax_t kill_at : {uintmax_t(2000), uintmax_t(20000), uintmax_t(60000)}) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      freopen("/dev/null", "w", stdout);
      freopen("/dev/null", "w", stderr);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(cmd.c_str(), argv.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    int status = 0;
    bool exited = false;
    while (std::chrono::steady_clock::now() < deadline) {
      std::error_code ec;
      if (fs::exists(partial, ec) && fs::file_size(partial, ec) >= kill_at) break;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
  }
  LabelConfig resumed = fx.config(out);
  resumed.crops = 16;
  const LabelResult r = generate_labels(resumed);
  EXPECT_TRUE(r.complete);
  EXPECT_LT(r.images, 400u) << "the run should have resumed, not restarted";
  expect_same_records(ref.out, out);
  EXPECT_EQ(fkd::test::read_file(out + "/" + shard_file_name(0, 1)),
            fkd::test::read_file(ref.out + "/" + shard_file_name(0, 1)));
}

TEST(Label, VersionOneStoreIsFinishedInVersionOne) {
  // A store begun by an fkd of format version 1 (here: its manifest, no shard yet) is
  // labeled on in version 1: zstd records, the same labels as a current store.
  Fixture fx;
  const LabelConfig ref = fx.config(fx.dir.file("ref"));
  generate_labels(ref);
  const std::string old = fx.dir.file("old");
  fs::create_directories(old);
  Manifest m = read_manifest(ref.out);
  ASSERT_EQ(m.version, kStoreFormatVersion);
  m.version = 1;
  write_manifest(old, m);
  EXPECT_TRUE(generate_labels(fx.config(old)).complete);
  EXPECT_EQ(read_manifest(old).version, 1);
  const std::string shard = fkd::test::read_file(old + "/" + shard_file_name(0, 1));
  EXPECT_EQ(shard[8], 1) << "shard header version";
  EXPECT_EQ(shard[128 + 28], 0) << "first block: a zstd record";
  const std::string current = fkd::test::read_file(ref.out + "/" + shard_file_name(0, 1));
  EXPECT_EQ(current[128 + 28], 1) << "first block of the current store: packed";
  expect_same_records(ref.out, old);
}

TEST(Label, RefusesMismatchedStoreAndTeacher) {
  Fixture fx;
  LabelConfig c = fx.config(fx.dir.file("store"));
  c.shard = "0/2";
  generate_labels(c);
  LabelConfig changed = c;
  changed.temperature = 3.0f;
  try {
    generate_labels(changed);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("temperature"), std::string::npos) << e.what();
  }
  // A teacher whose output width is not the class count is refused before any work.
  const std::string wide = fx.dir.file("wide.pt");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", wide, "1", "7"}).status, 0);
  LabelConfig bad = fx.config(fx.dir.file("bad"));
  bad.teacher = wide;
  try {
    generate_labels(bad);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("10 classes"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(fx.dir.file("bad/") + shard_file_name(0, 1)));
  // Nothing was written, so the corrected command in the same --out just works.
  EXPECT_FALSE(fs::exists(fx.dir.file("bad/manifest.json")));
  bad.teacher = fx.teacher;
  bad.limit = 4;
  EXPECT_TRUE(generate_labels(bad).complete);
}

TEST(Label, UnreadableImagesAreFoundBeforeAnyLabel) {
  TempDir dir;
  const std::string data = dir.file("data"), teacher = dir.file("t.pt");
  ASSERT_EQ(fkd::test::run_python("data_make_folder.py", {data}).status, 0);
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "3", "3"}).status, 0);
  const auto ds = open_dataset(data, Split::kTrain);
  const std::string broken = data + "/" + ds->item_name(ds->size() - 1);  // the last image
  const std::string good = fkd::test::read_file(broken);
  fkd::test::write_file(broken, good.substr(0, good.size() / 2));
  LabelConfig c = one_thread_config(teacher, data, dir.file("store"), 3);
  c.crop.size = 28;
  // Every option is checked before the images are: a bad --flip is named, not the image
  // (it was once found only after the whole-dataset check).
  LabelConfig bad_flip = c;
  bad_flip.crop.flip = 2;
  try {
    generate_labels(bad_flip);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--flip 2"), std::string::npos) << e.what();
  }
  try {
    generate_labels(c);
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("1 of the 15 images to label cannot be read"), std::string::npos) << msg;
    EXPECT_NE(msg.find(broken), std::string::npos) << msg;
  }
  // Nothing was written: with the file fixed, the same command labels from scratch.
  EXPECT_FALSE(fs::exists(c.out));
  fkd::test::write_file(broken, good);
  EXPECT_TRUE(generate_labels(c).complete);
}

TEST(Label, DefaultTopkIsCappedAtTheClassCount) {
  TempDir dir;
  const std::string data = dir.file("data");
  fs::create_directories(data);
  fkd::test::write_idx_split(data, "train", 6, 28, 28, 3);
  fkd::test::write_idx_split(data, "t10k", 3, 28, 28, 3);
  const std::string teacher = dir.file("teacher.pt");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher, "1", "3"}).status, 0);
  LabelConfig c = one_thread_config(teacher, data, dir.file("store"), 4);
  generate_labels(c);
  EXPECT_EQ(read_manifest(c.out).k, 3);
  c.out = dir.file("store5");
  c.topk = kDefaultTopk;  // asked for explicitly: more than there are classes
  try {
    generate_labels(c);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--topk 5: " + data + " has only 3 classes"),
              std::string::npos)
        << e.what();
  }
}

TEST(Label, NegativeTopkIsRefusedSayingWhatZeroMeans) {
  // The library's check allows 0 (the label type's own k): its message says so.
  LabelConfig c;
  c.teacher = "teacher.pt";
  c.out = "store";
  c.topk = -1;
  const std::string msg = fkd::test::error_message<ConfigError>([&] { validate_label_config(c); });
  EXPECT_NE(msg.find("--topk -1: expected at least 1 (0 = the label type's k)"), std::string::npos)
      << msg;
}

TEST(Label, ReferenceCropsAndEnsemble) {
  Fixture fx;
  LabelConfig a = fx.config(fx.dir.file("a"));
  a.label_type = "full";
  a.precision = "fp32";
  generate_labels(a);
  const std::string teacher_b = fx.dir.file("b.pt");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", teacher_b, "1", "10"}).status, 0);
  LabelConfig b = fx.config(fx.dir.file("b"));
  b.teacher = teacher_b;
  b.label_type = "full";
  b.precision = "fp32";
  b.temperature = 3.0f;  // another "teacher": same net, softer output
  b.seed = 999;          // ignored: the reference store's sampler wins
  b.crops = 3;
  b.reference_crops = a.out;
  generate_labels(b);
  const auto ra = all_records(a.out), rb = all_records(b.out);
  ASSERT_EQ(rb[0].num_crops, 12u);
  for (size_t i = 0; i < ra.size(); ++i) EXPECT_EQ(ra[i].crop_hash, rb[i].crop_hash);

  ensemble_stores({a.out, b.out}, fx.dir.file("ens"));
  const auto re = all_records(fx.dir.file("ens"));
  for (size_t i = 0; i < ra.size(); ++i) {
    for (size_t v = 0; v < ra[i].values.size(); ++v) {
      EXPECT_NEAR(re[i].values[v], 0.5f * (ra[i].values[v] + rb[i].values[v]), 1e-6);
    }
  }
}

TEST(Label, ReferenceCropsOfAStoreOfExplicitBoxes) {
  // A store of explicit crops (as an import writes): a's crops, stored as boxes, under a
  // manifest whose seed derives other ones. Labeling on its boxes must feed the teacher
  // exactly a's crops: the same labels, and the boxes carried into the new store.
  Fixture fx;
  LabelConfig a = fx.config(fx.dir.file("a"));
  a.crop.kind = CropKind::kRandomResized;  // boxes inside the image, as explicit ones must be
  generate_labels(a);
  const std::string boxes = fx.dir.file("boxes");
  Manifest m = read_manifest(a.out);
  m.crop_origin = CropOrigin::kExplicit;
  m.seed = 12345;
  m.teacher_hash = "imported";
  fs::create_directories(boxes);
  write_manifest(boxes, m);
  {
    const Manifest derived = read_manifest(a.out);
    StoreReader ra(a.out);
    ShardWriter w(boxes, m, 0);
    ImageLabels l;
    for (uint64_t i = 0; i < m.num_images; ++i) {
      ra.read(i, l);
      for (uint32_t c = 0; c < m.crops_per_image; ++c)
        l.boxes.push_back(store_crop(derived, l, i, c));
      w.append(i, l);
    }
    w.finish();
  }
  LabelConfig b = fx.config(fx.dir.file("b"));
  b.seed = 999;
  b.reference_crops = boxes;
  generate_labels(b);
  EXPECT_EQ(read_manifest(b.out).crop_origin, CropOrigin::kExplicit);
  const auto ra = all_records(a.out), rx = all_records(boxes), rb = all_records(b.out);
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(rb[i].indices, ra[i].indices) << "image " << i;
    EXPECT_EQ(rb[i].values, ra[i].values) << "image " << i;
    EXPECT_EQ(rb[i].crop_hash, rx[i].crop_hash) << "image " << i;
    ASSERT_EQ(rb[i].boxes.size(), rx[i].boxes.size());
    for (size_t c = 0; c < rb[i].boxes.size(); ++c) {
      EXPECT_EQ(rb[i].boxes[c].box.left, rx[i].boxes[c].box.left);
      EXPECT_EQ(rb[i].boxes[c].box.width, rx[i].boxes[c].box.width);
      EXPECT_EQ(rb[i].boxes[c].flip, rx[i].boxes[c].flip);
    }
  }
  // Labeling into a store of explicit crops without its boxes is refused in one line.
  const LabelConfig c = fx.config(b.out);
  std::string msg = fkd::test::error_message<WorkMismatch>([&] { generate_labels(c); });
  EXPECT_NE(msg.find("holds labels of explicit crops, this run labels derived ones; label into "
                     "it only with --reference-crops"),
            std::string::npos)
      << msg;
  // fkd label repair cannot remake lost boxes: refused in one line.
  const std::string shard = b.out + "/" + shard_file_name(0, 1);
  std::string bytes = fkd::test::read_file(shard);
  bytes[200] ^= 1;
  fkd::test::write_file(shard, bytes);
  RepairConfig rc;
  rc.store = b.out;
  rc.teacher = fx.teacher;
  msg = fkd::test::error_message<ConfigError>([&] { repair_store(rc); });
  EXPECT_NE(msg.find("holds explicit crops, and a damaged record's boxes are lost with it"),
            std::string::npos)
      << msg;
}

TEST(Label, DefaultCropsAreTheStudentsDefaults) {
  // fkd label, fkd train and fkd distill share one default sampler (auto): on 28-px images
  // that is RandomCrop(28, padding 4), the crops the default student recipe sees. fkd label
  // once defaulted to RandomResizedCrop.
  Fixture fx;
  LabelConfig c = fx.config(fx.dir.file("store"));
  c.crops = 2;
  generate_labels(c);
  TrainConfig student;
  student.data = fx.data;
  resolve_config(student, *open_dataset(fx.data, Split::kTrain));
  const Manifest m = read_manifest(c.out);
  EXPECT_EQ(m.crop.kind, student.crop.kind);
  EXPECT_EQ(m.crop.kind, CropKind::kPadded);
  EXPECT_EQ(m.crop.size, 28);
  EXPECT_EQ(m.crop.padding, student.crop.padding);
}

TEST(Label, ReferenceCropsKeepTheirBoxSize) {
  // RandomCrop boxes are input-size squares: a teacher of another input size labeling "the
  // same crops" once labeled other ones without a word.
  Fixture fx;
  LabelConfig a = fx.config(fx.dir.file("a"));
  a.crops = 2;
  generate_labels(a);
  ASSERT_EQ(read_manifest(a.out).crop.kind, CropKind::kPadded);
  LabelConfig b = fx.config(fx.dir.file("b"));
  b.reference_crops = a.out;
  b.crop.size = 32;
  try {
    generate_labels(b);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("pass --input-size 28"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(b.out));
}

TEST(Label, EnsembleRefusesStoresOfOtherCrops) {
  Fixture fx;
  LabelConfig a = fx.config(fx.dir.file("a"));
  a.crops = 2;
  generate_labels(a);
  // The same seed and count but another padding: other crops. The check once compared only
  // scale, ratio and flip, and the ensemble averaged labels of different crops.
  LabelConfig b = fx.config(fx.dir.file("b"));
  b.crops = 2;
  b.crop.padding = 2;
  generate_labels(b);
  try {
    ensemble_stores({a.out, b.out}, fx.dir.file("ab"));
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("padding (4 vs 2)"), std::string::npos) << e.what();
  }
  // What defines the crops is each record's crop hash: a store whose manifest agrees but
  // whose image 5 was labeled on other crops is refused, naming the image.
  const std::string c = fx.dir.file("c");
  fs::create_directories(c);
  const Manifest m = read_manifest(a.out);
  {
    ShardWriter w(c, m, 0);
    auto records = all_records(a.out);
    records[5].crop_hash ^= 1;
    for (uint64_t i = 0; i < records.size(); ++i) w.append(i, records[i]);
    w.finish();
  }
  write_manifest(c, m);
  try {
    ensemble_stores({a.out, c}, fx.dir.file("ac"));
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(c + ": image 5 was labeled on other crops"),
              std::string::npos)
        << e.what();
  }
}

// --- the teacher batcher ------------------------------------------------------------------

namespace {

/// What a batcher run did: each emitted image's rows (value, batch position), and every
/// batch the fake teacher saw.
struct BatcherRun {
  std::vector<uint64_t> images;
  std::vector<std::vector<std::pair<float, int>>> rows;  ///< per image: (row value, position)
  std::vector<torch::Tensor> batches;
};

/// Feeds images [first, end) of `crops` crops through a batcher of `batch` rows, in loader
/// batches of `per_load` images. Crop c of image i is an image whose pixels all equal
/// i * crops + c + 1 (0 marks padding); the fake teacher returns (pixel, position) per row.
BatcherRun run_batcher(int64_t batch, int crops, uint64_t first, uint64_t end, int per_load) {
  BatcherRun r;
  auto forward = [&](const torch::Tensor& x) {
    r.batches.push_back(x.clone());
    const int64_t n = x.size(0);
    auto p = torch::zeros({n, 2});
    p.select(1, 0).copy_(x.reshape({n, -1}).select(1, 0));
    p.select(1, 1).copy_(torch::arange(n, torch::kFloat32));
    return p;
  };
  auto emit = [&](uint64_t image, uint32_t, uint32_t, const float* probs) {
    r.images.push_back(image);
    r.rows.emplace_back();
    for (int c = 0; c < crops; ++c) r.rows.back().push_back({probs[2 * c], int(probs[2 * c + 1])});
  };
  TeacherBatcher b(batch, 1, 2, crops, 2, first, forward, emit);
  for (uint64_t i = first; i < end;) {
    std::vector<uint64_t> ids;
    for (; i < end && ids.size() < size_t(per_load); ++i) ids.push_back(i);
    auto x = torch::empty({int64_t(ids.size()) * crops, 1, 2, 2});
    for (size_t k = 0; k < ids.size(); ++k)
      for (int c = 0; c < crops; ++c)
        x[int64_t(k) * crops + c].fill_(float(ids[k] * crops + c + 1));
    b.add(x, ids, std::vector<uint32_t>(ids.size(), 8), std::vector<uint32_t>(ids.size(), 9));
  }
  b.finish();
  return r;
}

}  // namespace

TEST(TeacherBatcher, EveryCropSitsAtItsPositionInOneUnbrokenRun) {
  for (int per_load : {1, 2, 5}) {
    const BatcherRun r = run_batcher(/*batch=*/5, /*crops=*/3, 0, 7, per_load);
    ASSERT_EQ(r.images, (std::vector<uint64_t>{0, 1, 2, 3, 4, 5, 6})) << per_load;
    for (uint64_t i = 0; i < 7; ++i) {
      for (int c = 0; c < 3; ++c) {
        const uint64_t row = i * 3 + uint64_t(c);
        EXPECT_EQ(r.rows[i][size_t(c)].first, float(row + 1)) << i << " " << c;
        EXPECT_EQ(r.rows[i][size_t(c)].second, int(row % 5)) << i << " " << c;
      }
    }
    // 21 rows in batches of 5: the last batch holds one row and four zero rows.
    ASSERT_EQ(r.batches.size(), 5u);
    EXPECT_EQ(r.batches.back()[0].max().item<float>(), 21.f);
    EXPECT_EQ(r.batches.back().narrow(0, 1, 4).abs().sum().item<float>(), 0.f);
  }
}

TEST(TeacherBatcher, ResumedAndShardedRunsKeepThePositions) {
  // A run that starts at image 4 (a resumed run, or a shard) puts each crop where the
  // unbroken run did: its first batch starts with (4 * 3) mod 5 = 2 zero rows.
  const BatcherRun whole = run_batcher(5, 3, 0, 9, 2);
  const BatcherRun part = run_batcher(5, 3, 4, 9, 2);
  ASSERT_EQ(part.images, (std::vector<uint64_t>{4, 5, 6, 7, 8}));
  for (size_t k = 0; k < part.images.size(); ++k) EXPECT_EQ(part.rows[k], whole.rows[k + 4]);
  EXPECT_EQ(part.batches.front().narrow(0, 0, 2).abs().sum().item<float>(), 0.f);
  EXPECT_EQ(part.batches.front()[2].max().item<float>(), 13.f);  // image 4, crop 0
  // One image alone (a repaired record) too.
  const BatcherRun one = run_batcher(5, 3, 6, 7, 1);
  ASSERT_EQ(one.images, (std::vector<uint64_t>{6}));
  EXPECT_EQ(one.rows[0], whole.rows[6]);
}

TEST(TeacherBatcher, RefusesRowsThatAreNotWholeImages) {
  TeacherBatcher b(
      4, 1, 2, 3, 2, 0,
      [](const torch::Tensor& x) {
        return torch::zeros({x.size(0), 2});
      },
      [](uint64_t, uint32_t, uint32_t, const float*) {});
  EXPECT_THROW(b.add(torch::zeros({4, 1, 2, 2}), {0}, {8}, {9}), Error);
}

TEST(Label, VerifyListsDamageAndRepairRestoresTheStoreByteForByte) {
  Fixture fx;
  const std::string good = fx.dir.file("good"), bad = fx.dir.file("bad");
  for (uint32_t s = 0; s < 3; ++s) {
    LabelConfig c = fx.config(good);
    c.shard = fmt::format("{}/3", s);
    generate_labels(c);
  }
  fs::copy(good, bad, fs::copy_options::recursive);
  // Damage: records of images 3, 4 and 20 (one byte each), and shard 2's footer.
  auto flip_records = [&](uint32_t shard, const std::vector<uint64_t>& images) {
    const std::string path = bad + "/" + shard_file_name(shard, 3);
    std::string bytes = fkd::test::read_file(path);
    std::vector<size_t> blocks;
    for (size_t at = bytes.find("FKDB"); at != std::string::npos; at = bytes.find("FKDB", at + 1))
      blocks.push_back(at);
    const uint64_t begin = shard_range(40, shard, 3).first;
    for (uint64_t i : images) bytes[blocks.at(i - begin) + 40] ^= 0x5a;
    fkd::test::write_file(path, bytes);
  };
  flip_records(0, {3, 4});
  flip_records(1, {20});
  const std::string shard2 = bad + "/" + shard_file_name(2, 3);
  const std::string bytes2 = fkd::test::read_file(shard2);
  fkd::test::write_file(shard2, bytes2.substr(0, bytes2.size() - 10));

  const std::string bin = std::string(FKD_BINARY_DIR) + "/fkd";
  const auto v =
      fkd::test::run_command("FKD_PROGRESS=off " + bin + " label verify " + bad + " 2>&1");
  EXPECT_EQ(v.status, 1) << v.out;
  for (const char* image : {"image 3:", "image 4:", "image 20:"}) {
    EXPECT_NE(v.out.find(image), std::string::npos) << image << "\n" << v.out;
  }
  const auto [b2, e2] = shard_range(40, 2, 3);
  EXPECT_NE(v.out.find(fmt::format("{}: images [{}, {}) lost", shard2, b2, e2)), std::string::npos)
      << v.out;
  EXPECT_NE(v.out.find(fmt::format("{} of 40 images have damaged labels", 3 + (e2 - b2))),
            std::string::npos)
      << v.out;

  const auto r =
      fkd::test::run_command("FKD_PROGRESS=off " + bin + " label repair " + bad + " --teacher " +
                             fx.teacher + " --batch 32 --threads 1 --workers 2 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  for (uint32_t s = 0; s < 3; ++s) {
    EXPECT_EQ(fkd::test::read_file(bad + "/" + shard_file_name(s, 3)),
              fkd::test::read_file(good + "/" + shard_file_name(s, 3)))
        << "shard " << s;
  }
  EXPECT_TRUE(fs::exists(shard2 + ".damaged"));  // the broken file is kept, not lost
  EXPECT_EQ(fkd::test::run_command(bin + " label verify " + bad + " >/dev/null 2>&1").status, 0);
  // Another teacher would not give the same labels: refused.
  flip_records(1, {20});
  const std::string other = fx.dir.file("other.pt");
  ASSERT_EQ(fkd::test::run_python("label_teacher.py", {"make", other, "2", "10"}).status, 0);
  const auto o =
      fkd::test::run_command(bin + " label repair " + bad + " --teacher " + other + " 2>&1");
  EXPECT_EQ(o.status, 1) << o.out;
  EXPECT_NE(o.out.find("is another teacher"), std::string::npos) << o.out;
}

TEST(Label, RepairSuspectsAnEditedManifestAndChangesNothing) {
  Fixture fx;
  const std::string good = fx.dir.file("good");
  for (uint32_t s = 0; s < 2; ++s) {
    LabelConfig c = fx.config(good);
    c.shard = fmt::format("{}/2", s);
    generate_labels(c);
  }
  const std::string bin = std::string(FKD_BINARY_DIR) + "/fkd";
  const std::vector<std::string> files = {"manifest.json", shard_file_name(0, 2),
                                          shard_file_name(1, 2)};
  // Each identity key edited alone: every shard disagrees with the manifest, whole and
  // consistent among themselves, so the manifest is what is wrong.
  const std::vector<std::pair<nlohmann::json, std::string>> edits = {
      {{{"label_type", "marginal_renorm"}},
       "label_type: manifest.json says marginal_renorm, the shards marginal_smoothing"},
      {{{"k", 3}}, "k: manifest.json says 3, the shards 5"},
      {{{"precision", "fp32"}}, "precision: manifest.json says fp32, the shards fp16"},
      {{{"scale", {0.5, 1.0}}}, "the store key"},
      {{{"input_size", 32}}, "the store key"},
      {{{"seed", 6}}, "the store key"},
      {{{"dataset_fingerprint", "0123456789abcdef"}}, "the store key"},
      {{{"teacher_hash", std::string(32, '0')}}, "the store key"},
      {{{"num_images", 39}}, "num_images: manifest.json says 39, the shards 40"},
      {{{"num_shards", 3}}, "num_shards: manifest.json says 3, the shards 2"},
  };
  for (const auto& [edit, expected] : edits) {
    SCOPED_TRACE(edit.dump());
    const std::string store = fx.dir.file("edited");
    fs::remove_all(store);
    fs::copy(good, store, fs::copy_options::recursive);
    nlohmann::json m = nlohmann::json::parse(fkd::test::read_file(store + "/manifest.json"));
    m.update(edit);
    fkd::test::write_file(store + "/manifest.json", m.dump(2));
    std::map<std::string, std::string> before;
    for (const auto& f : fs::directory_iterator(store))
      before[f.path().filename().string()] = fkd::test::read_file(f.path().string());
    const auto r =
        fkd::test::run_command("FKD_PROGRESS=off " + bin + " label repair " + store +
                               " --teacher " + fx.teacher + " --batch 32 --threads 1 2>&1");
    EXPECT_EQ(r.status, 1) << r.out;
    const std::string line = r.out.substr(0, r.out.find('\n'));
    EXPECT_EQ(r.out, line + "\n");
    EXPECT_EQ(line.rfind("fkd: error: " + store +
                             "/manifest.json: disagrees with all 2 shard "
                             "file(s), which are intact and agree with one another (",
                         0),
              0u)
        << line;
    EXPECT_NE(line.find(expected), std::string::npos) << line;
    EXPECT_NE(line.find("repair changed nothing"), std::string::npos) << line;
    EXPECT_EQ(line.find("is another dataset"), std::string::npos) << line;
    EXPECT_EQ(line.find("is another teacher"), std::string::npos) << line;
    std::map<std::string, std::string> after;
    for (const auto& f : fs::directory_iterator(store))
      after[f.path().filename().string()] = fkd::test::read_file(f.path().string());
    EXPECT_TRUE(before == after) << "the store changed";
    // fkd label verify says the same.
    const auto v = fkd::test::run_command("FKD_PROGRESS=off " + bin + " label verify " + store);
    EXPECT_NE(v.status, 0);
    EXPECT_NE(v.out.find(store + "/manifest.json: disagrees with all 2 shard file(s)"),
              std::string::npos)
        << v.out;
  }
}

TEST(Label, AnEditedDatasetLimitMisleadsNeitherInspectNorRepair) {
  // dataset_limit is informational: the store's num_images selects its subset.
  Fixture fx;
  const std::string store = fx.dir.file("subset");
  LabelConfig c = fx.config(store);
  c.limit = 20;
  generate_labels(c);
  nlohmann::json m = nlohmann::json::parse(fkd::test::read_file(store + "/manifest.json"));
  ASSERT_EQ(m["dataset_limit"], 20);
  m["dataset_limit"] = 30;
  fkd::test::write_file(store + "/manifest.json", m.dump(2));
  const std::string bin = std::string(FKD_BINARY_DIR) + "/fkd";
  const auto i = fkd::test::run_command(bin + " inspect " + store + " 2>&1");
  EXPECT_EQ(i.status, 0) << i.out;
  EXPECT_NE(i.out.find("images           20\n"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("% of crops' top class is the image's label"), std::string::npos) << i.out;
  // Another dataset is still named as such.
  const std::string other = fx.dir.file("other");
  fs::create_directories(other);
  fkd::test::write_idx_split(other, "train", 50, 28, 28, 10);
  const auto o = fkd::test::run_command(bin + " inspect " + store + " --data " + other + " 2>&1");
  EXPECT_EQ(o.status, 1) << o.out;
  EXPECT_NE(o.out.find("--data " + other + ": not the dataset " + store + " labels"),
            std::string::npos)
      << o.out;
  // A damaged record is repaired, the dataset found by num_images.
  const std::string shard = store + "/" + shard_file_name(0, 1);
  const std::string whole = fkd::test::read_file(shard);
  std::string bytes = whole;
  bytes[bytes.find("FKDB") + 40] ^= 0x5a;
  fkd::test::write_file(shard, bytes);
  const auto r =
      fkd::test::run_command("FKD_PROGRESS=off " + bin + " label repair " + store + " --teacher " +
                             fx.teacher + " --batch 32 --threads 1 " + "--workers 2 2>&1");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(fkd::test::read_file(shard), whole);
}

TEST(Label, OutputSaysWhatTheStoreHoldsAndHowFast) {
  Fixture fx;
  const std::string bin = std::string(FKD_BINARY_DIR) + "/fkd";
  const std::string store = fx.dir.file("full");
  // Progress lines name the shard, and give no rate before there is one to measure.
  const auto l = fkd::test::run_command(
      "FKD_PROGRESS=plain " + bin + " label --teacher " + fx.teacher + " --data " + fx.data +
      " --crops 2 --label-type full --out " + store + " --threads 1 2>&1 >/dev/null");
  ASSERT_EQ(l.status, 0) << l.out;
  EXPECT_NE(l.out.find("label shard 0/1 100% (40/40) "), std::string::npos) << l.out;
  const auto v =
      fkd::test::run_command("FKD_PROGRESS=plain " + bin + " label verify " + store + " 2>&1");
  ASSERT_EQ(v.status, 0) << v.out;
  const size_t at = v.out.find("verify 100% (40/40) ");
  ASSERT_NE(at, std::string::npos) << v.out;
  const std::string rate = v.out.substr(at + 20, v.out.find(' ', at + 20) - at - 20);
  // A rate is given from 0.5 s on: at most 40 images / 0.5 s.
  EXPECT_TRUE(rate == "?" || std::stod(rate) <= 80) << v.out;
  // A full-label store is described as full labels, with no top-k.
  const auto i = fkd::test::run_command(bin + " inspect " + store);
  EXPECT_NE(i.out.find("labels           full in fp16, 10 classes\n"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("mean probability of a crop's most probable class"), std::string::npos)
      << i.out;
  const auto t = fkd::test::run_command(
      "FKD_PROGRESS=off " + bin + " train --model tiny --data " + fx.data + " --labels " + store +
      " --epochs 1 --num-crops 2 --batch-size 16 --threads 1 --out " + fx.dir.file("run"));
  ASSERT_EQ(t.status, 0) << t.out;
  EXPECT_NE(t.out.find("labels " + store +
                       ": 2 crops per image by teacher.pt, full in fp16; 2 "
                       "crops per image per pass"),
            std::string::npos)
      << t.out;
  EXPECT_EQ(t.out.find("top-1"), std::string::npos) << t.out;
}

TEST(Label, InspectLimitTakesImagesSpreadOverTheStore) {
  // fkd inspect --limit 10 summarizes images 0, 4, 8, ..., 36 of 40 (the subset every limit
  // of fkd keeps), not the first ten.
  Fixture fx;
  const std::string store = fx.dir.file("store");
  generate_labels(fx.config(store));
  const StoreReader r(store);
  const auto ds = open_dataset(fx.data, Split::kTrain);
  const Manifest& m = r.manifest();
  uint64_t agree = 0, crops = 0;
  ImageLabels l;
  std::vector<float> dense(m.classes.size());
  const int ni = stored_indices(m.label_type, m.k), nv = stored_values(m.label_type, m.k, 10);
  for (uint64_t i = 0; i < 40; i += 4) {
    r.read(i, l);
    for (uint32_t c = 0; c < l.num_crops; ++c) {
      recover_dense(m.label_type, m.k, 10, l.indices.data() + c * ni, l.values.data() + c * nv,
                    dense.data());
      const auto top = std::max_element(dense.begin(), dense.end()) - dense.begin();
      agree += top == ds->label(size_t(i));
      ++crops;
    }
  }
  const StoreSummary s = summarize_store(r, ds.get(), 10);
  EXPECT_DOUBLE_EQ(s.agreement, 100.0 * double(agree) / double(crops));
  const auto out =
      fkd::test::run_command(std::string(FKD_BINARY_DIR) + "/fkd inspect " + store + " --limit 10");
  EXPECT_NE(out.out.find("(over 10 images spread evenly)"), std::string::npos) << out.out;
}

TEST(Label, EnsembleKilledMidRunResumes) {
  // Killed after 10 of its 40 records (the writer's fault hook stands in for kill -9 at a
  // chosen point), the ensemble once could not be run again ("already holds a store"). Now
  // the same command finishes it, equal to an uninterrupted run.
  Fixture fx;
  LabelConfig a = fx.config(fx.dir.file("a"));
  generate_labels(a);
  LabelConfig b = fx.config(fx.dir.file("b"));
  b.temperature = 3.0f;
  b.reference_crops = a.out;
  generate_labels(b);
  ensemble_stores({a.out, b.out}, fx.dir.file("whole"));
  const std::string bin = std::string(FKD_BINARY_DIR) + "/fkd";
  const std::string cmd = bin + " label ensemble " + a.out + " " + b.out + " --out " +
                          fx.dir.file("killed") + " >/dev/null 2>&1";
  const auto killed = fkd::test::run_command("FKD_TEST_KILL_AFTER_BLOCKS=10 " + cmd);
  EXPECT_NE(killed.status, 0);
  EXPECT_FALSE(fs::exists(fx.dir.file("killed/manifest.json")));
  const std::string partial = fx.dir.file("killed/" + shard_file_name(0, 1) + ".partial");
  ASSERT_TRUE(fs::exists(partial));
  try {  // what fkd inspect says of it
    read_manifest(fx.dir.file("killed"));
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("run the same command again"), std::string::npos);
  }
  const auto resumed = fkd::test::run_command(cmd);
  ASSERT_EQ(resumed.status, 0);
  EXPECT_EQ(fkd::test::read_file(fx.dir.file("killed/" + shard_file_name(0, 1))),
            fkd::test::read_file(fx.dir.file("whole/" + shard_file_name(0, 1))));
  EXPECT_EQ(fkd::test::read_file(fx.dir.file("killed/manifest.json")),
            fkd::test::read_file(fx.dir.file("whole/manifest.json")));
}
