// Reference label files without torch: the ZIP layer is zip_stored.h; this file holds a
// pickle machine that knows just what `torch.save([coords, flips, labels])` emits (lists,
// tuples, numpy arrays and dtypes, torch tensors over persistent storages, OrderedDict,
// plain scalars and strings, memo operations), and the matching writer.
#include "fkd/reference_file.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <unordered_map>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "store/bytes.h"
#include "store/record.h"
#include "store/zip_stored.h"

namespace fkd {

const char* ref_dtype_name(RefDType t) {
  switch (t) {
    case RefDType::kBool:
      return "bool";
    case RefDType::kUint8:
      return "uint8";
    case RefDType::kInt32:
      return "int32";
    case RefDType::kInt64:
      return "int64";
    case RefDType::kFloat16:
      return "float16";
    case RefDType::kFloat32:
      return "float32";
    case RefDType::kFloat64:
      return "float64";
  }
  return "?";
}

size_t ref_dtype_size(RefDType t) {
  switch (t) {
    case RefDType::kBool:
    case RefDType::kUint8:
      return 1;
    case RefDType::kFloat16:
      return 2;
    case RefDType::kInt32:
    case RefDType::kFloat32:
      return 4;
    case RefDType::kInt64:
    case RefDType::kFloat64:
      return 8;
  }
  return 1;
}

size_t RefArray::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

double RefArray::at(size_t flat) const {
  const uint8_t* p = bytes.data() + flat * ref_dtype_size(dtype);
  switch (dtype) {
    case RefDType::kBool:
    case RefDType::kUint8:
      return p[0];
    case RefDType::kInt32:
      return double(int32_t(store::load_u32(p)));
    case RefDType::kInt64:
      return double(int64_t(store::load_u64(p)));
    case RefDType::kFloat16:
      return store::half_to_float(store::load_u16(p));
    case RefDType::kFloat32: {
      const uint32_t u = store::load_u32(p);
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case RefDType::kFloat64: {
      const uint64_t u = store::load_u64(p);
      double d;
      std::memcpy(&d, &u, 8);
      return d;
    }
  }
  return 0;
}

std::string RefArray::describe() const {
  std::string dims;
  for (size_t d = 0; d < shape.size(); ++d) dims += (d ? ", " : "") + std::to_string(shape[d]);
  return fmt::format("{} [{}] {}", ref_dtype_name(dtype), dims, torch ? "tensor" : "numpy array");
}

namespace {

// The most elements one array may hold: far above any reference file (50,000 crops of
// 1,000-class full labels is 5e7), low enough that a forged shape cannot exhaust memory.
constexpr uint64_t kMaxElements = uint64_t(1) << 28;

// How deep values may nest. A reference file nests three levels (the list of arrays, a
// tensor's arguments, its size tuple); the bound keeps a forged file from building chains
// that no reader of these files would walk.
constexpr uint32_t kMaxDepth = 64;

// The memory the values of one file may take, as a multiple of the file's size plus a fixed
// allowance. A reference file's arrays take about its size once decoded (protocol 2's bytes
// twice: as text, then as bytes); a forged file could otherwise make each few-byte opcode
// copy a large string again, or create objects far bigger than the bytes that make them.
constexpr uint64_t kBytesPerFileByte = 4;
constexpr uint64_t kFixedAllowance = uint64_t(16) << 20;

// --- pickle values ------------------------------------------------------------------------
// Values live in the machine's arena and refer to each other by plain pointers: freeing
// them is one flat loop whatever the file nests (and a value placed inside itself is no leak).
struct Obj;
using Ref = Obj*;
struct Obj {
  enum Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kBytes,
    kList,
    kTuple,
    kDict,
    kGlobal,
    kArray,
    kStorage,
    kDType
  };
  Kind kind = kNone;
  int64_t i = 0;                        // kBool, kInt
  double f = 0;                         // kFloat
  std::string s;                        // kStr, kBytes; kGlobal "module.name"
  std::vector<Ref> items;               // kList, kTuple; kDict key, value, key, value...
  RefArray array;                       // kArray
  bool pending = false;                 // kArray: a numpy array still waiting for its BUILD state
  RefDType dtype = RefDType::kFloat32;  // kStorage, kDType
  const store::ZipEntry* storage = nullptr;  // kStorage
  uint32_t depth = 0;      // nesting levels below: 0 for a scalar, 1 + the deepest item's
  bool contained = false;  // placed inside a list, tuple or dict (then no longer changed)
};

const char* kind_name(Obj::Kind k) {
  static const char* names[] = {"None",  "bool", "int",    "float", "str",     "bytes", "list",
                                "tuple", "dict", "global", "array", "storage", "dtype"};
  return names[k];
}

// numpy's dtype codes ("f4", "<f2", "|b1") and torch's storage classes.
bool parse_numpy_code(std::string code, RefDType& t) {
  if (!code.empty() && (code[0] == '<' || code[0] == '|' || code[0] == '=')) code.erase(0, 1);
  static const std::pair<const char*, RefDType> codes[] = {
      {"b1", RefDType::kBool},    {"?", RefDType::kBool},    {"u1", RefDType::kUint8},
      {"i4", RefDType::kInt32},   {"i8", RefDType::kInt64},  {"f2", RefDType::kFloat16},
      {"f4", RefDType::kFloat32}, {"f8", RefDType::kFloat64}};
  for (const auto& [c, v] : codes)
    if (code == c) return t = v, true;
  return false;
}
bool parse_storage_class(const std::string& global, RefDType& t) {
  static const std::pair<const char*, RefDType> classes[] = {
      {"torch.BoolStorage", RefDType::kBool},     {"torch.ByteStorage", RefDType::kUint8},
      {"torch.IntStorage", RefDType::kInt32},     {"torch.LongStorage", RefDType::kInt64},
      {"torch.HalfStorage", RefDType::kFloat16},  {"torch.FloatStorage", RefDType::kFloat32},
      {"torch.DoubleStorage", RefDType::kFloat64}};
  for (const auto& [c, v] : classes)
    if (global == c) return t = v, true;
  return false;
}
const char* numpy_code(RefDType t) {
  switch (t) {
    case RefDType::kBool:
      return "b1";
    case RefDType::kUint8:
      return "u1";
    case RefDType::kInt32:
      return "i4";
    case RefDType::kInt64:
      return "i8";
    case RefDType::kFloat16:
      return "f2";
    case RefDType::kFloat32:
      return "f4";
    case RefDType::kFloat64:
      return "f8";
  }
  return "f4";
}
const char* storage_class(RefDType t) {
  switch (t) {
    case RefDType::kBool:
      return "BoolStorage";
    case RefDType::kUint8:
      return "ByteStorage";
    case RefDType::kInt32:
      return "IntStorage";
    case RefDType::kInt64:
      return "LongStorage";
    case RefDType::kFloat16:
      return "HalfStorage";
    case RefDType::kFloat32:
      return "FloatStorage";
    case RefDType::kFloat64:
      return "DoubleStorage";
  }
  return "FloatStorage";
}

// --- the pickle machine ---------------------------------------------------------------------
class Unpickler {
 public:
  /// `file_size`: the whole file's, which bounds the memory its values may take.
  Unpickler(const uint8_t* data, size_t size, const std::string& file, const std::string& prefix,
            const std::vector<store::ZipEntry>& entries, uint64_t file_size)
      : p_(data),
        size_(size),
        file_(file),
        prefix_(prefix),
        entries_(entries),
        budget_(kFixedAllowance + kBytesPerFileByte * file_size) {}

  Ref run() {
    for (;;) {
      const size_t at = pos_;
      const uint8_t op = u8();
      switch (op) {
        case 0x80:  // PROTO
          u8();
          break;
        case 0x95:  // FRAME: the frames are read in place
          take(8);
          break;
        case '.': {  // STOP
          FKD_CHECK(stack_.size() == 1 && marks_.empty(), FormatError,
                    "{}: data.pkl ends with {} values on the pickle stack, expected 1", file_,
                    stack_.size());
          return stack_.back();
        }
        case ']':  // EMPTY_LIST
          push(make(Obj::kList, at));
          break;
        case ')':  // EMPTY_TUPLE
          push(make(Obj::kTuple, at));
          break;
        case '}':  // EMPTY_DICT
          push(make(Obj::kDict, at));
          break;
        case '(':  // MARK
          charge(sizeof(size_t), at);
          marks_.push_back(stack_.size());
          break;
        case 'a': {  // APPEND
          Ref v = pop();
          place(list_at_top(), v, at);
          break;
        }
        case 'e': {  // APPENDS
          std::vector<Ref> vs = pop_mark();
          Ref l = list_at_top();
          for (Ref v : vs) place(l, v, at);
          break;
        }
        case 's': {  // SETITEM
          Ref v = pop(), k = pop();
          Ref d = dict_at_top();
          place(d, k, at);
          place(d, v, at);
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<Ref> kvs = pop_mark();
          FKD_CHECK(kvs.size() % 2 == 0, FormatError,
                    "{}: data.pkl offset {}: SETITEMS with an odd number of values", file_, at);
          Ref d = dict_at_top();
          for (Ref v : kvs) place(d, v, at);
          break;
        }
        case 't':  // TUPLE
          tuple(pop_mark(), at);
          break;
        case 0x85:  // TUPLE1
          tuple_n(1, at);
          break;
        case 0x86:  // TUPLE2
          tuple_n(2, at);
          break;
        case 0x87:  // TUPLE3
          tuple_n(3, at);
          break;
        case 'q':  // BINPUT
          memo_put(u8(), at);
          break;
        case 'r':  // LONG_BINPUT
          memo_put(uint32(4), at);
          break;
        case 0x94:  // MEMOIZE
          memo_put(memo_.size(), at);
          break;
        case 'h':  // BINGET
          memo_get(u8(), at);
          break;
        case 'j':  // LONG_BINGET
          memo_get(uint32(4), at);
          break;
        case 'N':  // NONE
          push(make(Obj::kNone, at));
          break;
        case 0x88:  // NEWTRUE
          push_bool(true, at);
          break;
        case 0x89:  // NEWFALSE
          push_bool(false, at);
          break;
        case 'K':  // BININT1
          push_int(int64_t(u8()), at);
          break;
        case 'M':  // BININT2
          push_int(int64_t(uint32(2)), at);
          break;
        case 'J':  // BININT
          push_int(int64_t(int32_t(uint32(4))), at);
          break;
        case 0x8a:  // LONG1
          push_int(long1(at), at);
          break;
        case 'G': {  // BINFLOAT, big-endian
          const uint8_t* b = take(8);
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = u << 8 | b[k];
          Ref o = make(Obj::kFloat, at);
          std::memcpy(&o->f, &u, 8);
          push(o);
          break;
        }
        case 0x8c:  // SHORT_BINUNICODE
          push_text(Obj::kStr, u8(), at);
          break;
        case 'X':  // BINUNICODE
          push_text(Obj::kStr, uint32(4), at);
          break;
        case 0x8d:  // BINUNICODE8
          push_text(Obj::kStr, uint64(at), at);
          break;
        case 'C':  // SHORT_BINBYTES
          push_text(Obj::kBytes, u8(), at);
          break;
        case 'B':  // BINBYTES
          push_text(Obj::kBytes, uint32(4), at);
          break;
        case 0x8e:  // BINBYTES8
          push_text(Obj::kBytes, uint64(at), at);
          break;
        case 'c': {  // GLOBAL "module\nname\n"
          Ref g = make(Obj::kGlobal, at);
          g->s = line(at);  // the module, then the name: two statements, in this order
          g->s += "." + line(at);
          charge(g->s.size(), at);
          push(g);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Ref name = pop(), module = pop();
          FKD_CHECK(name->kind == Obj::kStr && module->kind == Obj::kStr, FormatError,
                    "{}: data.pkl offset {}: STACK_GLOBAL expects two strings", file_, at);
          Ref g = make(Obj::kGlobal, at);
          charge(module->s.size() + name->s.size() + 1, at);
          g->s = module->s + "." + name->s;
          push(g);
          break;
        }
        case 'Q':  // BINPERSID
          push(persistent(pop(), at));
          break;
        case 'R': {  // REDUCE
          Ref args = pop(), callable = pop();
          push(reduce(callable, args, at));
          break;
        }
        case 'b': {  // BUILD
          Ref state = pop();
          build(top(at), state, at);
          break;
        }
        default:
          fkd::fail<FormatError>(
              "{}: data.pkl offset {}: pickle opcode 0x{:02x} is not one a reference label file "
              "holds",
              file_, at, op);
      }
    }
  }

 private:
  // --- input ---
  const uint8_t* take(uint64_t n) {
    FKD_CHECK(n <= size_ - pos_, FormatError,
              "{}: data.pkl ends at byte {} in the middle of a pickle value (truncated)", file_,
              size_);
    const uint8_t* b = p_ + pos_;
    pos_ += n;
    return b;
  }
  uint8_t u8() { return *take(1); }
  uint32_t uint32(int n) {
    const uint8_t* b = take(n);
    uint32_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = v << 8 | b[k];
    return v;
  }
  uint64_t uint64(size_t at) {
    const uint8_t* b = take(8);
    return store::load_u64(b);
  }
  int64_t long1(size_t at) {
    const uint8_t n = u8();
    FKD_CHECK(n <= 8, FormatError, "{}: data.pkl offset {}: an integer of {} bytes", file_, at, n);
    const uint8_t* b = take(n);
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = v << 8 | b[k];
    if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
    return int64_t(v);
  }
  std::string line(size_t at) {
    const size_t begin = pos_;
    while (pos_ < size_ && p_[pos_] != '\n') ++pos_;
    FKD_CHECK(pos_ < size_, FormatError, "{}: data.pkl offset {}: GLOBAL name runs to the end",
              file_, at);
    std::string s(reinterpret_cast<const char*>(p_ + begin), pos_ - begin);
    ++pos_;
    return s;
  }

  // --- memory ---
  /// Counts `bytes` more of values against the file's budget; FormatError past it.
  void charge(uint64_t bytes, size_t at) {
    FKD_CHECK(bytes <= budget_ - used_, FormatError,
              "{}: data.pkl offset {}: the pickle builds more than {} bytes of values (at most "
              "{} per byte of the file and {} more): not a reference label file",
              file_, at, budget_, kBytesPerFileByte, kFixedAllowance);
    used_ += bytes;
  }
  /// A new value of kind `k`, owned by the arena.
  Ref make(Obj::Kind k, size_t at) {
    charge(sizeof(Obj) + sizeof(std::unique_ptr<Obj>), at);
    arena_.push_back(std::make_unique<Obj>());
    arena_.back()->kind = k;
    return arena_.back().get();
  }
  /// Puts `v` into the list or dict `c` (APPEND, SETITEM), or into a tuple being built.
  void place(Ref c, Ref v, size_t at) {
    FKD_CHECK(!c->contained, FormatError,
              "{}: data.pkl offset {}: a {} is changed after it was placed in another value", file_,
              at, kind_name(c->kind));
    charge(sizeof(Ref), at);
    v->contained = true;
    c->depth = std::max(c->depth, v->depth + 1);
    FKD_CHECK(c->depth <= kMaxDepth, FormatError,
              "{}: data.pkl offset {}: values nested more than {} levels deep (a reference "
              "label file nests 3)",
              file_, at, kMaxDepth);
    c->items.push_back(v);
  }

  // --- stack ---
  void push(Ref o) {
    charge(sizeof(Ref), pos_);
    stack_.push_back(o);
  }
  void push_bool(bool b, size_t at) {
    Ref o = make(Obj::kBool, at);
    o->i = b;
    push(o);
  }
  void push_int(int64_t v, size_t at) {
    Ref o = make(Obj::kInt, at);
    o->i = v;
    push(o);
  }
  void push_text(Obj::Kind k, uint64_t n, size_t at) {
    Ref o = make(k, at);
    const uint8_t* b = take(n);
    charge(n, at);
    o->s.assign(reinterpret_cast<const char*>(b), n);
    push(o);
  }
  Ref pop() {
    FKD_CHECK(!stack_.empty() && (marks_.empty() || stack_.size() > marks_.back()), FormatError,
              "{}: data.pkl offset {}: pickle stack underflow", file_, pos_);
    Ref o = stack_.back();
    stack_.pop_back();
    return o;
  }
  Ref top(size_t at) {
    FKD_CHECK(!stack_.empty(), FormatError, "{}: data.pkl offset {}: pickle stack underflow", file_,
              at);
    return stack_.back();
  }
  std::vector<Ref> pop_mark() {
    FKD_CHECK(!marks_.empty(), FormatError, "{}: data.pkl offset {}: no MARK on the stack", file_,
              pos_);
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Ref> vs(stack_.begin() + ptrdiff_t(m), stack_.end());
    stack_.resize(m);
    return vs;
  }
  Ref list_at_top() {
    Ref l = top(pos_);
    FKD_CHECK(l->kind == Obj::kList, FormatError,
              "{}: data.pkl offset {}: APPEND to a {}, expected a list", file_, pos_,
              kind_name(l->kind));
    return l;
  }
  Ref dict_at_top() {
    Ref d = top(pos_);
    FKD_CHECK(d->kind == Obj::kDict, FormatError,
              "{}: data.pkl offset {}: SETITEM on a {}, expected a dict", file_, pos_,
              kind_name(d->kind));
    return d;
  }
  void tuple(const std::vector<Ref>& items, size_t at) {
    Ref t = make(Obj::kTuple, at);
    for (Ref v : items) place(t, v, at);
    push(t);
  }
  void tuple_n(size_t n, size_t at) {
    FKD_CHECK(stack_.size() >= n && (marks_.empty() || stack_.size() - n >= marks_.back()),
              FormatError, "{}: data.pkl offset {}: pickle stack underflow", file_, pos_);
    const std::vector<Ref> items(stack_.end() - ptrdiff_t(n), stack_.end());
    stack_.resize(stack_.size() - n);
    tuple(items, at);
  }
  void memo_put(uint64_t key, size_t at) {
    FKD_CHECK(!stack_.empty(), FormatError, "{}: data.pkl offset {}: memo put on an empty stack",
              file_, pos_);
    charge(64, at);  // a hash map node
    memo_[key] = stack_.back();
  }
  void memo_get(uint64_t key, size_t at) {
    auto it = memo_.find(key);
    FKD_CHECK(it != memo_.end(), FormatError, "{}: data.pkl offset {}: memo key {} was never put",
              file_, at, key);
    push(it->second);
  }

  // --- typed access ---
  const Obj& expect(const Ref& o, Obj::Kind k, const char* what, size_t at) const {
    FKD_CHECK(o->kind == k, FormatError, "{}: data.pkl offset {}: {}: expected a {}, found a {}",
              file_, at, what, kind_name(k), kind_name(o->kind));
    return *o;
  }
  const std::vector<Ref>& tuple_of(const Ref& o, size_t lo, size_t hi, const char* what,
                                   size_t at) const {
    expect(o, Obj::kTuple, what, at);
    FKD_CHECK(o->items.size() >= lo && o->items.size() <= hi, FormatError,
              "{}: data.pkl offset {}: {}: expected {} to {} values, found {}", file_, at, what, lo,
              hi, o->items.size());
    return o->items;
  }
  std::vector<int64_t> ints(const Ref& o, const char* what, size_t at) const {
    std::vector<int64_t> v;
    for (const Ref& x : tuple_of(o, 0, 8, what, at)) {
      expect(x, Obj::kInt, what, at);
      FKD_CHECK(x->i >= 0 && uint64_t(x->i) <= kMaxElements, FormatError,
                "{}: data.pkl offset {}: {} {} out of range", file_, at, what, x->i);
      v.push_back(x->i);
    }
    return v;
  }
  uint64_t count(const std::vector<int64_t>& shape, size_t at) const {
    uint64_t n = 1;
    for (int64_t d : shape) {
      n *= uint64_t(d);  // each d <= 2^28 and n <= 2^28 before: no overflow
      FKD_CHECK(n <= kMaxElements, FormatError,
                "{}: data.pkl offset {}: an array of more than {} elements", file_, at,
                kMaxElements);
    }
    return n;
  }

  // Copies the elements of an array laid out with element `strides` from `offset` in `src`
  // (`src_elems` elements) into C order; every index is checked against `src_elems`.
  void gather(RefArray& a, const uint8_t* src, uint64_t src_elems, uint64_t offset,
              const std::vector<int64_t>& strides, size_t at) {
    const size_t item = ref_dtype_size(a.dtype), n = a.numel(), dims = a.shape.size();
    if (n == 0) return;
    uint64_t last = offset;  // the highest element the array touches
    for (size_t d = 0; d < dims; ++d) last += uint64_t(a.shape[d] - 1) * uint64_t(strides[d]);
    FKD_CHECK(last < src_elems, FormatError,
              "{}: data.pkl offset {}: a {} reaches element {} of a storage of {}", file_, at,
              a.describe(), last, src_elems);
    charge(uint64_t(n) * item, at);
    a.bytes.resize(n * item);
    std::vector<int64_t> idx(dims, 0);
    uint64_t from = offset;
    for (size_t k = 0; k < n; ++k) {
      std::memcpy(a.bytes.data() + k * item, src + from * item, item);
      for (size_t d = dims; d-- > 0;) {  // odometer, innermost dimension first
        if (++idx[d] < a.shape[d]) {
          from += uint64_t(strides[d]);
          break;
        }
        from -= uint64_t(strides[d]) * uint64_t(idx[d] - 1);
        idx[d] = 0;
      }
    }
  }

  std::string latin1(const std::string& utf8, size_t at) {
    // Protocol 2 has no bytes type: Python pickles bytes b as _codecs.encode(b.decode('latin1'),
    // 'latin1'), the string UTF-8 encoded; every code point is below 256.
    charge(utf8.size(), at);
    std::string out;
    out.reserve(utf8.size());
    for (size_t k = 0; k < utf8.size(); ++k) {
      const uint8_t c = uint8_t(utf8[k]);
      if (c < 0x80) {
        out.push_back(char(c));
        continue;
      }
      FKD_CHECK(
          (c == 0xc2 || c == 0xc3) && k + 1 < utf8.size() && (uint8_t(utf8[k + 1]) & 0xc0) == 0x80,
          FormatError, "{}: data.pkl offset {}: _codecs.encode of a non-latin-1 string", file_, at);
      out.push_back(char(((c & 0x1f) << 6) | (uint8_t(utf8[++k]) & 0x3f)));
    }
    return out;
  }

  Ref persistent(const Ref& pid, size_t at) {
    const auto& t = tuple_of(pid, 5, 5, "persistent id", at);
    FKD_CHECK(t[0]->kind == Obj::kStr && t[0]->s == "storage", FormatError,
              "{}: data.pkl offset {}: a persistent id that is not a torch storage", file_, at);
    Ref st = make(Obj::kStorage, at);
    const Obj& cls = expect(t[1], Obj::kGlobal, "storage class", at);
    FKD_CHECK(parse_storage_class(cls.s, st->dtype), FormatError,
              "{}: data.pkl offset {}: storage class {} is not one of Bool, Byte, Int, Long, "
              "Half, Float, Double",
              file_, at, cls.s);
    const std::string key = expect(t[2], Obj::kStr, "storage key", at).s;
    const std::string name = prefix_ + "data/" + key;
    for (const store::ZipEntry& e : entries_)
      if (e.name == name) st->storage = &e;
    FKD_CHECK(st->storage, FormatError, "{}: the archive has no entry {} (storage {})", file_, name,
              key);
    return st;
  }

  Ref reduce(const Ref& callable, const Ref& args, size_t at) {
    const std::string& g = expect(callable, Obj::kGlobal, "REDUCE callable", at).s;
    if (g == "_codecs.encode") {
      const auto& a = tuple_of(args, 2, 2, "_codecs.encode arguments", at);
      const std::string& enc = expect(a[1], Obj::kStr, "encoding", at).s;
      FKD_CHECK(enc == "latin1" || enc == "latin-1", FormatError,
                "{}: data.pkl offset {}: _codecs.encode to {}, expected latin1", file_, at, enc);
      Ref b = make(Obj::kBytes, at);
      b->s = latin1(expect(a[0], Obj::kStr, "_codecs.encode text", at).s, at);
      return b;
    }
    if (g == "numpy.core.multiarray._reconstruct" || g == "numpy._core.multiarray._reconstruct") {
      const auto& a = tuple_of(args, 3, 3, "_reconstruct arguments", at);
      FKD_CHECK(a[0]->kind == Obj::kGlobal && a[0]->s == "numpy.ndarray", FormatError,
                "{}: data.pkl offset {}: _reconstruct of a {}, expected numpy.ndarray", file_, at,
                a[0]->kind == Obj::kGlobal ? a[0]->s : kind_name(a[0]->kind));
      Ref o = make(Obj::kArray, at);
      o->pending = true;
      return o;
    }
    if (g == "numpy.dtype") {
      const auto& a = tuple_of(args, 1, 3, "numpy.dtype arguments", at);
      Ref d = make(Obj::kDType, at);
      const std::string& code = expect(a[0], Obj::kStr, "dtype code", at).s;
      FKD_CHECK(parse_numpy_code(code, d->dtype), FormatError,
                "{}: data.pkl offset {}: numpy dtype '{}' is not bool, uint8, int32, int64, "
                "float16, float32 or float64",
                file_, at, code);
      return d;
    }
    if (g == "torch._utils._rebuild_tensor_v2") {
      const auto& a = tuple_of(args, 6, 7, "_rebuild_tensor_v2 arguments", at);
      const Obj& st = expect(a[0], Obj::kStorage, "tensor storage", at);
      const int64_t offset = expect(a[1], Obj::kInt, "storage offset", at).i;
      Ref o = make(Obj::kArray, at);
      o->array.torch = true;
      o->array.dtype = st.dtype;
      o->array.shape = ints(a[2], "tensor size", at);
      const std::vector<int64_t> strides = ints(a[3], "tensor stride", at);
      FKD_CHECK(strides.size() == o->array.shape.size() && offset >= 0 &&
                    uint64_t(offset) <= kMaxElements,
                FormatError, "{}: data.pkl offset {}: tensor of {} dimensions with {} strides",
                file_, at, o->array.shape.size(), strides.size());
      count(o->array.shape, at);
      const size_t item = ref_dtype_size(st.dtype);
      gather(o->array, st.storage->data, st.storage->size / item, uint64_t(offset), strides, at);
      return o;
    }
    if (g == "__builtin__.bytes" || g == "builtins.bytes") {  // protocol 2's empty bytes
      tuple_of(args, 0, 0, "bytes arguments", at);
      return make(Obj::kBytes, at);
    }
    if (g == "collections.OrderedDict") {
      tuple_of(args, 0, 0, "OrderedDict arguments", at);
      return make(Obj::kDict, at);
    }
    fkd::fail<FormatError>(
        "{}: data.pkl offset {}: the pickle calls {}, which a reference label file does not hold",
        file_, at, g);
  }

  void build(const Ref& obj, const Ref& state, size_t at) {
    if (obj->kind == Obj::kDType) {
      const auto& s = tuple_of(state, 8, 9, "numpy dtype state", at);
      const std::string& order = expect(s[1], Obj::kStr, "dtype byte order", at).s;
      FKD_CHECK(order == "<" || order == "|" || order == "=", FormatError,
                "{}: data.pkl offset {}: numpy dtype of byte order '{}', expected little-endian",
                file_, at, order);
      FKD_CHECK(s[3]->kind == Obj::kNone, FormatError,
                "{}: data.pkl offset {}: a structured numpy dtype", file_, at);
      return;
    }
    FKD_CHECK(obj->kind == Obj::kArray && obj->pending, FormatError,
              "{}: data.pkl offset {}: BUILD on a {}, expected a numpy array", file_, at,
              kind_name(obj->kind));
    // ndarray.__setstate__((version, shape, dtype, is_fortran, data)), version optional.
    const auto& s = tuple_of(state, 4, 5, "numpy array state", at);
    const size_t o = s.size() - 4;
    RefArray& a = obj->array;
    a.shape = ints(s[o], "array shape", at);
    a.dtype = expect(s[o + 1], Obj::kDType, "array dtype", at).dtype;
    const bool fortran = expect(s[o + 2], Obj::kBool, "array order", at).i != 0;
    const std::string& raw = s[o + 3]->kind == Obj::kStr
                                 ? s[o + 3]->s
                                 : expect(s[o + 3], Obj::kBytes, "array data", at).s;
    const uint64_t n = count(a.shape, at);
    FKD_CHECK(raw.size() == n * ref_dtype_size(a.dtype), FormatError,
              "{}: data.pkl offset {}: a {} array of shape [{}] holds {} bytes, expected {}", file_,
              at, ref_dtype_name(a.dtype), fmt::join(a.shape, ", "), raw.size(),
              n * ref_dtype_size(a.dtype));
    std::vector<int64_t> strides(a.shape.size());
    int64_t step = 1;
    for (size_t d = 0; d < a.shape.size(); ++d) {  // the data's own element order
      const size_t dim = fortran ? d : a.shape.size() - 1 - d;
      strides[dim] = step;
      step *= a.shape[dim];
    }
    gather(a, reinterpret_cast<const uint8_t*>(raw.data()), n, 0, strides, at);
    obj->pending = false;
  }

  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& file_;
  const std::string& prefix_;
  const std::vector<store::ZipEntry>& entries_;
  std::vector<std::unique_ptr<Obj>> arena_;  ///< every value, freed together
  std::vector<Ref> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Ref> memo_;
  uint64_t budget_, used_ = 0;  ///< bytes of values allowed and taken
};

}  // namespace

ReferenceFile parse_reference_file(const uint8_t* data, size_t size, const std::string& name) {
  // Before 1.6, torch.save wrote pickles one after another; the first is the magic number
  // 0x1950a86a20f9469cfc6c as a LONG1 (0x8a 0x0a).
  FKD_CHECK(!(size >= 4 && data[0] == 0x80 && data[2] == 0x8a && data[3] == 0x0a), FormatError,
            "{}: a legacy (PyTorch < 1.6) torch.save file; load and save it again with PyTorch "
            ">= 1.6",
            name);
  const std::vector<store::ZipEntry> entries = store::read_zip_stored(data, size, name);
  const store::ZipEntry* pkl = nullptr;
  std::string prefix;
  for (const store::ZipEntry& e : entries) {
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash + 1, std::string::npos, "data.pkl") == 0)
      pkl = &e, prefix = e.name.substr(0, slash + 1);
  }
  FKD_CHECK(pkl, FormatError, "{}: a ZIP archive without <archive>/data.pkl: not a torch.save file",
            name);
  for (const store::ZipEntry& e : entries) {
    if (e.name != prefix + "byteorder") continue;
    const std::string order(reinterpret_cast<const char*>(e.data), e.size);
    FKD_CHECK(order == "little", FormatError,
              "{}: storages of byte order '{}', only little-endian files are read", name, order);
  }
  Unpickler vm(pkl->data, pkl->size, name, prefix, entries, size);
  const Ref top = vm.run();
  FKD_CHECK(top->kind == Obj::kList || top->kind == Obj::kTuple, FormatError,
            "{}: holds a {}, expected a list [coords, flips, labels]", name, kind_name(top->kind));
  FKD_CHECK(top->items.size() == 3, FormatError,
            "{}: holds a {} of {} values, expected 3: [coords, flips, labels]", name,
            kind_name(top->kind), top->items.size());
  ReferenceFile f;
  RefArray* out[3] = {&f.coords, &f.flips, &f.labels};
  static const char* what[3] = {"coords", "flips", "labels"};
  for (int k = 0; k < 3; ++k) {
    const Ref& v = top->items[k];
    FKD_CHECK(v->kind == Obj::kArray && !v->pending, FormatError,
              "{}: {} is a {}, expected a numpy array or torch tensor", name, what[k],
              kind_name(v->kind));
    *out[k] = std::move(v->array);
  }
  return f;
}

ReferenceFile read_reference_file(const std::string& path) {
  const std::vector<uint8_t> bytes = read_whole_file(path);
  return parse_reference_file(bytes.data(), bytes.size(), path);
}

// --- writer ---------------------------------------------------------------------------------
namespace {

class Pickler {
 public:
  std::string out;
  std::vector<std::pair<std::string, std::string>> storages;  // key, bytes

  void op(char c) { out.push_back(c); }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      out.push_back(char(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      for (int k = 0; k < 4; ++k) out.push_back(char((uint32_t(v) >> (8 * k)) & 0xff));
    } else {
      op(char(0x8a));
      out.push_back(8);
      for (int k = 0; k < 8; ++k) out.push_back(char((uint64_t(v) >> (8 * k)) & 0xff));
    }
  }
  void text(const std::string& s) {
    op('X');
    for (int k = 0; k < 4; ++k) out.push_back(char((uint32_t(s.size()) >> (8 * k)) & 0xff));
    out += s;
  }
  void global(const char* module, const char* name) {
    op('c');
    out += module;
    out += '\n';
    out += name;
    out += '\n';
  }
  void tuple_of_ints(const std::vector<int64_t>& v) {
    op('(');
    for (int64_t x : v) integer(x);
    op('t');
  }
  // bytes as protocol 2 pickles them (see latin1 in the reader).
  void bytes(const uint8_t* p, size_t n) {
    global("_codecs", "encode");
    std::string utf8;
    utf8.reserve(n * 2);
    for (size_t k = 0; k < n; ++k) {
      if (p[k] < 0x80) {
        utf8.push_back(char(p[k]));
      } else {
        utf8.push_back(char(0xc0 | (p[k] >> 6)));
        utf8.push_back(char(0x80 | (p[k] & 0x3f)));
      }
    }
    text(utf8);
    text("latin1");
    op(char(0x86));  // TUPLE2
    op('R');
  }
  // numpy.ndarray.__reduce__: _reconstruct(ndarray, (0,), b'b') then BUILD with
  // (1, shape, dtype, False, raw C-order bytes).
  void numpy_array(const RefArray& a) {
    global("numpy.core.multiarray", "_reconstruct");
    global("numpy", "ndarray");
    tuple_of_ints({0});
    bytes(reinterpret_cast<const uint8_t*>("b"), 1);
    op(char(0x87));  // TUPLE3
    op('R');
    op('(');
    integer(1);
    tuple_of_ints(a.shape);
    global("numpy", "dtype");
    text(numpy_code(a.dtype));
    op(char(0x89));  // align=False
    op(char(0x88));  // copy=True
    op(char(0x87));
    op('R');
    op('(');
    integer(3);
    text(ref_dtype_size(a.dtype) == 1 ? "|" : "<");
    op('N');
    op('N');
    op('N');
    integer(-1);
    integer(-1);
    integer(0);
    op('t');
    op('b');
    op(char(0x89));  // not Fortran order
    bytes(a.bytes.data(), a.bytes.size());
    op('t');
    op('b');
  }
  // torch.Tensor.__reduce_ex__: _rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())
  void torch_tensor(const RefArray& a) {
    const std::string key = std::to_string(storages.size());
    storages.emplace_back(key, std::string(a.bytes.begin(), a.bytes.end()));
    global("torch._utils", "_rebuild_tensor_v2");
    op('(');
    op('(');
    text("storage");
    global("torch", storage_class(a.dtype));
    text(key);
    text("cpu");
    integer(int64_t(a.numel()));
    op('t');
    op('Q');
    integer(0);
    tuple_of_ints(a.shape);
    std::vector<int64_t> strides(a.shape.size());
    int64_t step = 1;
    for (size_t d = a.shape.size(); d-- > 0;) {
      strides[d] = step;
      step *= a.shape[d];
    }
    tuple_of_ints(strides);
    op(char(0x89));
    global("collections", "OrderedDict");
    op(')');
    op('R');
    op('t');
    op('R');
  }
};

}  // namespace

std::string serialize_reference_file(const ReferenceFile& f, const std::string& archive) {
  Pickler pk;
  pk.op(char(0x80));
  pk.op(2);
  pk.op(']');
  pk.op('(');
  for (const RefArray* a : {&f.coords, &f.flips, &f.labels}) {
    FKD_CHECK(a->bytes.size() == a->numel() * ref_dtype_size(a->dtype), FormatError,
              "reference file {}: a {} holding {} bytes", archive, a->describe(), a->bytes.size());
    a->torch ? pk.torch_tensor(*a) : pk.numpy_array(*a);
  }
  pk.op('e');
  pk.op('.');
  std::vector<std::pair<std::string, std::string>> entries;
  entries.emplace_back(archive + "/data.pkl", std::move(pk.out));
  for (auto& [key, bytes] : pk.storages) entries.emplace_back(archive + "/data/" + key, bytes);
  entries.emplace_back(archive + "/version", "3\n");
  return store::write_zip_stored(entries);
}

}  // namespace fkd
