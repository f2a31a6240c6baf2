// fkd label import / export --format reference: files made as the reference implementation
// makes them (tests/py/reference_labels.py, python3-torch), imported into explicit-crop
// stores (boxes as PIL crops them, labels within the store's precision), trained from,
// exported and read back by torch.load; refusals and a resumed import.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/reference_file.h"
#include "fkd/reference_labels.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "fkd/transforms.h"
#include "testutil.h"

namespace fs = std::filesystem;
using namespace fkd;
using fkd::test::TempDir;

namespace {

constexpr int kClasses = 4, kPerClass = 5, kCrops = 6;

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

/// One small ImageFolder (PNG and JPEG images of 20 to 90 px) for the whole suite.
const std::string& dataset() {
  static TempDir dir;
  static const std::string root = [] {
    const std::string r = dir.file("data");
    const auto res = fkd::test::run_python(
        "reference_labels.py", {"dataset", r, std::to_string(kPerClass), std::to_string(kClasses)});
    if (res.status != 0) throw std::runtime_error("cannot make the dataset");
    return r;
  }();
  return root;
}

struct Case {
  const char* type;  ///< generate's label type
  bool fp16;
  bool torch_labels;
};

std::string case_name(const Case& c) {
  return std::string(c.type) + (c.fp16 ? "_fp16" : "_fp32") +
         (c.torch_labels ? "_tensor" : "_numpy");
}

/// Reference files of a case and what a faithful import holds (generate --expected).
struct Generated {
  TempDir dir;
  std::string labels, expected;
  explicit Generated(const Case& c, int crops = kCrops) {
    labels = dir.file("labels");
    expected = dir.file("expected.json");
    std::vector<std::string> args = {
        "generate",   dataset(), labels, c.type, std::to_string(crops), std::to_string(kClasses),
        "--expected", expected};
    if (c.fp16) args.push_back("--fp16");
    if (c.torch_labels) args.push_back("--torch-labels");
    const auto r = fkd::test::run_python("reference_labels.py", args);
    if (r.status != 0) throw std::runtime_error("cannot generate reference files");
  }
};

ReferenceImportConfig import_config(const std::string& src, const std::string& out) {
  ReferenceImportConfig c;
  c.src = src;
  c.data = dataset();
  c.out = out;
  c.input_size = 16;
  c.threads = 2;
  return c;
}

/// The store holds what the reference's files say, as the reference replays them.
void expect_store_matches(const std::string& store, const nlohmann::json& expected, const Case& c) {
  StoreReader r(store);
  const Manifest& m = r.manifest();
  EXPECT_EQ(m.crop_origin, CropOrigin::kExplicit);
  EXPECT_EQ(m.precision, c.fp16 ? Precision::kFp16 : Precision::kFp32);
  const std::string type = c.type;
  EXPECT_EQ(label_type_name(m.label_type),
            type == "marginal" ? std::string("marginal_smoothing") : type);
  const auto ds = open_dataset(dataset(), Split::kTrain);
  ASSERT_EQ(r.num_images(), ds->size());
  ImageLabels rec;
  for (uint64_t i = 0; i < r.num_images(); ++i) {
    const auto& want = expected.at(ds->item_name(i));
    SCOPED_TRACE(ds->item_name(i));
    r.read(i, rec);
    EXPECT_EQ(rec.height, want["size"][0].get<uint32_t>());
    EXPECT_EQ(rec.width, want["size"][1].get<uint32_t>());
    for (uint32_t k = 0; k < m.crops_per_image; ++k) {
      const CropPlan p = store_crop(m, rec, i, k);
      const auto& b = want["boxes"][k];  // PIL's crop of the normalized coords
      EXPECT_EQ(p.box.left, b[0].get<int>()) << "crop " << k;
      EXPECT_EQ(p.box.top, b[1].get<int>()) << "crop " << k;
      EXPECT_EQ(p.box.width, b[2].get<int>()) << "crop " << k;
      EXPECT_EQ(p.box.height, b[3].get<int>()) << "crop " << k;
      EXPECT_EQ(p.flip, b[4].get<bool>()) << "crop " << k;
    }
    // Labels: class ids exact; values as the store's precision rounds them (lossless here:
    // fp16 files into an fp16 store, fp32 into fp32).
    const auto values = want["labels"].get<std::vector<double>>();
    const int ni = stored_indices(m.label_type, m.k);
    const int nv = stored_values(m.label_type, m.k, kClasses);
    const size_t per_crop = values.size() / m.crops_per_image;
    for (uint32_t k = 0; k < m.crops_per_image; ++k) {
      for (int j = 0; j < ni; ++j)
        ASSERT_EQ(rec.indices[k * ni + j], int(values[k * per_crop + j])) << "crop " << k;
      const size_t first = m.label_type == LabelType::kFull ? 0 : per_crop / 2;
      for (int j = 0; j < nv; ++j)
        ASSERT_EQ(rec.values[k * nv + j], float(values[k * per_crop + first + j])) << "crop " << k;
    }
  }
}

class Import : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(Import, BoxesAndLabelsAsTheReferenceReplaysThemAndBackAgain) {
  const Case c = GetParam();
  Generated g(c);
  TempDir work;
  const std::string store = work.file("store");
  import_reference_labels(import_config(g.labels, store));
  expect_store_matches(store, read_json(g.expected), c);

  // Export, then torch.load every file: the reference's shapes and dtypes, and the values
  // of the source files (coords exactly: the reference's are pixel boxes over the size).
  ReferenceExportConfig e;
  e.store = store;
  e.out = work.file("exported");
  e.fp16 = c.fp16;
  const ReferenceExportResult res = export_reference_labels(e);
  EXPECT_EQ(res.written, uint64_t(kClasses * kPerClass));
  EXPECT_EQ(res.moved_boxes, 0u);
  const auto r =
      fkd::test::run_python("reference_labels.py", {"load", e.out, work.file("loaded.json")});
  ASSERT_EQ(r.status, 0);
  const auto loaded = read_json(work.file("loaded.json"));
  ASSERT_EQ(loaded.size(), size_t(kClasses * kPerClass));
  for (const auto& [rel, got] : loaded.items()) {
    SCOPED_TRACE(rel);
    const ReferenceFile src = read_reference_file(g.labels + "/" + rel);
    const std::pair<const RefArray*, const char*> parts[] = {
        {&src.coords, "coords"}, {&src.flips, "flips"}, {&src.labels, "labels"}};
    for (const auto& [a, key] : parts) {
      SCOPED_TRACE(key);
      const auto& j = got[key];
      EXPECT_EQ(j["kind"], "numpy");  // as label_quantization returns them
      EXPECT_EQ(j["dtype"].get<std::string>(), ref_dtype_name(a->dtype));
      EXPECT_EQ(j["shape"].get<std::vector<int64_t>>(), a->shape);
      const auto v = j["values"].get<std::vector<double>>();
      ASSERT_EQ(v.size(), a->numel());
      for (size_t k = 0; k < v.size(); ++k) ASSERT_EQ(v[k], a->at(k)) << "element " << k;
    }
  }
  // A second run finds every file complete.
  const ReferenceExportResult again = export_reference_labels(e);
  EXPECT_EQ(again.written, 0u);
  EXPECT_EQ(again.skipped, uint64_t(kClasses * kPerClass));
  // A file cut short (not a reference file) is written again; the others stay.
  const std::string first = e.out + "/" + loaded.items().begin().key();
  std::filesystem::resize_file(first, 100);
  const ReferenceExportResult mended = export_reference_labels(e);
  EXPECT_EQ(mended.written, 1u);
  EXPECT_EQ(mended.skipped, uint64_t(kClasses * kPerClass - 1));
  // Another export (other options) into the same folder once kept these files as "already
  // there": it is refused, naming a file, and nothing changes.
  if (!c.fp16) {
    const std::string before = fkd::test::read_file(first);
    ReferenceExportConfig other = e;
    other.fp16 = true;
    const std::string msg =
        fkd::test::error_message<WorkMismatch>([&] { export_reference_labels(other); });
    EXPECT_NE(msg.find("holds other labels for"), std::string::npos) << msg;
    EXPECT_NE(msg.find("export into a new folder"), std::string::npos) << msg;
    EXPECT_EQ(fkd::test::read_file(first), before);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, Import,
    ::testing::Values(Case{"marginal", false, false}, Case{"marginal", true, false},
                      Case{"marginal", true, true}, Case{"hard", false, false},
                      Case{"hard", false, true}, Case{"full", false, true},
                      Case{"full", true, false}, Case{"smoothing", false, false}),
    [](const ::testing::TestParamInfo<Case>& i) { return case_name(i.param); });

TEST(ImportReference, TrainsFromTheImportedStore) {
  Generated g({"marginal", true, false});
  TempDir work;
  const std::string store = work.file("store");
  import_reference_labels(import_config(g.labels, store));
  TrainConfig t;
  t.data = dataset();
  t.labels = store;
  t.model = "tiny";
  t.epochs = 2;
  t.num_crops = 2;
  t.batch_size = 8;
  t.threads = 1;
  t.workers = 1;
  t.out = work.file("run");
  const TrainResult r = train(t);
  ASSERT_EQ(r.history.size(), 1u);  // one pass of 2 crops per image
  EXPECT_TRUE(std::isfinite(r.history.back().train_loss));
}

TEST(ImportReference, ReferenceTrainingCodeReadsTheExport) {
  // The reference's own data path (torch.load, indexing by a torch index, default_collate,
  // Recover_soft_label) over exported files: dense labels of row sum 1.
  Generated g({"marginal", false, false});
  TempDir work;
  import_reference_labels(import_config(g.labels, work.file("store")));
  ReferenceExportConfig e;
  e.store = work.file("store");
  e.out = work.file("exported");
  export_reference_labels(e);
  const auto r = fkd::test::run_python(
      "reference_labels.py",
      {"train_batch", e.out, dataset(), "marginal_smoothing", std::to_string(kClasses)});
  ASSERT_EQ(r.status, 0);
  EXPECT_EQ(r.out.rfind("[8, 4] 1.0000 1.0000 1.0000 1.0000 1.0000 1.0000 1.0000 1.0000", 0), 0u)
      << r.out;
}

TEST(ImportReference, ProblemsAreOneLineNamingTheFileAndNothingIsWritten) {
  Generated g({"marginal", false, false});
  TempDir work;
  const std::string store = work.file("store");
  const auto ds = open_dataset(dataset(), Split::kTrain);
  const std::string f3 = g.labels + "/class00/img03.tar";
  const std::string f7 = g.labels + "/class01/img02.tar";
  auto import_message = [&](auto mutate, auto expect_type) {
    using E = decltype(expect_type);
    ReferenceImportConfig c = import_config(g.labels, store);
    mutate(c);
    const std::string msg = fkd::test::error_message<E>([&] { import_reference_labels(c); });
    EXPECT_FALSE(fs::exists(store)) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  };
  const std::string good3 = fkd::test::read_file(f3), good7 = fkd::test::read_file(f7);

  // Wrong label type asked for.
  std::string msg =
      import_message([](ReferenceImportConfig& c) { c.label_type = "hard"; }, DataError(""));
  EXPECT_NE(msg.find("class00/img00.tar: labels are a float32 [6, 2, 4] numpy array, which is "
                     "marginal labels, not --label-type hard"),
            std::string::npos)
      << msg;
  // Truncated.
  fkd::test::write_file(f3, good3.substr(0, good3.size() / 2));
  msg = import_message([](ReferenceImportConfig&) {}, FormatError(""));
  EXPECT_EQ(msg.rfind(f3 + ": ", 0), 0u) << msg;
  fkd::test::write_file(f3, good3);
  // One file of another label type than the first.
  {
    ReferenceFile other = read_reference_file(f7);
    other.labels.shape = {6, 8};  // another label type in one file
    fkd::test::write_file(f7, serialize_reference_file(other));
  }
  msg = import_message([](ReferenceImportConfig&) {}, DataError(""));
  EXPECT_NE(msg.find(f7 + ": coords float32 [6, 4] numpy array and labels float32 [6, 8]"),
            std::string::npos)
      << msg;
  fkd::test::write_file(f7, good7);
  // Missing files: the count and the first of them.
  fs::remove(f3);
  fs::remove(f7);
  msg = import_message([](ReferenceImportConfig&) {}, DataError(""));
  EXPECT_NE(msg.find("no label file for 2 of the 20 images"), std::string::npos) << msg;
  EXPECT_NE(msg.find(f3 + ", " + f7), std::string::npos) << msg;
}

TEST(ImportReference, WhatCannotRoundTripIsRefusedInOneLine) {
  Generated g({"marginal", false, false});
  TempDir work;
  const std::string store = work.file("store");
  const std::string f3 = g.labels + "/class00/img03.tar";
  const std::string good3 = fkd::test::read_file(f3);
  auto refused = [&](auto expect_type) {
    using E = decltype(expect_type);
    const std::string msg = fkd::test::error_message<E>(
        [&] { import_reference_labels(import_config(g.labels, store)); });
    EXPECT_FALSE(fs::exists(store)) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind(f3 + ": ", 0), 0u) << msg;
    fs::remove_all(f3);
    fkd::test::write_file(f3, good3);
    return msg;
  };
  // Crop 0 of img03, changed: labels [6, 2, 4] float32 (row 1 the probabilities), coords
  // [6, 4] float32 (i, j, h, w).
  auto edit = [&](auto change) {
    ReferenceFile f = read_reference_file(f3);
    change(f);
    fkd::test::write_file(f3, serialize_reference_file(f, "img03"));
  };
  auto set_f32 = [](RefArray& a, size_t flat, float v) {
    std::memcpy(a.bytes.data() + 4 * flat, &v, 4);
  };
  // Probabilities out of order.
  edit([&](ReferenceFile& f) {
    const float first = float(f.labels.at(4)), second = float(f.labels.at(5));
    set_f32(f.labels, 4, second);
    set_f32(f.labels, 5, first);
  });
  std::string msg = refused(DataError(""));
  EXPECT_NE(msg.find("crop 0: top-4 probabilities not in descending order"), std::string::npos)
      << msg;
  // Probabilities in order that sum to 1.4.
  edit([&](ReferenceFile& f) {
    const float v[4] = {0.9f, 0.5f, 0.0f, 0.0f};
    for (int j = 0; j < 4; ++j) set_f32(f.labels, 4 + size_t(j), v[j]);
  });
  msg = refused(DataError(""));
  EXPECT_NE(msg.find("crop 0: top-4 probabilities sum to 1.4"), std::string::npos) << msg;
  // A crop of no height: PIL's crop is empty, a store's box would be one pixel.
  edit([&](ReferenceFile& f) { set_f32(f.coords, 2, 0.0f); });
  msg = refused(DataError(""));
  EXPECT_NE(msg.find("crop 0 (i="), std::string::npos) << msg;
  EXPECT_NE(msg.find("is an empty box (0 rows"), std::string::npos) << msg;
  // A label file that is no regular file: a folder, a FIFO, a link to /dev/zero.
  fs::remove(f3);
  fs::create_directory(f3);
  msg = refused(IoError(""));
  EXPECT_EQ(msg, f3 + ": is a directory, not a reference label file");
  fs::remove(f3);
  ASSERT_EQ(::mkfifo(f3.c_str(), 0600), 0);
  msg = refused(IoError(""));
  EXPECT_EQ(msg, f3 + ": is a FIFO, not a reference label file");
  fs::remove(f3);
  fs::create_symlink("/dev/zero", f3);
  msg = refused(IoError(""));
  EXPECT_EQ(msg, f3 + ": is a character device, not a reference label file");
  // Restored, the import goes through.
  import_reference_labels(import_config(g.labels, store));
  EXPECT_TRUE(fs::exists(store + "/manifest.json"));
}

TEST(ImportReference, IgnoredFilesAreCountedAndNamed) {
  Generated g({"marginal", true, false});
  TempDir work;
  const std::string some = fkd::test::read_file(g.labels + "/class01/img02.tar");
  fkd::test::write_file(g.labels + "/class00/stray.tar", some);  // a file of no image
  fkd::test::write_file(g.labels + "/notes.txt", "notes");       // not a label file
  fs::create_directories(g.labels + "/class99");                 // a folder of no class
  fkd::test::write_file(g.labels + "/class99/img00.tar", some);
  fkd::test::write_file(g.labels + "/class99/img01.tar", some);
  const ReferenceImportResult r = import_reference_labels(import_config(g.labels, work.file("s")));
  EXPECT_EQ(r.images, uint64_t(kClasses * kPerClass));
  EXPECT_EQ(r.ignored_count, 4u);
  EXPECT_EQ(r.ignored,
            (std::vector<std::string>{"class00/stray.tar",
                                      "class99/ (2 files; no class of the dataset)", "notes.txt"}));
  EXPECT_EQ(r.shared_count, 0u);
  // fkd label import says so on stderr.
  const auto cli = fkd::test::run_command(
      std::string(FKD_BINARY_DIR) + "/fkd label import --format reference " + g.labels +
      " --data " + dataset() + " --out " + work.file("cli") + " --input-size 16 2>&1 >/dev/null");
  EXPECT_EQ(cli.status, 0) << cli.out;
  EXPECT_NE(cli.out.find("warning: " + g.labels + ": ignored 4 file(s) that label no image of " +
                         dataset() +
                         ": class00/stray.tar, class99/ (2 files; no class of the "
                         "dataset), notes.txt\n"),
            std::string::npos)
      << cli.out;
}

TEST(ImportReference, ImagesSharingALabelFileAreNamed) {
  // class00/img00.png and class00/img00.v2.jpg: the reference names both files img00.tar.
  TempDir work;
  const std::string data = work.file("data");
  fs::copy(dataset(), data, fs::copy_options::recursive);
  fs::copy_file(data + "/train/class00/img01.v1.jpg", data + "/train/class00/img00.v2.jpg");
  const std::string labels = work.file("labels");
  ASSERT_EQ(fkd::test::run_python("reference_labels.py",
                                  {"generate", data, labels, "marginal", std::to_string(kCrops),
                                   std::to_string(kClasses)})
                .status,
            0);
  ReferenceImportConfig c = import_config(labels, work.file("store"));
  c.data = data;
  const ReferenceImportResult r = import_reference_labels(c);
  EXPECT_EQ(r.images, uint64_t(kClasses * kPerClass + 1));
  EXPECT_EQ(r.shared_count, 1u);
  EXPECT_EQ(r.shared_files,
            (std::vector<std::string>{"class00/img00.tar for train/class00/img00.png and "
                                      "train/class00/img00.v2.jpg"}));
  EXPECT_EQ(r.ignored_count, 0u);
}

TEST(ImportReference, KilledImportResumesToTheSameStore) {
  Generated g({"marginal", true, true});
  TempDir work;
  const std::string bin = std::string(FKD_BINARY_DIR) + "/fkd";
  auto cmd = [&](const std::string& out) {
    return bin + " label import --format reference " + g.labels + " --data " + dataset() +
           " --out " + out + " --input-size 16 --shards 2 >/dev/null 2>&1";
  };
  ASSERT_EQ(fkd::test::run_command(cmd(work.file("whole"))).status, 0);
  const auto killed = fkd::test::run_command("FKD_TEST_KILL_AFTER_BLOCKS=7 " + cmd(work.file("k")));
  EXPECT_NE(killed.status, 0);
  EXPECT_FALSE(fs::exists(work.file("k/manifest.json")));
  ASSERT_EQ(fkd::test::run_command(cmd(work.file("k"))).status, 0);
  for (const std::string f :
       {shard_file_name(0, 2), shard_file_name(1, 2), std::string("manifest.json")}) {
    EXPECT_EQ(fkd::test::read_file(work.file("k/" + f)),
              fkd::test::read_file(work.file("whole/" + f)))
        << f;
  }
  // The manifest names the files' content.
  const Manifest m = read_manifest(work.file("whole"));
  EXPECT_EQ(m.teacher, "reference labels " + g.labels);
  EXPECT_EQ(m.teacher_hash.size(), 32u);
}

namespace {

/// A derived-crop store of the suite's dataset, as `fkd label` writes one: crop c of image i
/// is derive_label_crop(sampler, seed, i, c, H, W); hard labels i + c mod C.
std::string derived_store(const TempDir& dir, CropKind kind) {
  const auto ds = open_dataset(dataset(), Split::kTrain);
  Manifest m;
  m.num_images = ds->size();
  m.dataset_fingerprint = dataset_fingerprint(*ds);
  m.classes = ds->classes();
  m.dataset = dataset();
  m.teacher = "teacher.pt";
  m.teacher_hash = "00112233445566778899aabbccddeeff";
  m.label_type = LabelType::kHard;
  m.k = 1;
  m.crops_per_image = kCrops;
  m.seed = 11;
  m.crop = {kind, 16, {0.08f, 1.0f}, {3.f / 4.f, 4.f / 3.f}, kind == CropKind::kPadded ? 4 : 0,
            0.5f};
  m.mean = {0.5f, 0.5f, 0.5f};
  m.std = {0.25f, 0.25f, 0.25f};
  const std::string store = dir.file(kind == CropKind::kPadded ? "padded" : "derived");
  fs::create_directories(store);
  ShardWriter w(store, m, 0);
  for (uint64_t i = 0; i < m.num_images; ++i) {
    const Image img = ds->load(size_t(i));
    ImageLabels l;
    l.height = uint32_t(img.height);
    l.width = uint32_t(img.width);
    l.num_crops = kCrops;
    l.crop_hash = label_crop_hash(m, i, l.height, l.width);
    for (uint32_t c = 0; c < kCrops; ++c) l.indices.push_back(int32_t((i + c) % kClasses));
    w.append(i, l);
  }
  w.finish();
  write_manifest(store, m);
  return store;
}

}  // namespace

TEST(ExportReference, DerivedCropsReplayToTheSameBoxes) {
  TempDir work;
  const std::string store = derived_store(work, CropKind::kRandomResized);
  ReferenceExportConfig e;
  e.store = store;  // the dataset from the manifest
  e.out = work.file("exported");
  ASSERT_EQ(export_reference_labels(e).written, uint64_t(kClasses * kPerClass));
  StoreReader r(store);
  const Manifest& m = r.manifest();
  const auto ds = open_dataset(dataset(), Split::kTrain);
  ImageLabels rec;
  for (uint64_t i = 0; i < m.num_images; ++i) {
    r.read(i, rec);
    std::string rel = ds->item_name(i).substr(6);  // below train/, cut at the first dot
    rel = rel.substr(0, rel.find('.', rel.rfind('/'))) + ".tar";
    const ReferenceFile f = read_reference_file(e.out + "/" + rel);
    ASSERT_EQ(f.labels.dtype, RefDType::kInt64);
    ASSERT_EQ(f.labels.shape, (std::vector<int64_t>{kCrops}));
    for (uint32_t c = 0; c < kCrops; ++c) {
      const CropPlan want =
          derive_label_crop(m.crop, m.seed, i, c, int(rec.height), int(rec.width));
      const CropBox b{float(f.coords.at(4 * c)), float(f.coords.at(4 * c + 1)),
                      float(f.coords.at(4 * c + 2)), float(f.coords.at(4 * c + 3))};
      const PixelBox got = to_pixel_box(b, int(rec.height), int(rec.width));
      EXPECT_EQ(got.left, want.box.left);
      EXPECT_EQ(got.top, want.box.top);
      EXPECT_EQ(got.width, want.box.width);
      EXPECT_EQ(got.height, want.box.height);
      EXPECT_EQ(f.flips.at(c) != 0, want.flip);
      EXPECT_EQ(f.labels.at(c), double((i + c) % kClasses));
    }
  }
}

TEST(ExportReference, PaddedCropsAreRefusedInOneLine) {
  TempDir work;
  ReferenceExportConfig e;
  e.store = derived_store(work, CropKind::kPadded);
  e.out = work.file("exported");
  const std::string msg =
      fkd::test::error_message<ConfigError>([&] { export_reference_labels(e); });
  EXPECT_NE(msg.find("reaches outside the"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the reference's files cannot express such crops"), std::string::npos) << msg;
}
