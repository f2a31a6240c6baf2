// The soft-label store: what `fkd label` writes and FKD training reads.
//
// A store is a directory:
//   manifest.json                      what was labeled, how, by which teacher (see Manifest)
//   shard-SSSSS-of-NNNNN.fkdl          image records of a contiguous range of image ids
// Full specification: docs/label-store.md. In a store of derived crops (what `fkd label`
// writes) crop coordinates are not stored: crop c of image i is derived from the manifest's
// sampler and seed, i, c and the image's size by derive_label_crop() (transforms.h); each
// record stores the image size and a hash of its derived crops, which the reader checks. A
// store of explicit crops (imported from elsewhere) stores each crop's pixel box and flip in
// its record instead. store_crop() gives a record's crops either way.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fkd/amp.h"
#include "fkd/transforms.h"

namespace fkd {

/// The most crops per image a store holds (docs/label-store.md, "Limits").
inline constexpr uint32_t kMaxCropsPerImage = 1u << 20;

/// How a teacher's softmax output is quantized (the reference's label types).
enum class LabelType : uint8_t {
  kHard = 0,               ///< argmax only; recovered as one-hot
  kSmoothing = 1,          ///< top-1 index and probability p; others (1-p)/(C-1)
  kMarginalSmoothing = 2,  ///< top-k indices and probabilities; others (1-sum)/(C-k)
  kMarginalRenorm = 3,     ///< top-k probabilities renormalized to sum 1; others 0
  kFull = 4,               ///< all C probabilities
};
/// "hard", "smoothing", "marginal_smoothing", "marginal_renorm", "full"
const char* label_type_name(LabelType t);
LabelType parse_label_type(const std::string& name);  ///< throws ConfigError

/// How stored probabilities are encoded.
enum class Precision : uint8_t {
  kFp32 = 0,  ///< IEEE binary32
  kFp16 = 1,  ///< IEEE binary16 (round to nearest even)
  kU8 = 2,    ///< round(p * 255)
};
const char* precision_name(Precision p);             ///< "fp32", "fp16", "u8"
Precision parse_precision(const std::string& name);  ///< throws ConfigError

/// Values stored per crop for a label type: hard 1 index, smoothing 1+1, marginal k+k,
/// full C values (no indices).
int stored_indices(LabelType t, int k);
int stored_values(LabelType t, int k, int num_classes);

/// Where a store's crops come from (manifest key "crops": "derived" | "explicit").
enum class CropOrigin : uint8_t {
  kDerived = 0,   ///< derive_label_crop(manifest sampler, seed, image, crop, H, W)
  kExplicit = 1,  ///< each record carries its crops' pixel boxes and flips
};
/// "derived", "explicit"
const char* crop_origin_name(CropOrigin o);

/// The labels of one image: everything its record holds, decoded.
struct ImageLabels {
  uint32_t height = 0;     ///< image height when labeled (the crops' pixel grid)
  uint32_t width = 0;      ///< image width when labeled
  uint32_t crop_hash = 0;  ///< hash of the crops (label_crop_hash; see docs/label-store.md)
  uint32_t num_crops = 0;
  /// [num_crops, stored_indices] class ids (int32: any class count), descending probability.
  std::vector<int32_t> indices;
  /// [num_crops, stored_values] probabilities, decoded to float32.
  std::vector<float> values;
  /// [num_crops] explicit-crop stores only: each crop's pixel box in the record's
  /// height x width image and its flip (CropPlan::id = crop number); empty otherwise.
  std::vector<CropPlan> boxes;
};

/// Quantizes one crop's probabilities `probs` [num_classes] (softmax output, sums to 1)
/// into `indices` / `values` (stored_indices / stored_values entries each) for the label
/// type; values are NOT yet rounded to the storage precision. Ties in top-k are broken
/// by the lower class id. Pure.
void quantize_crop(const float* probs, int num_classes, LabelType t, int k, int32_t* indices,
                   float* values);

/// Rounds a value as the precision stores it (for tests and exact comparisons).
float round_to_precision(float v, Precision p);

/// Recovers one crop's dense soft label `out` [num_classes] from its stored indices and
/// values, with the reference's formulas for each label type. Pure.
void recover_dense(LabelType t, int k, int num_classes, const int32_t* indices, const float* values,
                   float* out);

/// The store format version fkd writes (docs/label-store.md): bumped only for structural
/// changes. Readers accept versions 1 to this one.
inline constexpr int kStoreFormatVersion = 3;

/// Everything about a store except the records (manifest.json).
struct Manifest {
  int version = kStoreFormatVersion;  ///< format version (docs/label-store.md)
  // dataset
  uint64_t num_images = 0;           ///< images in the dataset's train split
  std::string dataset_fingerprint;   ///< hex xxh64 of the ordered "relpath\tbytes\n" list
  std::vector<std::string> classes;  ///< class names, index = class id
  std::string dataset;               ///< the --data it was made from (informational)
  uint64_t dataset_limit = 0;        ///< the subset size it was made from (0 = all)
  // teacher
  std::string teacher;       ///< file name or zoo name, for people
  std::string teacher_hash;  ///< hex xxh128 (XXH3) of the teacher file's bytes
  float temperature = 1.0f;
  /// The precision the teacher ran in (--amp, resolved: kOff = float32, kBf16, kFp16); key
  /// teacher_amp, "off" when absent (stores of earlier versions). Part of the identity: the
  /// same crops labeled in bf16 and float32 are different stores.
  AmpMode teacher_amp = AmpMode::kOff;
  // labels
  LabelType label_type = LabelType::kMarginalSmoothing;
  int k = 5;  ///< top-k (marginal types); 1 for hard/smoothing
  Precision precision = Precision::kFp16;
  uint32_t crops_per_image = 0;
  /// kDerived: crop c of image i is derive_label_crop(crop, seed, i, c, height, width).
  /// kExplicit (format version 3 on): every record holds its crops' boxes; `crop` and
  /// `seed` then only describe how they were drawn (informational) except crop.size.
  CropOrigin crop_origin = CropOrigin::kDerived;
  /// The sampler: kind kRandomResized ("random_resized_crop" in manifest.json) or kPadded
  /// ("random_crop"); crop.size is the teacher's input side (key input_size).
  CropSampler crop = {CropKind::kRandomResized, 0, {0.08f, 1.0f}, {3.f / 4.f, 4.f / 3.f}, 0};
  uint64_t seed = 0;  ///< crop sampler seed (informational for explicit crops)
  // teacher input transform (for people and for checks on resume); the size is crop.size
  std::string interpolation = "bilinear";
  std::vector<float> mean, std;
  // sharding
  uint32_t num_shards = 1;  ///< shard files that make up the store
};

/// What a store's labels are, for people: "marginal_smoothing top-5 in fp16", "full in fp32",
/// "smoothing in u8", "hard" (a class id per crop: no probabilities, no precision).
std::string describe_labels(const Manifest& m);

/// Reads and validates manifest.json (FormatError naming the file and field).
Manifest read_manifest(const std::string& store_dir);
/// The manifest in `text` (manifest.json's contents), checked as read_manifest checks a
/// file; messages name `file`.
Manifest parse_manifest(const std::string& text, const std::string& file);
/// Writes manifest.json atomically.
void write_manifest(const std::string& store_dir, const Manifest& m);
/// Lists the fields in which two manifests differ that matter for appending to / reading
/// a store together (everything but num_shards and teacher name): "temperature (1 vs 2)", ...
std::vector<std::string> manifest_differences(const Manifest& a, const Manifest& b);

/// The DatasetOptions::limit that selects the images a store labels from its dataset: its
/// image count. `fkd label --limit L` labels every k-th image, L of them (num_images), and
/// the same limit selects them again; a store of a whole split labels num_images = all of
/// them. The manifest's dataset_limit is informational: an edited one changes nothing.
inline size_t labeled_subset_limit(const Manifest& m) { return size_t(m.num_images); }

/// Images [begin, end) of shard `index` of `count` over `num_images` images.
std::pair<uint64_t, uint64_t> shard_range(uint64_t num_images, uint32_t index, uint32_t count);
/// "shard-00003-of-00008.fkdl"
std::string shard_file_name(uint32_t index, uint32_t count);

/// The crop hash a record of image `image` (height x width pixels) must carry: XXH32 (seed 0)
/// of (left, top, width, height, flip) as little-endian int32 of every crop c in
/// [0, crops_per_image), derived by derive_label_crop from the manifest's sampler and seed.
/// Explicit-crop stores have no derived crops (ConfigError): their records carry the same
/// formula over the stored boxes, which the writer computes and the reader checks.
uint32_t label_crop_hash(const Manifest& m, uint64_t image, uint32_t height, uint32_t width);

/// Crop `crop` of a decoded record of image `image`: its explicit box, or the derived one.
CropPlan store_crop(const Manifest& m, const ImageLabels& rec, uint64_t image, uint32_t crop);

/// Writes one shard: records must be appended in image-id order, each exactly once.
/// Crash-safe: records go to "<shard>.partial" as self-checking blocks; open() on an
/// existing .partial keeps every complete, checksummed block and drops a torn tail, so the
/// labeler resumes from next_image(). finish() appends the index and footer, fsyncs and
/// renames to the final name. A finished shard is never modified.
class ShardWriter {
 public:
  ShardWriter(const std::string& store_dir, const Manifest& m, uint32_t shard_index);
  ~ShardWriter();
  /// The image id the next append must have (begin of the range on a fresh shard).
  uint64_t next_image() const;
  /// True when the final shard file already exists (nothing left to do).
  bool finished() const;
  /// Appends image `image_id`'s record (values rounded to the manifest precision). In an
  /// explicit-crop store labels.boxes must hold num_crops boxes inside the image (DataError
  /// naming the image otherwise); the record's crop_hash is then computed from them.
  void append(uint64_t image_id, const ImageLabels& labels);
  /// Writes index + footer and publishes the shard. All images of the range must be present.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Read-only view of a complete store (all shards), memory-mapped. Thread-safe.
class StoreReader {
 public:
  /// Opens and validates the manifest and every shard's header, index and footer
  /// (FormatError naming the file, offset, expected and found on any inconsistency).
  /// check_crops: read() also checks each record's crop_hash against label_crop_hash (costs
  /// deriving every crop of the image; for debugging).
  explicit StoreReader(const std::string& store_dir, bool check_crops = false);
  ~StoreReader();
  const Manifest& manifest() const;
  uint64_t num_images() const;
  /// Decodes image `image_id`'s record, verifying its block checksum (FormatError if bad).
  void read(uint64_t image_id, ImageLabels& out) const;
  /// True when the record's crop_hash equals label_crop_hash of its stored image size,
  /// i.e. the crops derive_label_crop gives are the ones the teacher labeled (explicit
  /// crops: the hash of the stored boxes, which read() checks anyway).
  bool verify_crops(uint64_t image_id) const;
  /// Total bytes of the shard files (for bytes-per-crop figures).
  uint64_t shard_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// How far labeling of a store has come, from its files alone (read-only): a finished shard
/// counts its whole range, a .partial its complete, verified blocks, a missing shard none.
struct StoreProgress {
  struct Shard {
    uint64_t done = 0, total = 0;  ///< images labeled, images in the shard's range
    bool finished = false;         ///< the final shard file exists
    bool started = false;          ///< a .partial or the final file exists
  };
  uint64_t done = 0, total = 0;  ///< over all shards
  std::vector<Shard> shards;
  /// Every shard finished (a .partial holding its whole range still lacks index and footer).
  bool complete() const {
    for (const Shard& s : shards)
      if (!s.finished) return false;
    return !shards.empty();
  }
};
StoreProgress store_progress(const std::string& store_dir);

/// Averages the dense labels of several stores made on identical crops (same dataset,
/// sampler, seed and crop count, e.g. with --reference-crops; every record's crop hash is
/// compared) and writes them, quantized as the first store, to `out_dir`. A killed run
/// resumes when run again; the manifest is written last. Returns false, writing nothing,
/// when `out_dir` already holds this ensemble (the same command, finished before); refuses
/// any other store there. Members whose teachers ran in different precisions (teacher_amp)
/// are refused unless `mixed_amp`; the ensemble then records the reduced one.
bool ensemble_stores(const std::vector<std::string>& stores, const std::string& out_dir,
                     bool mixed_amp = false);
/// What verify_store found: every damaged record and every shard that cannot be read.
struct StoreVerification {
  /// A record whose block or content is damaged (its labels are lost).
  struct Record {
    std::string shard;    ///< path of the shard file holding it
    uint64_t image = 0;   ///< image id
    uint64_t offset = 0;  ///< byte offset of the record's block in the shard file
    std::string problem;  ///< what is wrong: the reader's one line (names file, offset, image)
  };
  /// A shard that cannot be read at all: missing, unfinished, not a file, or a bad header,
  /// index or footer, or a header of another store.
  struct Shard {
    std::string shard;         ///< path of the shard file
    uint32_t index = 0;        ///< shard index in [0, num_shards)
    uint64_t image_begin = 0;  ///< first image id the shard should hold
    uint64_t image_end = 0;    ///< one past the last
    std::string problem;       ///< what is wrong, one line
  };
  uint64_t images = 0;           ///< images of the store (manifest num_images)
  uint64_t records_checked = 0;  ///< records read: the images of the readable shards
  std::vector<Record> records;   ///< damaged records, in image order
  std::vector<Shard> shards;     ///< unreadable shards, in shard order
  /// When no shard opens because every one disagrees with manifest.json, while the shard
  /// files are intact and agree with one another: one line naming manifest.json and each
  /// difference. The manifest is then the suspect (edited, or another store's), and
  /// relabeling the shards to match it would be wrong. "" otherwise.
  std::string manifest_problem;
  bool ok() const { return records.empty() && shards.empty(); }
  /// Ids of every image whose labels are lost (damaged records and the ranges of
  /// unreadable shards), ascending: what must be labeled again.
  std::vector<uint64_t> damaged_images() const;
};

/// Checks a whole store: every shard's header, index and footer against the manifest, and
/// every record's block checksum, layout, values and crop hash, listing all damage where
/// StoreReader stops at the first. Throws (FormatError / IoError naming the file) only when
/// manifest.json cannot be read. progress(done, total) reports images checked, now and then.
StoreVerification verify_store(
    const std::string& store_dir,
    const std::function<void(uint64_t done, uint64_t total)>& progress = {});

/// Rewrites shard `shard_index` of the store in `store_dir` with `records` in place of the
/// stored records of those images (all in the shard's range; values rounded to the store's
/// precision), copying every other block verbatim after checking its checksum. The shard is
/// built beside the old one and renamed over it: a crash leaves the old shard as it was.
/// FormatError when the shard cannot be opened (a missing or broken shard is relabeled whole).
void replace_records(const std::string& store_dir, uint32_t shard_index,
                     const std::map<uint64_t, ImageLabels>& records);

/// Packs all shards of a complete store into one shard (shard-00000-of-00001.fkdl) in
/// `out_dir`; the records are identical. A store of an older format version comes out in
/// the current one, with the same labels. Returns false, writing nothing, when `out_dir`
/// already holds this merge (the same command, finished before); refuses any other store
/// there.
bool merge_store(const std::string& store_dir, const std::string& out_dir);

}  // namespace fkd
