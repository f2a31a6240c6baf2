// The torch-free reader and writer of the reference implementation's label files, against
// files torch.save writes (tests/py/reference_labels.py) and torch.load reads.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "fkd/error.h"
#include "fkd/image.h"
#include "fkd/reference_file.h"
#include "store/zip_stored.h"
#include "testutil.h"

namespace fs = std::filesystem;
using namespace fkd;
using fkd::test::TempDir;

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

void expect_matches(const RefArray& a, const nlohmann::json& want, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(a.torch, want["kind"] == "tensor");
  EXPECT_EQ(ref_dtype_name(a.dtype), want["dtype"].get<std::string>());
  EXPECT_EQ(a.shape, want["shape"].get<std::vector<int64_t>>());
  const auto values = want["values"].get<std::vector<double>>();
  ASSERT_EQ(a.numel(), values.size());
  for (size_t k = 0; k < values.size(); ++k) ASSERT_EQ(a.at(k), values[k]) << "element " << k;
}

/// Files torch.save wrote, made once for the whole suite.
class ReferenceFiles : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const auto r = fkd::test::run_python("reference_labels.py", {"samples", dir_->path()});
    ASSERT_EQ(r.status, 0);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string file(const std::string& name) { return dir_->file(name); }
  static TempDir* dir_;
};
TempDir* ReferenceFiles::dir_ = nullptr;

const char* kSamples[] = {"marginal_fp32_numpy",
                          "marginal_fp16_numpy",
                          "marginal_fp32_tensor",
                          "marginal_fp16_tensor",
                          "hard_numpy",
                          "hard_tensor",
                          "smoothing",
                          "full_tensor",
                          "full_fp64_numpy",
                          "strided",
                          "transposed_tensor",
                          "tuple",
                          "empty"};

std::string pickle_of(const std::string& archive_bytes) {
  const auto entries = store::read_zip_stored(
      reinterpret_cast<const uint8_t*>(archive_bytes.data()), archive_bytes.size(), "x");
  for (const auto& e : entries)
    if (e.name.size() >= 8 && e.name.compare(e.name.size() - 8, 8, "data.pkl") == 0)
      return std::string(reinterpret_cast<const char*>(e.data), e.size);
  ADD_FAILURE() << "no data.pkl";
  return {};
}

/// The archive with its data.pkl replaced (other entries kept), CRCs made right again.
std::string with_pickle(const std::string& archive_bytes, const std::string& pkl) {
  const auto entries = store::read_zip_stored(
      reinterpret_cast<const uint8_t*>(archive_bytes.data()), archive_bytes.size(), "x");
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& e : entries) {
    const bool is_pkl = e.name.size() >= 8 && e.name.compare(e.name.size() - 8, 8, "data.pkl") == 0;
    out.emplace_back(e.name,
                     is_pkl ? pkl : std::string(reinterpret_cast<const char*>(e.data), e.size));
  }
  return store::write_zip_stored(out);
}

/// Parses bytes, which must either parse or raise FormatError naming the file.
void parse_or_format_error(const std::string& bytes) {
  try {
    parse_reference_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "F.tar");
  } catch (const FormatError& e) {
    ASSERT_EQ(std::string(e.what()).rfind("F.tar: ", 0), 0u) << e.what();
    ASSERT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

}  // namespace

TEST_F(ReferenceFiles, ReadsWhatTorchSaveWrites) {
  for (const char* name : kSamples) {
    SCOPED_TRACE(name);
    const ReferenceFile f = read_reference_file(file(std::string(name) + ".tar"));
    const auto want = read_json(file(std::string(name) + ".json"));
    expect_matches(f.coords, want[0], "coords");
    expect_matches(f.flips, want[1], "flips");
    expect_matches(f.labels, want[2], "labels");
  }
}

TEST_F(ReferenceFiles, RefusesOtherContentsInOneLine) {
  const std::string two = file("two_elements.tar"), dict = file("dict.tar");
  EXPECT_EQ(fkd::test::error_message<FormatError>([&] { read_reference_file(two); }),
            two + ": holds a list of 2 values, expected 3: [coords, flips, labels]");
  EXPECT_EQ(fkd::test::error_message<FormatError>([&] { read_reference_file(dict); }),
            dict + ": holds a dict, expected a list [coords, flips, labels]");
  // An array whose data is shorter than its shape says: the shape is named as a shape.
  const std::string short_array = file("short_array.tar");
  const std::string msg =
      fkd::test::error_message<FormatError>([&] { read_reference_file(short_array); });
  EXPECT_NE(msg.find("a float32 array of shape [7, 4] holds 100 bytes, expected 112"),
            std::string::npos)
      << msg;
  const std::string legacy = file("legacy.tar");
  EXPECT_NE(fkd::test::error_message<FormatError>([&] {
              read_reference_file(legacy);
            }).find(legacy + ": a legacy (PyTorch < 1.6) torch.save file"),
            std::string::npos);
  const std::string missing = file("missing.tar");
  EXPECT_NE(fkd::test::error_message<IoError>([&] { read_reference_file(missing); }).find(missing),
            std::string::npos);
}

TEST_F(ReferenceFiles, RefusesCompressedEntries) {
  // Python's zipfile with deflate: a ZIP torch.save would never write.
  const std::string path = file("deflated.tar");
  const auto r = fkd::test::run_command(
      "/usr/bin/python3 -c \"import zipfile; z = zipfile.ZipFile('" + path +
      "', 'w', zipfile.ZIP_DEFLATED); z.writestr('a/data.pkl', b'x' * 100); z.close()\"");
  ASSERT_EQ(r.status, 0);
  EXPECT_NE(fkd::test::error_message<FormatError>([&] {
              read_reference_file(path);
            }).find("entry a/data.pkl is compressed (method 8)"),
            std::string::npos);
}

TEST_F(ReferenceFiles, TruncatedFilesAreRefusedNeverOverread) {
  // Every prefix of a file, and every prefix of its pickle in a well-formed archive: each one
  // a FormatError naming the file (AddressSanitizer builds catch any read past the end).
  const std::string whole = fkd::test::read_file(file("marginal_fp16_tensor.tar"));
  for (size_t n = 0; n < whole.size(); ++n) {
    const std::string cut = whole.substr(0, n);
    EXPECT_THROW(
        parse_reference_file(reinterpret_cast<const uint8_t*>(cut.data()), cut.size(), "F.tar"),
        FormatError)
        << "prefix of " << n << " bytes";
  }
  const std::string pkl = pickle_of(whole);
  for (size_t n = 0; n < pkl.size(); ++n) {
    const std::string bytes = with_pickle(whole, pkl.substr(0, n));
    EXPECT_THROW(
        parse_reference_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "F.tar"),
        FormatError)
        << "pickle prefix of " << n << " bytes";
  }
}

TEST_F(ReferenceFiles, FlippedBytesParseOrFailInOneLine) {
  for (const char* name : {"marginal_fp16_numpy", "hard_tensor", "strided"}) {
    SCOPED_TRACE(name);
    const std::string whole = fkd::test::read_file(file(std::string(name) + ".tar"));
    for (size_t k = 0; k < whole.size(); ++k) {  // the archive: mostly caught by the CRC
      std::string bad = whole;
      bad[k] = char(bad[k] ^ 0x5a);
      parse_or_format_error(bad);
    }
    const std::string pkl = pickle_of(whole);
    for (size_t k = 0; k < pkl.size(); ++k) {  // the pickle itself, CRC fixed up
      for (uint8_t x : {0x01, 0x80, 0xff}) {
        std::string bad = pkl;
        bad[k] = char(bad[k] ^ x);
        parse_or_format_error(with_pickle(whole, bad));
      }
    }
  }
}

TEST_F(ReferenceFiles, DamagedStorageIsNamed) {
  std::string bytes = fkd::test::read_file(file("full_tensor.tar"));
  const auto entries =
      store::read_zip_stored(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "F.tar");
  ASSERT_EQ(entries[1].name, "full_tensor/data/0");  // the storage of the [7, 10] tensor
  const size_t at = size_t(entries[1].data - reinterpret_cast<const uint8_t*>(bytes.data())) + 5;
  bytes[at] = char(bytes[at] ^ 1);
  const std::string msg = fkd::test::error_message<FormatError>([&] {
    parse_reference_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "F.tar");
  });
  EXPECT_NE(msg.find("F.tar: entry full_tensor/data/0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CRC-32"), std::string::npos) << msg;
}

namespace {

/// Opcodes of a hand-made protocol-2 pickle.
struct PickleText {
  std::string b = std::string("\x80\x02", 2);
  PickleText& op(char c) {
    b.push_back(c);
    return *this;
  }
  PickleText& text(const std::string& s) {  // BINUNICODE
    op('X');
    for (int k = 0; k < 4; ++k) b.push_back(char((s.size() >> (8 * k)) & 0xff));
    b += s;
    return *this;
  }
  PickleText& int32(int32_t v) {  // BININT
    op('J');
    for (int k = 0; k < 4; ++k) b.push_back(char((uint32_t(v) >> (8 * k)) & 0xff));
    return *this;
  }
  PickleText& global(const std::string& module, const std::string& name) {
    op('c');
    b += module + "\n" + name + "\n";
    return *this;
  }
};

/// The FormatError message of parsing `pkl` as the data.pkl of an archive that also holds
/// one 8-byte storage, "0".
std::string hostile_message(const std::string& pkl) {
  const std::string bytes = store::write_zip_stored(
      {{"a/data.pkl", pkl}, {"a/data/0", std::string(8, '\0')}, {"a/version", "3\n"}});
  const std::string msg = fkd::test::error_message<FormatError>([&] {
    parse_reference_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "F.tar");
  });
  EXPECT_EQ(msg.rfind("F.tar: ", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  return msg;
}

}  // namespace

TEST(ReferenceReader, DeepNestingIsRefusedInOneLine) {
  // Lists each appended into the one before: a chain that freeing (or walking) one value at
  // a time would follow to the bottom of the stack. 300,000 of them outgrow the memory a file
  // of their size may take; 100 are within it, and nest too deep.
  auto chain = [](int lists) {
    PickleText p;
    for (int k = 0; k < lists; ++k) p.op(']');
    for (int k = 0; k + 1 < lists; ++k) p.op('a');
    return p.op('.').b;
  };
  EXPECT_NE(hostile_message(chain(300000)).find("the pickle builds more than"), std::string::npos);
  EXPECT_NE(hostile_message(chain(100)).find("values nested more than 64 levels deep"),
            std::string::npos);
  // The same chain made of memoized lists filled after they were placed: each list's depth
  // is known only if a placed list is never changed again.
  PickleText memo;
  for (int k = 0; k < 100; ++k) memo.op(']').op('q').op(char(k));
  for (int k = 0; k + 1 < 100; ++k) memo.op('h').op(char(k)).op('h').op(char(k + 1)).op('a');
  memo.op('.');
  EXPECT_NE(hostile_message(memo.b).find("a list is changed after it was placed in another value"),
            std::string::npos);
}

TEST(ReferenceReader, MemoryIsBoundedByTheFileSize) {
  // A 256 KiB string joined with itself again and again (6 bytes of pickle per 512 KiB).
  PickleText joins;
  joins.text(std::string(256 << 10, 'a')).op('q').op(0);
  for (int k = 0; k < 200; ++k) joins.op('h').op(0).op('h').op(0).op(char(0x93));
  joins.op('.');
  EXPECT_NE(hostile_message(joins.b).find("the pickle builds more than"), std::string::npos);
  // A tensor of 2^24 doubles whose stride 0 repeats the one element of its storage.
  PickleText wide;
  wide.op(']').op('(').global("torch._utils", "_rebuild_tensor_v2").op('(').op('(');
  wide.text("storage").global("torch", "DoubleStorage").text("0").text("cpu").int32(1).op('t');
  wide.op('Q').int32(0).op('(').int32(1 << 24).op('t').op('(').int32(0).op('t').op(char(0x89));
  wide.global("collections", "OrderedDict").op(')').op('R').op('t').op('R').op('e').op('.');
  EXPECT_NE(hostile_message(wide.b).find("the pickle builds more than"), std::string::npos);
}

TEST(ReferenceWriter, RoundTripsAndTorchLoadReadsIt) {
  TempDir dir;
  ReferenceFile f;
  f.coords.dtype = RefDType::kFloat16;
  f.coords.shape = {3, 4};
  for (int k = 0; k < 12; ++k) {  // 0x3c00 = 1.0, 0xb800 = -0.5, bytes >= 0x80 included
    const uint16_t h = uint16_t(0x3000 + 0x0111 * k);
    f.coords.bytes.push_back(uint8_t(h & 0xff));
    f.coords.bytes.push_back(uint8_t(h >> 8));
  }
  f.flips.dtype = RefDType::kBool;
  f.flips.shape = {3};
  f.flips.bytes = {1, 0, 1};
  f.labels.dtype = RefDType::kFloat32;
  f.labels.shape = {3, 2, 2};
  for (int k = 0; k < 12; ++k) {
    const float v = k % 4 < 2 ? float(k) : 0.25f * float(k);
    const auto* b = reinterpret_cast<const uint8_t*>(&v);
    f.labels.bytes.insert(f.labels.bytes.end(), b, b + 4);
  }
  for (bool torch_labels : {false, true}) {
    SCOPED_TRACE(torch_labels ? "tensor labels" : "numpy labels");
    f.labels.torch = torch_labels;
    const std::string bytes = serialize_reference_file(f, "img");
    const ReferenceFile back =
        parse_reference_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "w");
    for (auto [a, b] :
         {std::pair{&f.coords, &back.coords}, {&f.flips, &back.flips}, {&f.labels, &back.labels}}) {
      EXPECT_EQ(a->dtype, b->dtype);
      EXPECT_EQ(a->shape, b->shape);
      EXPECT_EQ(a->bytes, b->bytes);
      EXPECT_EQ(a->torch, b->torch);
    }
    fs::create_directories(dir.file(torch_labels ? "t" : "n"));
    fkd::test::write_file(dir.file(torch_labels ? "t/img.tar" : "n/img.tar"), bytes);
  }
  // torch.load reads both as [numpy, numpy, numpy or tensor] with the same values.
  const auto r =
      fkd::test::run_python("reference_labels.py", {"load", dir.path(), dir.file("loaded.json")});
  ASSERT_EQ(r.status, 0);
  const auto loaded = read_json(dir.file("loaded.json"));
  ASSERT_EQ(loaded.size(), 2u);
  for (bool torch_labels : {false, true}) {
    f.labels.torch = torch_labels;
    const auto& got = loaded[torch_labels ? "t/img.tar" : "n/img.tar"];
    for (auto [a, key] :
         {std::pair{&f.coords, "coords"}, {&f.flips, "flips"}, {&f.labels, "labels"}}) {
      SCOPED_TRACE(key);
      nlohmann::json want = got[key];
      expect_matches(*a, want, key);
    }
  }
}

TEST(ReferenceReplay, PixelBoxesAreThoseTorchvisionCutsFromPil) {
  // to_pixel_box against the reference's replay itself: torchvision's crop of a PIL image at
  // (i*H, j*W, h*H, w*W) from float32 and float16 coords, ties and near-ties included.
  TempDir dir;
  const auto r = fkd::test::run_python("reference_labels.py", {"boxes", dir.file("boxes.json")});
  ASSERT_EQ(r.status, 0);
  const auto cases = read_json(dir.file("boxes.json"));
  ASSERT_GT(cases.size(), 1000u);
  for (const auto& c : cases) {
    const auto v = c["coords"].get<std::vector<double>>();
    const int H = c["size"][0], W = c["size"][1];
    const PixelBox b =
        to_pixel_box(CropBox{float(v[0]), float(v[1]), float(v[2]), float(v[3])}, H, W);
    const auto want = c["box"].get<std::vector<int>>();
    ASSERT_EQ((std::vector<int>{b.left, b.top, b.width, b.height}), want) << c.dump();
  }
}
