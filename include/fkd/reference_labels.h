// `fkd label import --format reference` and `fkd label export --format reference`: the
// reference implementation's per-image label files (reference_file.h) to and from a label
// store with explicit crops. Mapping and precision: docs/reference-labels.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fkd {

struct ReferenceImportConfig {
  std::string src;   ///< the reference's label folder: SRC/<class>/<stem>.tar (or SRC/train/...)
  std::string data;  ///< the ImageFolder root whose train split the files label
  std::string out;   ///< the label store to write
  /// "" infers it from the files: [N] hard, [N, 2] smoothing, [N, C] full, [N, 2, k]
  /// marginal_smoothing (or marginal_renorm, which has the same files).
  std::string label_type;
  std::string precision;  ///< "" = as the files: fp16 for float16 labels, else fp32
  int input_size = 224;   ///< the input side the crops are resized to (manifest crop.size)
  uint32_t shards = 1;    ///< shard files of the store
  int threads = 0;        ///< reading threads, 0 = all cores
};

struct ReferenceImportResult {
  uint64_t images = 0;     ///< images imported by this run (a resumed run: the rest)
  uint64_t crops = 0;      ///< crops per image
  uint64_t src_bytes = 0;  ///< bytes of all the source files
  double seconds = 0;
  /// Files below the source folder that label no image of the dataset (a .tar of no image,
  /// a folder of no class, any other file): how many, and their names in name order,
  /// relative to the folder (a folder of no class named once, with its count of files).
  uint64_t ignored_count = 0;
  std::vector<std::string> ignored;
  /// Label files named for more than one image (images of one class whose names agree up
  /// to their first dot, such as a.jpg and a.png): the reference wrote one file for them,
  /// so they were imported with the same labels. How many images share a file with an
  /// earlier one, and the first few as "FILE for IMAGE and IMAGE".
  uint64_t shared_count = 0;
  std::vector<std::string> shared_files;
};

/// Imports every train image's file into an explicit-crop store (resumable: run again after
/// an interruption; the result equals an uninterrupted run's byte for byte). Every file is
/// read and checked before the first record is written: a missing, unreadable or
/// inconsistent file, one that is not a regular file, a crop whose box is empty, top-k
/// probabilities out of order or summing above 1 is one line naming it (DataError /
/// FormatError / IoError) and nothing is written. Files that label no image, and label
/// files shared by several images, are counted and named in the result.
ReferenceImportResult import_reference_labels(const ReferenceImportConfig& cfg);

struct ReferenceExportConfig {
  std::string store;  ///< the label store
  std::string out;    ///< the folder to write: OUT/<class>/<stem>.tar
  std::string data;   ///< the dataset, to name the files; "" = the store manifest's
  bool fp16 = false;  ///< float16 coords and labels (the reference's --use_fp16)
};

struct ReferenceExportResult {
  uint64_t written = 0;      ///< files written by this run
  uint64_t skipped = 0;      ///< complete files found from an earlier run
  uint64_t moved_boxes = 0;  ///< crops whose float16 coords replay to another pixel box
};

/// Writes one reference file per image of a complete store, each atomically (temporary file
/// and rename); files already there that read back as complete are kept, so an interrupted
/// export continues when run again.
ReferenceExportResult export_reference_labels(const ReferenceExportConfig& cfg);

}  // namespace fkd
