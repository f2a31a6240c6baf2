// Teachers: TorchScript archives (optionally frozen and optimized) and zoo models.
#include <cerrno>
#include <cstring>
#include <fstream>

#include <torch/script.h>
#include <torch/torch.h>

#include "fkd/error.h"
#include "fkd/models.h"
#include "models/zoo_internal.h"

namespace fkd {
namespace {

/// Checks what any teacher returns: a floating [N, C] tensor.
torch::Tensor checked_logits(const torch::Tensor& out, const torch::Tensor& x,
                             const std::string& who) {
  FKD_CHECK(out.dim() == 2 && out.size(0) == x.size(0), FormatError,
            "{}: teacher returned logits of shape [{}], expected [{}, num_classes]", who,
            fmt::join(out.sizes(), ", "), x.size(0));
  FKD_CHECK(out.is_floating_point(), FormatError, "{}: teacher returned non-float logits", who);
  return out.scalar_type() == torch::kFloat ? out : out.to(torch::kFloat);
}

class TorchScriptTeacher : public Teacher {
 public:
  TorchScriptTeacher(torch::jit::Module module, torch::Device device, std::string path,
                     bool optimized)
      : module_(std::move(module)),
        device_(device),
        path_(std::move(path)),
        optimized_(optimized) {}

  torch::Tensor logits(const torch::Tensor& x) override {
    torch::NoGradGuard
        no_grad;  // not InferenceMode: KD losses combine these with tensors under autograd
    c10::IValue out;
    try {
      out = module_.forward({x.to(device_)});
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {  // c10::Error, or the interpreter's runtime_error
      fail<FormatError>("{}: TorchScript forward failed on an input of shape [{}]: {}", path_,
                        fmt::join(x.sizes(), ", "), torch_failure_line(e));
    }
    FKD_CHECK(out.isTensor(), FormatError, "{}: forward returned a {}, expected a logits tensor",
              path_, out.tagKind());
    return checked_logits(out.toTensor(), x, path_);
  }

  std::string describe() const override {
    return path_ + (optimized_ ? " (TorchScript, frozen+optimized)" : " (TorchScript)");
  }

 private:
  torch::jit::Module module_;
  torch::Device device_;
  std::string path_;
  bool optimized_;
};

class ZooTeacher : public Teacher {
 public:
  ZooTeacher(std::shared_ptr<Net> net, torch::Device device)
      : net_(std::move(net)), device_(device) {
    net_->to(device_);
    net_->eval();
  }

  torch::Tensor logits(const torch::Tensor& x) override {
    torch::NoGradGuard no_grad;
    return checked_logits(net_->forward(x.to(device_)), x, describe());
  }

  std::string describe() const override { return "zoo model " + net_->zoo_name(); }

 private:
  std::shared_ptr<Net> net_;
  torch::Device device_;
};

}  // namespace

std::string torch_failure_line(const std::exception& e) {
  const auto* c10e = dynamic_cast<const c10::Error*>(&e);
  return one_line(c10e ? c10e->what_without_backtrace() : e.what());
}

void fail_torchscript_load(const std::string& source, const std::exception& e,
                           const char* how_to_save) {
  const std::string why = torch_failure_line(e);
  // A zip archive without TorchScript's constants.pkl: what torch.save writes.
  FKD_CHECK(why.find("constants.pkl") == std::string::npos, FormatError,
            "{}: a torch.save() file (a state dict or a pickled model), not TorchScript: save "
            "it with {}",
            source, how_to_save);
  fail<FormatError>("{}: not a loadable TorchScript archive (save it with torch.jit.save): {}",
                    source, why);
}

std::unique_ptr<Teacher> load_torchscript_teacher(const std::string& path,
                                                  const torch::Device& device, bool optimize) {
  if (!std::ifstream(path, std::ios::binary).good()) {
    fail<IoError>("{}: cannot open TorchScript teacher: {}", path, std::strerror(errno));
  }
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, device);
  } catch (const std::exception& e) {
    fail_torchscript_load(path, e, "torch.jit.trace(model.eval(), example_input).save(path)");
  }
  module.eval();
  if (optimize) {
    try {
      torch::jit::Module frozen = torch::jit::freeze(module);
      module = torch::jit::optimize_for_inference(frozen);
    } catch (const std::exception& e) {
      fail<FormatError>("{}: TorchScript teacher cannot be frozen and optimized: {}", path,
                        torch_failure_line(e));
    }
  }
  return std::make_unique<TorchScriptTeacher>(std::move(module), device, path, optimize);
}

std::unique_ptr<Teacher> make_zoo_teacher(std::shared_ptr<Net> net, const torch::Device& device) {
  FKD_CHECK(net != nullptr, ConfigError, "make_zoo_teacher: no model given");
  return std::make_unique<ZooTeacher>(std::move(net), device);
}

}  // namespace fkd
