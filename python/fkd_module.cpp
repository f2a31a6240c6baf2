// The Python module `fkd`: label stores, the FKD training loader and the store writer of the
// torch-free core, with numpy arrays that share the core's buffers (torch.from_numpy wraps
// them without a copy). No torch ABI: the module links fkd_core only.
//
// Every call that does real work (opening a store, decoding records, producing a batch,
// writing a record) runs with the GIL released, so other Python threads run meanwhile.
// fkd's errors arrive as the Python exceptions fkd.ConfigError, DataError, FormatError and
// IoError (all fkd.Error) carrying fkd's one-line message.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fkd/allocator.h"
#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/loader.h"
#include "fkd/store.h"
#include "fkd/train.h"
#include "fkd/train_input.h"

namespace py = pybind11;
namespace fs = std::filesystem;

// --- arguments -----------------------------------------------------------------------------
// pybind11 refuses an argument of the wrong type by listing every signature over several
// lines. Arguments are taken as given instead (Arg<T>, whose signature still shows T) and
// converted in the function, where the argument's name is known: a wrong type is one
// TypeError line naming it, a value out of range one fkd.ConfigError line.
namespace fkd {
/// An argument naming a file or directory: a str or an os.PathLike (pathlib.Path).
struct PathArg {};
template <typename T>
struct Arg {
  py::object obj;
};
template <typename T>
struct ArgName {
  static constexpr auto name = py::detail::make_caster<T>::name;
};
template <>
struct ArgName<PathArg> {
  static constexpr auto name = py::detail::const_name("str | os.PathLike");
};
}  // namespace fkd

namespace pybind11::detail {
template <typename T>
struct type_caster<fkd::Arg<T>> {
  PYBIND11_TYPE_CASTER(fkd::Arg<T>, fkd::ArgName<T>::name);
  bool load(handle src, bool) {
    value.obj = reinterpret_borrow<object>(src);
    return true;
  }
  static handle cast(const fkd::Arg<T>& a, return_value_policy, handle) { return a.obj.inc_ref(); }
};
}  // namespace pybind11::detail

namespace fkd {
namespace {

/// "int", "str", "PosixPath", "numpy.float64": as Python's own messages name types.
std::string type_name(const py::handle& v) { return Py_TYPE(v.ptr())->tp_name; }

/// TypeError "Loader(): num_crops must be an int, not str".
[[noreturn]] void wrong_type(const char* where, const std::string& name, const char* expected,
                             const py::handle& v) {
  throw py::type_error(
      fmt::format("{}: {} must be {}, not {}", where, name, expected, type_name(v)));
}

/// A Python int (or an object with __index__, such as a numpy integer) in [lo, hi].
int64_t int_arg(const Arg<int64_t>& a, const char* where, const char* name,
                int64_t lo = std::numeric_limits<int64_t>::min(),
                int64_t hi = std::numeric_limits<int64_t>::max()) {
  PyObject* v = a.obj.ptr();
  if (PyFloat_Check(v) || !PyIndex_Check(v)) wrong_type(where, name, "an int", v);
  const py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(v));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow == 0 && x >= lo && x <= hi) return x;
  const std::string shown = py::str(i);
  if (hi == std::numeric_limits<int64_t>::max()) {
    fail<ConfigError>("{} {}: expected an integer of at least {}", name, shown, lo);
  }
  fail<ConfigError>("{} {}: expected an integer in [{}, {}]", name, shown, lo, hi);
}

/// A Python int in [0, 2^64).
uint64_t uint_arg(const Arg<uint64_t>& a, const char* where, const char* name) {
  PyObject* v = a.obj.ptr();
  if (PyFloat_Check(v) || !PyIndex_Check(v)) wrong_type(where, name, "an int", v);
  const py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(v));
  if (!i) throw py::error_already_set();
  const unsigned long long x = PyLong_AsUnsignedLongLong(i.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    fail<ConfigError>("{} {}: expected an integer in [0, 2^64)", name, std::string(py::str(i)));
  }
  return x;
}

/// True or False (a numpy bool, 0 or 1 too).
bool bool_arg(const Arg<bool>& a, const char* where, const char* name) {
  PyObject* v = a.obj.ptr();
  if (PyBool_Check(v)) return v == Py_True;
  if (std::string(Py_TYPE(v)->tp_name) == "numpy.bool_" ||
      std::string(Py_TYPE(v)->tp_name) == "numpy.bool") {
    return PyObject_IsTrue(v) == 1;
  }
  if (PyLong_Check(v)) {
    const long x = PyLong_AsLong(v);
    if (x == 0 || x == 1) return x == 1;
    PyErr_Clear();
  }
  wrong_type(where, name, "a bool", v);
}

std::string str_arg(const Arg<std::string>& a, const char* where, const char* name) {
  if (!PyUnicode_Check(a.obj.ptr())) wrong_type(where, name, "a str", a.obj);
  return a.obj.cast<std::string>();
}

/// A str, or an os.PathLike whose path is a str (pathlib.Path).
std::string path_arg(const Arg<PathArg>& a, const char* where, const char* name) {
  PyObject* v = a.obj.ptr();
  if (PyUnicode_Check(v)) return a.obj.cast<std::string>();
  if (py::hasattr(a.obj, "__fspath__")) {
    const py::object p = py::module_::import("os").attr("fspath")(a.obj);
    if (PyUnicode_Check(p.ptr())) return p.cast<std::string>();
  }
  wrong_type(where, name, "a str or os.PathLike", v);
}

/// A sequence of real numbers (list, tuple, numpy array).
std::vector<float> floats_arg(const Arg<std::vector<float>>& a, const char* where,
                              const char* name) {
  PyObject* v = a.obj.ptr();
  if (PyUnicode_Check(v) || PyBytes_Check(v) || !PySequence_Check(v)) {
    wrong_type(where, name, "a sequence of floats", v);
  }
  std::vector<float> out;
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(a.obj);
  for (size_t k = 0; k < seq.size(); ++k) {
    const py::object x = seq[k];
    if (PyUnicode_Check(x.ptr()) || PyBytes_Check(x.ptr()) || !PyNumber_Check(x.ptr()) ||
        PyComplex_Check(x.ptr())) {
      wrong_type(where, fmt::format("{}[{}]", name, k), "a float", x);
    }
    const double d = PyFloat_AsDouble(x.ptr());
    if (PyErr_Occurred()) throw py::error_already_set();
    out.push_back(float(d));
  }
  return out;
}

py::dict dict_arg(const Arg<py::dict>& a, const char* where, const char* name) {
  if (!PyDict_Check(a.obj.ptr())) wrong_type(where, name, "a dict", a.obj);
  return py::reinterpret_borrow<py::dict>(a.obj);
}

/// An array of T, converted from any array-like of numbers (C order).
template <typename T>
py::array_t<T, py::array::c_style | py::array::forcecast> array_arg(const Arg<py::array_t<T>>& a,
                                                                    const char* where,
                                                                    const char* name,
                                                                    const char* expected) {
  auto arr = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a.obj);
  if (!arr) wrong_type(where, name, expected, a.obj);
  return arr;
}

/// The Python module's name of each option the fkd binary spells as a flag: messages of the
/// checks both share name the argument the caller gave.
std::string python_names(std::string msg) {
  static const std::pair<const char*, const char*> kNames[] = {
      {"--batch-size", "batch_size"},
      {"--num-crops", "num_crops"},
      {"--limit-train", "limit"},
      {"--input-size", "input_size"},
      {"--interpolation", "interpolation"},
      {"--channels", "channels"},
      {"--mean", "mean"},
      {"--std", "std"},
      {"--workers", "workers"},
      {"--seed", "seed"},
      {"--data", "data"},
      {"--labels", "labels"},
      {"--strict-data", "strict"},
      {"--skip-damaged-labels", "skip_damaged_labels"}};
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; };
  for (const auto& [flag, arg] : kNames) {
    const size_t n = std::strlen(flag);
    for (size_t at = msg.find(flag); at != std::string::npos; at = msg.find(flag, at + 1)) {
      if ((at > 0 && word(msg[at - 1])) || (at + n < msg.size() && word(msg[at + n]))) continue;
      msg.replace(at, n, arg);
    }
  }
  return msg;
}

/// Runs f; an fkd error it raises is raised again, of the same type, naming the Python
/// arguments (python_names).
template <typename F>
auto with_python_names(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const WorkMismatch& e) {
    throw WorkMismatch(python_names(e.what()));
  } catch (const ConfigError& e) {
    throw ConfigError(python_names(e.what()));
  } catch (const DataError& e) {
    throw DataError(python_names(e.what()));
  } catch (const FormatError& e) {
    throw FormatError(python_names(e.what()));
  } catch (const NotFoundError& e) {
    throw NotFoundError(python_names(e.what()));
  } catch (const IoError& e) {
    throw IoError(python_names(e.what()));
  }
}

// --- records -------------------------------------------------------------------------------

/// Crop `c` of record `rec` of image `image`: its explicit box, or the one the manifest's
/// sampler and seed derive.
CropPlan record_crop(const Manifest& m, const ImageLabels& rec, uint64_t image, uint32_t c) {
  return store_crop(m, rec, image, c);
}

/// The record a Python caller names, read with the GIL released.
ImageLabels read_record(const StoreReader& store, int64_t image) {
  FKD_CHECK(image >= 0 && uint64_t(image) < store.num_images(), ConfigError,
            "image {} out of range [0, {})", image, store.num_images());
  ImageLabels rec;
  py::gil_scoped_release nogil;
  store.read(uint64_t(image), rec);
  return rec;
}

/// A numpy array over `data`, kept alive by `owner` (no copy).
template <typename T>
py::array_t<T> view(std::vector<py::ssize_t> shape, const T* data, const py::object& owner) {
  return py::array_t<T>(std::move(shape), data, owner);
}

/// A numpy array that takes over v's buffer, shaped `shape`.
template <typename T>
py::array_t<T> array_of(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* held = new std::vector<T>(std::move(v));
  py::capsule owner(held, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return view<T>(std::move(shape), held->data(), owner);
}

// --- Store ---------------------------------------------------------------------------------

/// manifest.json as a dict, with the file's keys.
py::dict manifest_dict(const std::string& store_dir) {
  const std::vector<uint8_t> text =
      read_whole_file((fs::path(store_dir) / "manifest.json").string());
  return py::module_::import("json").attr("loads")(
      py::str(reinterpret_cast<const char*>(text.data()), text.size()));
}

class PyStore {
 public:
  PyStore(const Arg<PathArg>& path, const Arg<bool>& check_crops)
      : path_(path_arg(path, "Store()", "path")) {
    const bool check = bool_arg(check_crops, "Store()", "check_crops");
    py::gil_scoped_release nogil;
    reader_ = std::make_shared<StoreReader>(path_, check);
  }
  const Manifest& manifest() const { return reader_->manifest(); }
  const StoreReader& reader() const { return *reader_; }
  const std::string& path() const { return path_; }

  py::tuple crops(const Arg<int64_t>& image_arg, const Arg<bool>& normalized_arg) const {
    const int64_t image = int_arg(image_arg, "Store.crops()", "image");
    const bool normalized = bool_arg(normalized_arg, "Store.crops()", "normalized");
    const ImageLabels rec = read_record(*reader_, image);
    const size_t n = rec.num_crops;
    std::vector<uint8_t> flips(n);
    std::vector<int32_t> pixels(normalized ? 0 : n * 4);
    std::vector<float> boxes(normalized ? n * 4 : 0);
    for (size_t c = 0; c < n; ++c) {
      const CropPlan p = record_crop(manifest(), rec, uint64_t(image), uint32_t(c));
      flips[c] = p.flip;
      if (normalized) {
        const CropBox b = to_crop_box(p.box, int(rec.height), int(rec.width));
        const float v[4] = {b.i, b.j, b.h, b.w};
        std::copy(v, v + 4, boxes.begin() + ptrdiff_t(c * 4));
      } else {
        const int32_t v[4] = {p.box.left, p.box.top, p.box.width, p.box.height};
        std::copy(v, v + 4, pixels.begin() + ptrdiff_t(c * 4));
      }
    }
    const py::ssize_t rows = py::ssize_t(n);
    py::array flip_array = py::array_t<bool>(rows);
    std::copy(flips.begin(), flips.end(), static_cast<bool*>(flip_array.mutable_data()));
    if (normalized) return py::make_tuple(array_of(std::move(boxes), {rows, 4}), flip_array);
    return py::make_tuple(array_of(std::move(pixels), {rows, 4}), flip_array);
  }

  py::object labels(const Arg<int64_t>& image_arg, const Arg<bool>& dense_arg) const {
    const int64_t image = int_arg(image_arg, "Store.labels()", "image");
    const bool dense = bool_arg(dense_arg, "Store.labels()", "dense");
    ImageLabels rec = read_record(*reader_, image);
    const Manifest& m = manifest();
    const int classes = int(m.classes.size());
    const int ni = stored_indices(m.label_type, m.k),
              nv = stored_values(m.label_type, m.k, classes);
    const py::ssize_t rows = py::ssize_t(rec.num_crops);
    if (dense) {
      std::vector<float> out(size_t(rows) * size_t(classes));
      {
        py::gil_scoped_release nogil;
        for (uint32_t c = 0; c < rec.num_crops; ++c) {
          recover_dense(m.label_type, m.k, classes, rec.indices.data() + size_t(c) * ni,
                        rec.values.data() + size_t(c) * nv, out.data() + size_t(c) * classes);
        }
      }
      return array_of(std::move(out), {rows, classes});
    }
    return py::make_tuple(array_of(std::move(rec.indices), {rows, ni}),
                          array_of(std::move(rec.values), {rows, nv}));
  }

  py::tuple image_size(const Arg<int64_t>& image_arg) const {
    const ImageLabels rec =
        read_record(*reader_, int_arg(image_arg, "Store.image_size()", "image"));
    return py::make_tuple(rec.height, rec.width);
  }

 private:
  std::string path_;
  std::shared_ptr<const StoreReader> reader_;
};

// --- Loader --------------------------------------------------------------------------------

/// The FKD training loader `fkd train --labels` builds for the same configuration.
class PyLoader {
 public:
  PyLoader(const Arg<PathArg>& data, const Arg<PathArg>& labels, const Arg<int64_t>& batch_size,
           const Arg<int64_t>& num_crops, const Arg<int64_t>& workers, const Arg<uint64_t>& seed,
           const Arg<int64_t>& epoch, const Arg<int64_t>& input_size, const Arg<int64_t>& channels,
           const Arg<std::string>& interpolation, const Arg<std::vector<float>>& mean,
           const Arg<std::vector<float>>& std, const Arg<int64_t>& limit, const Arg<bool>& strict,
           const Arg<bool>& skip_damaged_labels, const Arg<int64_t>& rank,
           const Arg<int64_t>& world, const Arg<bool>& with_ids) {
    constexpr const char* kWhere = "Loader()";
    constexpr int64_t kInt = std::numeric_limits<int>::max();
    TrainConfig& c = cfg_;
    c.mode = TrainMode::kFkd;
    c.data = path_arg(data, kWhere, "data");
    c.labels = path_arg(labels, kWhere, "labels");
    c.batch_size = size_t(int_arg(batch_size, kWhere, "batch_size", 1));
    c.num_crops = int(int_arg(num_crops, kWhere, "num_crops", 1, kInt));
    c.workers = int(int_arg(workers, kWhere, "workers", 0, kInt));
    c.seed = uint_arg(seed, kWhere, "seed");
    epoch_ = int_arg(epoch, kWhere, "epoch", 0);
    c.crop.size = int(int_arg(input_size, kWhere, "input_size", 0, kInt));
    c.channels = int(int_arg(channels, kWhere, "channels", 0, kInt));
    c.interp = str_arg(interpolation, kWhere, "interpolation");
    c.mean = floats_arg(mean, kWhere, "mean");
    c.std = floats_arg(std, kWhere, "std");
    c.limit_train = size_t(int_arg(limit, kWhere, "limit", 0));
    c.strict_data = bool_arg(strict, kWhere, "strict");
    c.skip_damaged_labels = bool_arg(skip_damaged_labels, kWhere, "skip_damaged_labels");
    const int r = int(int_arg(rank, kWhere, "rank", 0, kInt));
    const int w = int(int_arg(world, kWhere, "world", 1, kInt));
    with_ids_ = bool_arg(with_ids, kWhere, "with_ids");
    with_python_names([&] {
      // The checks fkd train makes of the same options, before any work.
      validate_input_options(c);
      validate_rank_split(c, r, w);
      py::gil_scoped_release nogil;
      // As fkd train: a store made for a subset trains on that subset.
      if (c.limit_train == 0) c.limit_train = store_subset_size(c.labels);
      auto store = std::make_shared<StoreReader>(c.labels);
      auto ds = open_train_set(c);
      resolve_input(c, *ds);
      auto source = store_crop_source(c, *ds, std::move(store));
      loader_ = std::make_unique<Loader>(std::move(ds), train_transform(c), std::move(source),
                                         train_loader_options(c, r, w));
    });
  }

  bool with_ids() const { return with_ids_; }
  const TrainConfig& config() const { return cfg_; }
  const Loader& loader() const { return *loader_; }
  int64_t epoch() const { return epoch_; }
  void set_epoch(const Arg<int64_t>& e) { epoch_ = int_arg(e, "Loader.set_epoch()", "epoch", 0); }

  /// Starts epoch epoch_ and returns the iteration's number (older iterators stop).
  uint64_t start() {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(mu_);
    loader_->start_epoch(epoch_);
    return ++generation_;
  }

  /// The next batch of iteration `generation`, or null when it is done.
  std::unique_ptr<Batch> next(uint64_t generation) {
    auto b = std::make_unique<Batch>();
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(mu_);
    FKD_CHECK(generation == generation_, ConfigError,
              "this iteration over the loader was replaced by a newer one (iter() starts the "
              "epoch again)");
    if (!loader_->next(*b)) return nullptr;
    return b;
  }

 private:
  TrainConfig cfg_;
  std::unique_ptr<Loader> loader_;
  int64_t epoch_ = 0;
  bool with_ids_ = false;
  std::mutex mu_;  ///< one consumer at a time
  uint64_t generation_ = 0;
};

/// (images [n, c, h, w] float32, soft labels [n, C] float32, targets [n] int64) over the
/// batch's own buffers; the batch lives as long as any of the three arrays. With ids, also
/// (indices [n] int64: each row's image in the whole split, crops [n] int64: its crop's id
/// in the store's record of that image).
py::tuple batch_arrays(std::unique_ptr<Batch> b, const Dataset& ds, bool with_ids) {
  std::vector<int64_t> indices, crops;
  if (with_ids) {
    for (uint32_t s : b->sample) indices.push_back(int64_t(ds.split_index(s)));
    crops.assign(b->crop.begin(), b->crop.end());
  }
  Batch* held = b.release();
  py::capsule owner(held, [](void* p) { delete static_cast<Batch*>(p); });
  const py::ssize_t n = held->n;
  py::tuple t =
      py::make_tuple(view<float>({n, held->c, held->h, held->w}, held->images.get(), owner),
                     view<float>({n, held->soft_classes}, held->soft.data(), owner),
                     view<int64_t>({n}, held->targets.data(), owner));
  if (!with_ids) return t;
  return py::make_tuple(t[0], t[1], t[2], array_of(std::move(indices), {n}),
                        array_of(std::move(crops), {n}));
}

struct LoaderIterator {
  py::object owner;  ///< keeps the PyLoader alive
  PyLoader* loader;
  uint64_t generation;
};

// --- StoreWriter ---------------------------------------------------------------------------

/// Parses a manifest given as a dict with manifest.json's keys ("format" and "version" may be
/// left out), with the store's own reader, so that every check applies.
Manifest manifest_from_dict(const py::dict& d, const std::string& store_dir) {
  py::dict full(d);
  if (!full.contains("format")) full["format"] = "fkd-label-store";
  if (!full.contains("version")) full["version"] = kStoreFormatVersion;
  const std::string text = py::str(py::module_::import("json").attr("dumps")(full));
  // Parsed in memory, by the reader of manifest.json files, naming the store being written.
  try {
    return parse_manifest(text, "manifest for " + store_dir);
  } catch (const FormatError& e) {
    throw ConfigError(e.what());
  }
}

class PyStoreWriter {
 public:
  PyStoreWriter(const Arg<PathArg>& path_a, const Arg<py::dict>& manifest_a,
                const Arg<int64_t>& shard_a)
      : path_(path_arg(path_a, "StoreWriter()", "path")) {
    const py::dict manifest = dict_arg(manifest_a, "StoreWriter()", "manifest");
    const auto shard = uint32_t(
        int_arg(shard_a, "StoreWriter()", "shard", 0, std::numeric_limits<uint32_t>::max()));
    const std::string& path = path_;
    m_ = manifest_from_dict(manifest, path);
    py::gil_scoped_release nogil;
    fs::create_directories(path);
    const fs::path file = fs::path(path) / "manifest.json";
    if (fs::exists(file)) {
      const std::vector<std::string> diffs = manifest_differences(read_manifest(path), m_);
      FKD_CHECK(diffs.empty(), WorkMismatch,
                "{}: holds a store made with another manifest ({}); write to a new directory", path,
                fmt::format("{}", fmt::join(diffs, ", ")));
    } else {
      write_manifest(path, m_);
    }
    writer_ = std::make_unique<ShardWriter>(path, m_, shard);
  }

  void append(const Arg<int64_t>& image_a, const Arg<int64_t>& height_a,
              const Arg<int64_t>& width_a, const Arg<py::array_t<int32_t>>& indices_a,
              const Arg<py::array_t<float>>& values_a, const py::object& boxes,
              const py::object& flips) {
    constexpr const char* kWhere = "StoreWriter.append()";
    constexpr int64_t kMax = std::numeric_limits<uint32_t>::max();
    const int64_t image_id = int_arg(image_a, kWhere, "image_id");
    const auto height = uint32_t(int_arg(height_a, kWhere, "height", 1, kMax));
    const auto width = uint32_t(int_arg(width_a, kWhere, "width", 1, kMax));
    const auto indices = array_arg(indices_a, kWhere, "indices", "an array of int32");
    const auto values = array_arg(values_a, kWhere, "values", "an array of float32");
    FKD_CHECK(image_id >= 0, ConfigError, "{}: image {}: expected an id >= 0", path_, image_id);
    const bool explicit_crops = m_.crop_origin == CropOrigin::kExplicit;
    FKD_CHECK(explicit_crops || (boxes.is_none() && flips.is_none()), ConfigError,
              "{}: image {}: boxes and flips given, but this store's crops are derived from its "
              "sampler and seed (manifest \"crops\": \"explicit\" makes a store of given boxes)",
              path_, image_id);
    FKD_CHECK(!explicit_crops || (!boxes.is_none() && !flips.is_none()), ConfigError,
              "{}: image {}: this store holds explicit crops: append needs boxes and flips", path_,
              image_id);
    const int classes = int(m_.classes.size());
    const size_t ni = size_t(stored_indices(m_.label_type, m_.k));
    const size_t nv = size_t(stored_values(m_.label_type, m_.k, classes));
    const size_t n = m_.crops_per_image;
    FKD_CHECK(size_t(indices.size()) == n * ni, ConfigError,
              "{}: image {}: indices hold {} values, expected {} crops x {} ({} {})", path_,
              image_id, indices.size(), n, ni, label_type_name(m_.label_type), m_.k);
    FKD_CHECK(size_t(values.size()) == n * nv, ConfigError,
              "{}: image {}: values hold {} values, expected {} crops x {} ({} {})", path_,
              image_id, values.size(), n, nv, label_type_name(m_.label_type), m_.k);
    ImageLabels rec;
    rec.height = height;
    rec.width = width;
    rec.num_crops = uint32_t(n);
    rec.indices.assign(indices.data(), indices.data() + indices.size());
    rec.values.assign(values.data(), values.data() + values.size());
    if (explicit_crops) {
      const auto b = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(boxes);
      const auto f = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(flips);
      FKD_CHECK(b && f && size_t(b.size()) == n * 4 && size_t(f.size()) == n, ConfigError,
                "{}: image {}: expected boxes (N, 4) int32 (left, top, width, height) and flips "
                "(N,) bool for N = {} crops",
                path_, image_id, n);
      rec.boxes.resize(n);
      for (size_t c = 0; c < n; ++c) {
        const int32_t* v = b.data() + c * 4;
        rec.boxes[c].box = PixelBox{v[0], v[1], v[2], v[3]};
        rec.boxes[c].flip = f.data()[c];
        rec.boxes[c].id = uint32_t(c);
      }
    }
    py::gil_scoped_release nogil;
    FKD_CHECK(height >= 1 && width >= 1, ConfigError, "{}: image {}: size {}x{}", path_, image_id,
              height, width);
    // Explicit stores: the writer hashes the boxes itself.
    if (!explicit_crops) rec.crop_hash = label_crop_hash(m_, uint64_t(image_id), height, width);
    writer_->append(uint64_t(image_id), rec);
  }

  void finish() {
    py::gil_scoped_release nogil;
    writer_->finish();
  }

  uint64_t next_image() const { return writer_->next_image(); }
  bool finished() const { return writer_->finished(); }

 private:
  std::string path_;
  Manifest m_;
  std::unique_ptr<ShardWriter> writer_;
};

// --- exceptions ----------------------------------------------------------------------------

/// fkd.Error and its subclasses; each also derives from the built-in exception that fits.
struct Exceptions {
  py::object base, config, data, format, io, not_found;
};

py::object new_exception(py::module_& m, const char* name, py::tuple bases, const char* doc) {
  py::object cls = py::reinterpret_steal<py::object>(
      PyErr_NewExceptionWithDoc((std::string("fkd.") + name).c_str(), doc, bases.ptr(), nullptr));
  if (!cls) throw py::error_already_set();
  m.attr(name) = cls;
  return cls;
}

}  // namespace
}  // namespace fkd

PYBIND11_MODULE(fkd, m) {
  using namespace fkd;
  m.doc() =
      "fkd: label stores, the FKD training loader and the store writer of fkd's C++ core. "
      "Arrays are numpy arrays over fkd's own buffers (torch.from_numpy wraps them without a "
      "copy); the GIL is released while fkd works.";
  // The fkd binary's malloc settings, as every Loader applies them (allocator.h).
  configure_malloc();

  static Exceptions ex;
  py::object builtins = py::module_::import("builtins");
  ex.base = new_exception(m, "Error", py::make_tuple(builtins.attr("Exception")),
                          "An error fkd raised on purpose; str() is fkd's one-line message.");
  ex.config = new_exception(m, "ConfigError", py::make_tuple(ex.base, builtins.attr("ValueError")),
                            "An invalid option or combination of options.");
  ex.data = new_exception(m, "DataError", py::make_tuple(ex.base, builtins.attr("ValueError")),
                          "Bad input data: an image that does not decode, a label out of range.");
  ex.format = new_exception(m, "FormatError", py::make_tuple(ex.base, builtins.attr("ValueError")),
                            "A file fkd reads (a store) is malformed, truncated or of an unknown "
                            "version.");
  ex.io = new_exception(m, "IoError", py::make_tuple(ex.base, builtins.attr("OSError")),
                        "The operating system refused a read or write.");
  ex.not_found = new_exception(
      m, "NotFoundError", py::make_tuple(ex.io, builtins.attr("FileNotFoundError")),
      "A file or directory that was named (a store, a dataset) does not exist; also a "
      "FileNotFoundError (errno ENOENT).");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ConfigError& e) {
      PyErr_SetString(ex.config.ptr(), one_line(e.what()).c_str());
    } catch (const DataError& e) {
      PyErr_SetString(ex.data.ptr(), one_line(e.what()).c_str());
    } catch (const FormatError& e) {
      PyErr_SetString(ex.format.ptr(), one_line(e.what()).c_str());
    } catch (const NotFoundError& e) {
      // str() stays fkd's one line: OSError shows "[Errno 2] ..." only with a strerror.
      py::object err = ex.not_found(one_line(e.what()));
      err.attr("errno") = ENOENT;
      PyErr_SetObject(ex.not_found.ptr(), err.ptr());
    } catch (const IoError& e) {
      PyErr_SetString(ex.io.ptr(), one_line(e.what()).c_str());
    } catch (const Error& e) {
      PyErr_SetString(ex.base.ptr(), one_line(e.what()).c_str());
    } catch (const fs::filesystem_error& e) {
      PyErr_SetString(ex.io.ptr(), e.what());
    }
  });

  py::class_<PyStore>(m, "Store",
                      "A finished label store made by `fkd label` (or fkd.StoreWriter), "
                      "read-only and memory-mapped. Thread-safe.")
      .def(py::init<const Arg<PathArg>&, const Arg<bool>&>(), py::arg("path"),
           py::arg("check_crops") = false,
           "Opens the store in directory `path` (a str or pathlib.Path), checking its manifest "
           "and every shard's header, index and footer (fkd.FormatError naming the file "
           "otherwise; fkd.NotFoundError, a FileNotFoundError, when there is no such "
           "directory). check_crops: every read also checks the record's crop hash.")
      .def_property_readonly("path", &PyStore::path)
      .def_property_readonly(
          "manifest", [](const PyStore& s) { return manifest_dict(s.path()); },
          "manifest.json as a dict (docs/label-store.md): dataset, teacher, label type, crops.")
      .def_property_readonly("num_images", [](const PyStore& s) { return s.reader().num_images(); })
      .def("__len__", [](const PyStore& s) { return s.reader().num_images(); })
      .def_property_readonly(
          "classes", [](const PyStore& s) { return s.manifest().classes; },
          "Class names, index = class id.")
      .def_property_readonly("num_classes",
                             [](const PyStore& s) { return s.manifest().classes.size(); })
      .def_property_readonly(
          "label_type", [](const PyStore& s) { return label_type_name(s.manifest().label_type); },
          "hard, smoothing, marginal_smoothing, marginal_renorm or full.")
      .def_property_readonly(
          "k", [](const PyStore& s) { return s.manifest().k; },
          "Top-k of the marginal label types (1 for hard and smoothing).")
      .def_property_readonly(
          "precision", [](const PyStore& s) { return precision_name(s.manifest().precision); },
          "How probabilities are stored: fp32, fp16 or u8.")
      .def_property_readonly("crops_per_image",
                             [](const PyStore& s) { return s.manifest().crops_per_image; })
      .def_property_readonly(
          "shard_bytes", [](const PyStore& s) { return s.reader().shard_bytes(); },
          "Total bytes of the shard files.")
      .def("image_size", &PyStore::image_size, py::arg("image"),
           "(height, width) of image `image` when it was labeled.")
      .def("crops", &PyStore::crops, py::arg("image"), py::arg("normalized") = false,
           "The crops of image `image`: (boxes, flips) with flips a (N,) bool array and boxes "
           "(N, 4) int32 pixel boxes (left, top, width, height), or with normalized=True "
           "(N, 4) float32 (i, j, h, w) = (top/H, left/W, height/H, width/W), as the "
           "reference implementation stores its crops.")
      .def("labels", &PyStore::labels, py::arg("image"), py::arg("dense") = false,
           "The labels of image `image`'s N crops: sparse as stored, (indices (N, I) int32, "
           "values (N, V) float32) with I, V per the label type (marginal types: k each, "
           "descending probability; full: no indices), or dense=True: (N, C) float32 soft "
           "labels recovered with the label type's formula, as training sees them.");

  py::class_<PyLoader>(
      m, "Loader",
      "FKD training loader: decodes each image of `data` once per pass and cuts `num_crops` "
      "of its stored crops from the label store `labels`, each with its dense soft label. "
      "The batches are those `fkd train --data DATA --labels LABELS` trains on with the same "
      "options: iterating yields (images (n, c, h, w) float32 normalized, soft labels (n, C) "
      "float32, targets (n,) int64) numpy arrays over the loader's own buffers (no copy; "
      "torch.from_numpy wraps them), and with with_ids=True also (indices (n,) int64, crop "
      "ids (n,) int64). Rows are grouped by image: image k's crops are rows k*m .. k*m+m-1. "
      "An epoch of the loader is a pass over the images, which counts as num_crops epochs; "
      "set_epoch(p) picks pass p, as torch's DistributedSampler.set_epoch.")
      .def(py::init<const Arg<PathArg>&, const Arg<PathArg>&, const Arg<int64_t>&,
                    const Arg<int64_t>&, const Arg<int64_t>&, const Arg<uint64_t>&,
                    const Arg<int64_t>&, const Arg<int64_t>&, const Arg<int64_t>&,
                    const Arg<std::string>&, const Arg<std::vector<float>>&,
                    const Arg<std::vector<float>>&, const Arg<int64_t>&, const Arg<bool>&,
                    const Arg<bool>&, const Arg<int64_t>&, const Arg<int64_t>&, const Arg<bool>&>(),
           py::arg("data"), py::arg("labels"), py::arg("batch_size") = 128,
           py::arg("num_crops") = 4, py::arg("workers") = 1, py::arg("seed") = 0,
           py::arg("epoch") = 0, py::arg("input_size") = 0, py::arg("channels") = 0,
           py::arg("interpolation") = "bilinear", py::arg("mean") = std::vector<float>{},
           py::arg("std") = std::vector<float>{}, py::arg("limit") = 0, py::arg("strict") = false,
           py::arg("skip_damaged_labels") = false, py::arg("rank") = 0, py::arg("world") = 1,
           py::arg("with_ids") = false,
           "data: fashion-mnist, an IDX folder or an ImageFolder root (train/, val/); labels: "
           "the store (paths as str or pathlib.Path). batch_size crops per batch (a multiple "
           "of num_crops, the crops of each image per pass); workers: decoding threads; seed: "
           "sample order and crop picks; epoch: the first pass. input_size, channels, mean, "
           "std: 0/empty = from the data, as fkd train (Fashion-MNIST 28 px, else the images' "
           "median shorter side up to 224). limit: train on `limit` images spread evenly over "
           "the training split, fkd's --limit-train (subset_indices(n, limit) lists them; not "
           "the first `limit`); default: the subset the store was made for. strict: an "
           "unreadable image raises instead of being skipped. rank/world: this process's "
           "slice of every batch in data-parallel training (world must split a batch into "
           "whole images). with_ids: batches also carry, per row, the image's index in the "
           "whole training split (torchvision's ImageFolder order) and the crop's id in the "
           "store's record of that image. Options are checked as fkd train checks them, and "
           "messages name these arguments.")
      .def(
          "__len__", [](const PyLoader& l) { return l.loader().num_batches(); },
          "Batches per epoch (pass).")
      .def("set_epoch", &PyLoader::set_epoch, py::arg("epoch"),
           "The pass the next iteration yields (its sample order and crop picks).")
      .def_property_readonly("epoch", &PyLoader::epoch)
      .def_property_readonly("batch_size", [](const PyLoader& l) { return l.config().batch_size; })
      .def_property_readonly("num_crops", [](const PyLoader& l) { return l.config().num_crops; })
      .def_property_readonly("input_size", [](const PyLoader& l) { return l.config().crop.size; })
      .def_property_readonly("channels", [](const PyLoader& l) { return l.config().channels; })
      .def_property_readonly("mean", [](const PyLoader& l) { return l.config().mean; })
      .def_property_readonly("std", [](const PyLoader& l) { return l.config().std; })
      .def_property_readonly("interpolation", [](const PyLoader& l) { return l.config().interp; })
      .def_property_readonly("classes",
                             [](const PyLoader& l) { return l.loader().dataset().classes(); })
      .def_property_readonly(
          "num_classes", [](const PyLoader& l) { return l.loader().dataset().classes().size(); })
      .def_property_readonly("num_images",
                             [](const PyLoader& l) { return l.loader().dataset().size(); })
      .def_property_readonly(
          "skipped", [](const PyLoader& l) { return l.loader().skipped(); },
          "Distinct images skipped so far because they failed to load.")
      .def_property_readonly(
          "bad_samples",
          [](const PyLoader& l) {
            py::list out;
            for (const BadSample& s : l.loader().bad_samples()) out.append(s.error);
            return out;
          },
          "The one-line errors of the first images that failed to load.")
      .def("__iter__", [](py::object self) {
        PyLoader& l = self.cast<PyLoader&>();
        const uint64_t generation = l.start();
        return LoaderIterator{self, &l, generation};
      });
  m.attr("FKDLoader") = m.attr("Loader");

  m.def(
      "subset_indices",
      [](const Arg<int64_t>& n, const Arg<int64_t>& limit) {
        const auto all = size_t(int_arg(n, "subset_indices()", "n", 0));
        const auto keep = size_t(int_arg(limit, "subset_indices()", "limit", 0));
        std::vector<int64_t> out;
        for (size_t i : subset_indices(all, keep)) out.push_back(int64_t(i));
        const auto rows = py::ssize_t(out.size());
        return array_of(std::move(out), {rows});
      },
      py::arg("n"), py::arg("limit"),
      "The indices of the samples fkd keeps of a split of n with a limit (fkd's --limit, "
      "--limit-train, --limit-val and Loader's limit): floor(k * n / limit) for k < limit, "
      "spread evenly over the split (an ImageFolder's first images would be its first "
      "classes only); all n when limit is 0 or at least n. (n,) int64 numpy array. "
      "torch.utils.data.Subset(dataset, fkd.subset_indices(len(dataset), limit)) is the "
      "subset fkd evaluates or trains on.");

  py::class_<LoaderIterator>(m, "_LoaderIterator")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", [](LoaderIterator& it) {
        std::unique_ptr<Batch> b = it.loader->next(it.generation);
        if (!b) throw py::stop_iteration();
        return batch_arrays(std::move(b), it.loader->loader().dataset(), it.loader->with_ids());
      });

  py::class_<PyStoreWriter>(
      m, "StoreWriter",
      "Writes one shard of a label store, for importers: records in image-id order, each "
      "once, then finish(). Crash-safe and resumable: reopening an unfinished shard keeps its "
      "complete records (next_image says where to go on).")
      .def(py::init<const Arg<PathArg>&, const Arg<py::dict>&, const Arg<int64_t>&>(),
           py::arg("path"), py::arg("manifest"), py::arg("shard") = 0,
           "path: the store directory; manifest: a dict with manifest.json's keys (as "
           "Store.manifest gives; format and version may be left out), written unless the "
           "directory holds the same one already; shard: which of its num_shards shards.")
      .def_property_readonly("next_image", &PyStoreWriter::next_image,
                             "The image id the next append must have.")
      .def_property_readonly("finished", &PyStoreWriter::finished,
                             "The shard file is complete (nothing left to write).")
      .def("append", &PyStoreWriter::append, py::arg("image_id"), py::arg("height"),
           py::arg("width"), py::arg("indices"), py::arg("values"), py::arg("boxes") = py::none(),
           py::arg("flips") = py::none(),
           "Appends image `image_id`'s record: its size when labeled and its crops' labels "
           "as Store.labels returns them (indices (N, I) int32, values (N, V) float32, any "
           "shape of that many values; values are rounded to the store's precision). In a "
           "store of derived crops they are those the manifest's sampler derives for the "
           "image; a store of explicit crops (manifest \"crops\": \"explicit\") takes each "
           "crop's pixel box, boxes (N, 4) int32 (left, top, width, height) inside the image, "
           "and flips (N,) bool.")
      .def("finish", &PyStoreWriter::finish,
           "Writes the index and footer and publishes the shard.");
}
