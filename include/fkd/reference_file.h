// The reference implementation's soft-label files, read and written without torch.
//
// One file per training image, LABELS/<class>/<stem>.tar for DATA/train/<class>/<stem>.<ext>,
// written by `torch.save([coords, flips, labels])` (PyTorch >= 1.6: a ZIP archive of STORED
// entries holding a protocol-2 pickle, data.pkl, and one entry per torch storage):
//   coords  [N, 4] float32 or float16: crops normalized by the image size (i/H, j/W, h/H, w/W)
//   flips   [N] bool: whether each crop is mirrored
//   labels  marginal top-k [N, 2, k] float (row 0 class ids stored as floats, row 1
//           probabilities); smoothing [N, 2]; hard [N] int64; full [N, C] float
// Each element may be a numpy array or a torch tensor. Specification and mapping to the
// label store: docs/reference-labels.md.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fkd {

/// Element types an array of a reference file may hold (little-endian).
enum class RefDType : uint8_t { kBool, kUint8, kInt32, kInt64, kFloat16, kFloat32, kFloat64 };
const char* ref_dtype_name(RefDType t);  ///< numpy's names: "bool", "float16", "int64", ...
size_t ref_dtype_size(RefDType t);       ///< bytes per element

/// A dense array: numpy ndarray or torch tensor, gathered into C order.
struct RefArray {
  RefDType dtype = RefDType::kFloat32;  ///< element type
  std::vector<int64_t> shape;           ///< dimensions, outermost first
  std::vector<uint8_t> bytes;           ///< numel * ref_dtype_size elements, C order
  bool torch = false;                   ///< a torch tensor (else a numpy array)
  size_t numel() const;
  /// Element `flat` (C order, < numel) converted to double (bool: 0 or 1).
  double at(size_t flat) const;
  /// "float16 [50, 2, 5] numpy": for messages.
  std::string describe() const;
};

/// The three elements of one reference file.
struct ReferenceFile {
  RefArray coords;  ///< [N, 4] float16/32/64
  RefArray flips;   ///< [N] bool (or integer 0/1)
  RefArray labels;  ///< see the file comment
};

/// Parses the bytes of one file (`name` for messages). FormatError with one line naming the
/// file and what was wrong for anything that is not a torch.save archive of a list or tuple of
/// three arrays: truncated or damaged archives, compressed entries, legacy (pre-1.6) files,
/// pickles using anything beyond lists, tuples, numpy arrays, torch tensors and plain
/// scalars. Never reads outside [data, data + size). Shapes are NOT checked here
/// (check_reference_shapes).
ReferenceFile parse_reference_file(const uint8_t* data, size_t size, const std::string& name);
/// Reads and parses a file (IoError when it cannot be read).
ReferenceFile read_reference_file(const std::string& path);

/// The bytes of `torch.save([coords, flips, labels])` for the arrays as given (each written
/// as a numpy array or a torch tensor by its `torch` flag), readable by torch.load.
/// `archive` is the archive's top folder (torch.save uses the file's stem or "archive").
std::string serialize_reference_file(const ReferenceFile& f,
                                     const std::string& archive = "archive");

}  // namespace fkd
