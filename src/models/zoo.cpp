// The zoo registry and state-dict handling (in memory and as Python pickles).
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include <fmt/ranges.h>
#include <torch/torch.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "models/zoo_internal.h"
#include "store/zip_stored.h"

namespace fkd {
namespace {

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

/// The first line of an exception message (c10::Error carries a multi-line backtrace).
std::string first_line(const std::exception& e) {
  const auto* c10e = dynamic_cast<const c10::Error*>(&e);
  std::string msg = c10e ? c10e->what_without_backtrace() : e.what();
  auto nl = msg.find('\n');
  return nl == std::string::npos ? msg : msg.substr(0, nl);
}

/// Python's state_dict order: each module's own parameters, then its own buffers, then
/// its children in registration order, depth first.
void collect_state(const torch::nn::Module& m, const std::string& prefix,
                   std::vector<std::pair<std::string, torch::Tensor>>& out) {
  for (const auto& p : m.named_parameters(/*recurse=*/false))
    out.emplace_back(prefix + p.key(), p.value());
  for (const auto& b : m.named_buffers(/*recurse=*/false))
    out.emplace_back(prefix + b.key(), b.value());
  for (const auto& c : m.named_children()) collect_state(*c.value(), prefix + c.key() + ".", out);
}

}  // namespace

namespace models {

void init_like_torchvision(torch::nn::Module& root) {
  torch::NoGradGuard no_grad;
  for (const auto& m : root.modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(c->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
      if (c->bias.defined()) torch::nn::init::zeros_(c->bias);
    } else if (auto* bn = m->as<models::BatchNorm2d>()) {
      torch::nn::init::ones_(bn->weight);
      torch::nn::init::zeros_(bn->bias);
    }
  }
}

}  // namespace models

std::vector<std::string> model_names() {
  return {"tiny",      "resnet20", "resnet32", "resnet44",   "resnet56",
          "resnet110", "resnet18", "resnet50", "mobilenetv2"};
}

std::shared_ptr<Net> make_model(const std::string& name, int in_channels, int num_classes) {
  FKD_CHECK(in_channels >= 1, ConfigError, "model '{}': in_channels must be >= 1, got {}", name,
            in_channels);
  FKD_CHECK(num_classes >= 1, ConfigError, "model '{}': num_classes must be >= 1, got {}", name,
            num_classes);
  if (name == "tiny") return models::make_tiny(in_channels, num_classes);
  if (name == "resnet20") return models::make_cifar_resnet(name, 20, in_channels, num_classes);
  if (name == "resnet32") return models::make_cifar_resnet(name, 32, in_channels, num_classes);
  if (name == "resnet44") return models::make_cifar_resnet(name, 44, in_channels, num_classes);
  if (name == "resnet56") return models::make_cifar_resnet(name, 56, in_channels, num_classes);
  if (name == "resnet110") return models::make_cifar_resnet(name, 110, in_channels, num_classes);
  if (name == "resnet18" || name == "resnet50")
    return models::make_imagenet_resnet(name, in_channels, num_classes);
  if (name == "mobilenetv2") return models::make_mobilenetv2(in_channels, num_classes);
  fail<ConfigError>("unknown model '{}' (known: {})", name, fmt::join(model_names(), ", "));
}

int set_batch_norm_sync(torch::nn::Module& net, const std::shared_ptr<BatchNormSync>& sync) {
  int n = 0;
  for (const auto& m : net.modules(/*include_self=*/true)) {
    if (auto* bn = dynamic_cast<models::BatchNorm2dImpl*>(m.get())) {
      bn->set_sync(sync);
      ++n;
    }
  }
  return n;
}

int64_t count_parameters(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters(/*recurse=*/true))
    if (p.requires_grad()) n += p.numel();
  return n;
}

std::vector<std::pair<std::string, torch::Tensor>> state_dict(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  collect_state(m, "", out);
  return out;
}

void load_state_dict(torch::nn::Module& m,
                     const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                     const std::string& source) {
  std::map<std::string, const torch::Tensor*> given;
  for (const auto& [name, t] : tensors) {
    FKD_CHECK(given.emplace(name, &t).second, FormatError, "{}: entry '{}' appears twice", source,
              name);
    FKD_CHECK(t.defined(), FormatError, "{}: entry '{}' is an undefined tensor", source, name);
  }
  const auto own = state_dict(m);
  // Check everything before copying anything, so a failed load leaves the model intact.
  for (const auto& [name, dst] : own) {
    auto it = given.find(name);
    FKD_CHECK(it != given.end(), FormatError, "{}: missing entry '{}' required by model '{}'",
              source, name, m.name());
    FKD_CHECK(it->second->sizes() == dst.sizes(), FormatError,
              "{}: entry '{}' has shape {} but model '{}' expects {}", source, name,
              shape_str(it->second->sizes()), m.name(), shape_str(dst.sizes()));
    given.erase(it);
  }
  FKD_CHECK(given.empty(), FormatError, "{}: unexpected entry '{}' (not in model '{}')", source,
            given.empty() ? "" : given.begin()->first, m.name());
  torch::NoGradGuard no_grad;
  std::map<std::string, const torch::Tensor*> by_name;
  for (const auto& [name, t] : tensors) by_name[name] = &t;
  for (const auto& [name, dst] : own) {
    auto target = dst;  // shares storage with the module's tensor
    target.copy_(*by_name.at(name));
  }
}

void save_state_dict_pickle(const torch::nn::Module& m, const std::string& path,
                            const std::map<std::string, std::string>& extra_files) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : state_dict(m)) dict.insert(name, t.detach().to(torch::kCPU));
  const std::vector<char> bytes = torch::pickle_save(dict);
  if (extra_files.empty()) {
    write_file_durably(path, std::string_view(bytes.data(), bytes.size()));
    return;
  }
  // The archive's entries again, with the extra files after them under the archive's folder.
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  std::vector<std::pair<std::string, std::string>> entries;
  std::string folder;
  for (const store::ZipEntry& e : store::read_zip_stored(data, bytes.size(), path)) {
    entries.emplace_back(e.name, std::string(reinterpret_cast<const char*>(e.data), e.size));
    if (folder.empty()) folder = e.name.substr(0, e.name.find('/') + 1);
  }
  for (const auto& [name, content] : extra_files)
    entries.emplace_back(folder + "extra/" + name, content);
  write_file_durably(path, store::write_zip_stored(entries));
}

std::vector<std::pair<std::string, torch::Tensor>> load_state_dict_pickle(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  FKD_CHECK(f.good(), IoError, "{}: cannot open for reading", path);
  const std::vector<char> bytes{std::istreambuf_iterator<char>(f),
                                std::istreambuf_iterator<char>()};
  FKD_CHECK(!f.bad(), IoError, "{}: read failed", path);
  FKD_CHECK(!bytes.empty(), FormatError, "{}: empty file, expected a pickled dict of tensors",
            path);
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    fail<FormatError>(
        "{}: not a pickled dict of tensors (write it with torch.save(dict(model.state_dict()))): "
        "{}",
        path, first_line(e));
  }
  FKD_CHECK(value.isGenericDict(), FormatError,
            "{}: expected a pickled dict of tensors, found a {} (write it with "
            "torch.save(dict(model.state_dict())))",
            path, value.tagKind());
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& entry : value.toGenericDict()) {
    FKD_CHECK(entry.key().isString(), FormatError, "{}: dict key of type {} is not a string", path,
              entry.key().tagKind());
    const std::string name = entry.key().toStringRef();
    FKD_CHECK(entry.value().isTensor(), FormatError, "{}: entry '{}' is a {}, not a tensor", path,
              name, entry.value().tagKind());
    out.emplace_back(name, entry.value().toTensor());
  }
  return out;
}

}  // namespace fkd
