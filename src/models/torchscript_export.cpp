// export_torchscript: rebuilds a zoo model as a torch::jit::Module (one scripted
// submodule per C++ submodule, same names, same tensors) whose forward is TorchScript
// source emitted per layer type, and saves it as an archive that torch.jit.load reads.
#include <cctype>
#include <variant>

#include <torch/csrc/jit/serialization/export.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "models/zoo_internal.h"

namespace fkd {
namespace {

namespace nn = torch::nn;
// Module options hold c10::variant in LibTorch 1.x and std::variant from 2.x on: unqualified
// get_if finds the right one (std's here, c10's by argument-dependent lookup).
using std::get_if;

std::string int_list(at::IntArrayRef v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

/// "fkd::models::(anonymous namespace)::BasicBlockImpl" -> "BasicBlock".
std::string class_name(const nn::Module& m) {
  std::string full = m.name();
  auto pos = full.rfind("::");
  std::string base = pos == std::string::npos ? full : full.substr(pos + 2);
  if (base.size() > 4 && base.compare(base.size() - 4, 4, "Impl") == 0)
    base.resize(base.size() - 4);
  std::string out;
  for (char c : base) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  if (out.empty() || std::isdigit(static_cast<unsigned char>(out[0]))) out = "M" + out;
  return out;
}

std::string self_or_none(const torch::Tensor& t, const char* name) {
  return t.defined() ? std::string("self.") + name : "None";
}

constexpr const char* kHeader = "\ndef forward(self, x: Tensor) -> Tensor:\n";

/// TorchScript source of forward for `m` in eval mode.
std::string forward_source(const nn::Module& m, const std::string& where) {
  if (const auto* s = dynamic_cast<const models::ScriptForward*>(&m)) return s->script_forward();

  if (const auto* c = dynamic_cast<const nn::Conv2dImpl*>(&m)) {
    const auto& o = c->options;
    const auto* padding = get_if<torch::ExpandingArray<2>>(&o.padding());
    FKD_CHECK(padding && get_if<torch::enumtype::kZeros>(&o.padding_mode()), ConfigError,
              "export_torchscript: {}: only explicit zero padding is supported", where);
    return fmt::format("{}    return torch.conv2d(x, self.weight, {}, {}, {}, {}, {})\n", kHeader,
                       self_or_none(c->bias, "bias"), int_list(*o.stride()), int_list(**padding),
                       int_list(*o.dilation()), o.groups());
  }
  if (const auto* l = dynamic_cast<const nn::LinearImpl*>(&m))
    return fmt::format("{}    return torch.linear(x, self.weight, {})\n", kHeader,
                       self_or_none(l->bias, "bias"));
  if (dynamic_cast<const nn::ReLUImpl*>(&m))
    return fmt::format("{}    return torch.relu(x)\n", kHeader);
  if (dynamic_cast<const nn::ReLU6Impl*>(&m))
    return fmt::format("{}    return torch.hardtanh(x, 0.0, 6.0)\n", kHeader);
  if (dynamic_cast<const nn::DropoutImpl*>(&m) || dynamic_cast<const nn::IdentityImpl*>(&m))
    return fmt::format("{}    return x\n", kHeader);  // eval mode
  if (dynamic_cast<const nn::SequentialImpl*>(&m)) {
    std::string src = kHeader;
    for (const auto& child : m.named_children())
      src += fmt::format("    x = getattr(self, \"{}\").forward(x)\n", child.key());
    return src + "    return x\n";
  }
  fail<ConfigError>("export_torchscript: {}: no TorchScript translation for module type {}", where,
                    m.name());
}

/// Mirrors `m` (parameters, buffers, children, forward) as a scripted module.
torch::jit::Module to_script(const nn::Module& m, const std::string& where,
                             const std::shared_ptr<torch::jit::CompilationUnit>& cu) {
  torch::jit::Module jm(c10::QualifiedName("__torch__.fkd." + class_name(m)), cu,
                        /*shouldMangle=*/true);
  jm.register_attribute("training", c10::BoolType::get(), false);
  for (const auto& p : m.named_parameters(/*recurse=*/false))
    jm.register_parameter(p.key(), p.value().detach().to(torch::kCPU).clone().requires_grad_(true),
                          /*is_buffer=*/false);
  for (const auto& b : m.named_buffers(/*recurse=*/false))
    jm.register_buffer(b.key(), b.value().detach().to(torch::kCPU).clone());
  for (const auto& c : m.named_children())
    jm.register_module(c.key(), to_script(*c.value(), where + "." + c.key(), cu));
  const std::string src = forward_source(m, where);
  try {
    jm.define(src);
  } catch (const c10::Error& e) {
    fail<ConfigError>("export_torchscript: {}: generated TorchScript does not compile: {}", where,
                      e.what_without_backtrace());
  }
  return jm;
}

}  // namespace

torch::jit::Module script_module_copy(Net& m) {
  // A TorchScript student is its own module, holding the trained tensors; a copy is put in
  // eval mode, so the caller's net keeps its mode.
  if (torch::jit::Module* scripted = scripted_module(m)) {
    torch::jit::Module jm = scripted->deepcopy();
    jm.eval();
    return jm;
  }
  return to_script(m, m.zoo_name(), std::make_shared<torch::jit::CompilationUnit>());
}

void export_torchscript(Net& m, const std::string& path,
                        const std::map<std::string, std::string>& extra_files) {
  const torch::jit::Module jm = script_module_copy(m);
  // As Module::save(path) does, but through a writer that never fails (see save_checkpoint).
  DurableFile file(path);
  torch::jit::ExtraFilesMap extra;
  for (const auto& [name, bytes] : extra_files) extra[name] = bytes;
  try {
    torch::jit::ExportModule(
        jm, [&file](const void* data, size_t size) { return file.write_deferred(data, size); },
        extra);
  } catch (const c10::Error& e) {
    fail<IoError>("{}: cannot write TorchScript archive: {}", path,
                  one_line(e.what_without_backtrace()));
  }
  file.commit();
}

std::vector<uint8_t> torchscript_bytes(Net& m) {
  const torch::jit::Module jm = script_module_copy(m);
  std::vector<uint8_t> bytes;
  torch::jit::ExportModule(jm, [&bytes](const void* data, size_t size) {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes.insert(bytes.end(), p, p + size);
    return size;
  });
  return bytes;
}

}  // namespace fkd
