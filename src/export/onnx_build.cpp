#include "export/onnx_build.h"

#include <cstring>

#include <onnx/checker.h>
#include <onnx/shape_inference/implementation.h>
#include <torch/torch.h>

#include "fkd/error.h"
#include "fkd/file_io.h"

namespace fkd::edge {
namespace {

int32_t proto_type(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return onnx::TensorProto::FLOAT;
    case torch::kInt8:
      return onnx::TensorProto::INT8;
    case torch::kInt32:
      return onnx::TensorProto::INT32;
    case torch::kInt64:
      return onnx::TensorProto::INT64;
    default:
      fail<ConfigError>("ONNX export: tensors of type {} are not written", c10::toString(t));
  }
}

onnx::AttributeProto& new_attr(onnx::NodeProto& n, const std::string& name,
                               onnx::AttributeProto::AttributeType type) {
  onnx::AttributeProto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(type);
  return *a;
}

const onnx::AttributeProto* find_attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}

/// Values of a typed repeated field, converted to T.
template <typename T, typename Field>
torch::Tensor typed_values(const Field& field, torch::ScalarType type) {
  std::vector<T> v(field.begin(), field.end());
  return torch::from_blob(v.data(), {int64_t(v.size())}, type).clone();
}

}  // namespace

GraphBuilder::GraphBuilder(onnx::GraphProto& graph) : graph_(graph) {}

namespace {

std::string unique_in(std::unordered_set<std::string>& taken, const std::string& hint) {
  std::string name = hint.empty() ? "t" : hint;
  for (int i = 1; taken.count(name); ++i) name = hint + "_" + std::to_string(i);
  taken.insert(name);
  return name;
}

}  // namespace

std::string GraphBuilder::fresh(const std::string& hint) { return unique_in(values_, hint); }

onnx::NodeProto& GraphBuilder::node(const std::string& op, const std::vector<std::string>& inputs,
                                    const std::vector<std::string>& outputs,
                                    const std::string& name) {
  onnx::NodeProto* n = graph_.add_node();
  n->set_op_type(op);
  n->set_name(unique_in(nodes_, name));
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  return *n;
}

std::string GraphBuilder::op(const std::string& op, const std::vector<std::string>& inputs,
                             const std::string& name) {
  const std::string out = fresh(name);
  node(op, inputs, {out}, name);
  return out;
}

std::string GraphBuilder::constant(const std::string& hint, const torch::Tensor& t) {
  const std::string name = fresh(hint);
  *graph_.add_initializer() = to_proto(name, t);
  return name;
}

std::string GraphBuilder::scalar(const std::string& hint, float v) {
  return constant(hint, torch::tensor(v));
}

void set_attr(onnx::NodeProto& n, const std::string& name, int64_t v) {
  new_attr(n, name, onnx::AttributeProto::INT).set_i(v);
}

void set_attr(onnx::NodeProto& n, const std::string& name, float v) {
  new_attr(n, name, onnx::AttributeProto::FLOAT).set_f(v);
}

void set_attr(onnx::NodeProto& n, const std::string& name, const std::vector<int64_t>& v) {
  auto& a = new_attr(n, name, onnx::AttributeProto::INTS);
  for (int64_t x : v) a.add_ints(x);
}

int64_t attr_int(const onnx::NodeProto& n, const std::string& name, int64_t fallback) {
  const auto* a = find_attr(n, name);
  return a ? a->i() : fallback;
}

float attr_float(const onnx::NodeProto& n, const std::string& name, float fallback) {
  const auto* a = find_attr(n, name);
  return a ? a->f() : fallback;
}

std::vector<int64_t> attr_ints(const onnx::NodeProto& n, const std::string& name,
                               const std::vector<int64_t>& fallback) {
  const auto* a = find_attr(n, name);
  return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : fallback;
}

onnx::TensorProto to_proto(const std::string& name, const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
  onnx::TensorProto p;
  p.set_name(name);
  p.set_data_type(proto_type(c.scalar_type()));
  for (int64_t d : c.sizes()) p.add_dims(d);
  // raw_data is little-endian, as the host (x86, ARM) is.
  p.set_raw_data(std::string(static_cast<const char*>(c.data_ptr()), c.nbytes()));
  return p;
}

torch::Tensor from_proto(const onnx::TensorProto& p, const std::string& source) {
  std::vector<int64_t> dims(p.dims().begin(), p.dims().end());
  int64_t count = 1;
  for (int64_t d : dims) count *= d;
  torch::ScalarType type;
  switch (p.data_type()) {
    case onnx::TensorProto::FLOAT:
      type = torch::kFloat32;
      break;
    case onnx::TensorProto::INT8:
      type = torch::kInt8;
      break;
    case onnx::TensorProto::UINT8:
      type = torch::kUInt8;
      break;
    case onnx::TensorProto::INT32:
      type = torch::kInt32;
      break;
    case onnx::TensorProto::INT64:
      type = torch::kInt64;
      break;
    default:
      fail<FormatError>("{}: tensor '{}' has ONNX data type {}, which fkd does not read", source,
                        p.name(), p.data_type());
  }
  FKD_CHECK(p.data_location() != onnx::TensorProto::EXTERNAL, FormatError,
            "{}: tensor '{}' is stored in an external file, which fkd does not read", source,
            p.name());
  torch::Tensor t;
  if (p.has_raw_data()) {
    const std::string& raw = p.raw_data();
    t = torch::empty({count}, torch::TensorOptions().dtype(type));
    FKD_CHECK(raw.size() == size_t(t.nbytes()), FormatError,
              "{}: tensor '{}' holds {} bytes, its shape needs {}", source, p.name(), raw.size(),
              t.nbytes());
    std::memcpy(t.data_ptr(), raw.data(), raw.size());
  } else if (type == torch::kFloat32) {
    t = typed_values<float>(p.float_data(), type);
  } else if (type == torch::kInt64) {
    t = typed_values<int64_t>(p.int64_data(), type);
  } else {  // int8, uint8 and int32 values are kept in int32_data
    t = typed_values<int32_t>(p.int32_data(), torch::kInt32).to(type);
  }
  FKD_CHECK(t.numel() == count, FormatError, "{}: tensor '{}' holds {} values, its shape needs {}",
            source, p.name(), t.numel(), count);
  return t.reshape(dims);
}

void set_float_value_info(onnx::ValueInfoProto& v, const std::string& name,
                          const std::vector<int64_t>& dims, const std::string& batch_name) {
  v.set_name(name);
  auto* tensor = v.mutable_type()->mutable_tensor_type();
  tensor->set_elem_type(onnx::TensorProto::FLOAT);
  auto* shape = tensor->mutable_shape();
  for (size_t i = 0; i < dims.size(); ++i) {
    auto* d = shape->add_dim();
    if (i == 0 && !batch_name.empty()) {
      d->set_dim_param(batch_name);
    } else {
      d->set_dim_value(dims[i]);
    }
  }
}

void check_model(onnx::ModelProto& model, const std::string& what) {
  try {
    onnx::checker::check_model(model);
    onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions{true, 1, false});
  } catch (const std::exception& e) {
    fail<FormatError>("{}: the ONNX model fails onnx's checks: {}", what, one_line(e.what()));
  }
}

std::string serialize_model(const onnx::ModelProto& model, const std::string& what) {
  std::string bytes;
  FKD_CHECK(model.SerializeToString(&bytes), FormatError,
            "{}: the ONNX model does not serialize (over protobuf's 2 GiB limit?)", what);
  return bytes;
}

onnx::ModelProto read_model(const std::string& path) {
  const std::vector<uint8_t> bytes = read_whole_file(path);
  onnx::ModelProto m;
  FKD_CHECK(m.ParseFromArray(bytes.data(), int(bytes.size())) && m.has_graph(), FormatError,
            "{}: not an ONNX model (no ModelProto with a graph)", path);
  return m;
}

std::string metadata(const onnx::ModelProto& m, const std::string& key) {
  for (const auto& p : m.metadata_props())
    if (p.key() == key) return p.value();
  return "";
}

void set_metadata(onnx::ModelProto& m, const std::string& key, const std::string& value) {
  auto* p = m.add_metadata_props();
  p->set_key(key);
  p->set_value(value);
}

}  // namespace fkd::edge
