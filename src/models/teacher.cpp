// Teachers: TorchScript archives (optionally frozen and optimized) and zoo models.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <torch/script.h>
#include <torch/torch.h>

#include "fkd/error.h"
#include "fkd/models.h"
#include "models/autocast.h"
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

/// The teacher's input: on its device, and channels-last where that is the faster layout
/// for its convolutions (reduced precision, where oneDNN and cuDNN pick NHWC kernels, and
/// any GPU). A float32 teacher on a CPU keeps the layout it was given, so its labels stay
/// what earlier versions wrote.
torch::Tensor teacher_input(const torch::Tensor& x, const torch::Device& device, AmpMode amp) {
  torch::Tensor xd = x.to(device, /*non_blocking=*/true);
  if (x.dim() == 4 && (amp != AmpMode::kOff || device.is_cuda()))
    xd = xd.contiguous(at::MemoryFormat::ChannelsLast);
  return xd;
}

std::string precision_note(AmpMode amp) {
  return amp == AmpMode::kOff ? "" : fmt::format(", {} autocast", amp_name(amp));
}

class TorchScriptTeacher : public Teacher {
 public:
  TorchScriptTeacher(torch::jit::Module module, torch::Device device, std::string source,
                     const TeacherOptions& o)
      : module_(std::move(module)), device_(device), source_(std::move(source)), o_(o) {}

  torch::Tensor logits(const torch::Tensor& x) override {
    torch::NoGradGuard
        no_grad;  // not InferenceMode: KD losses combine these with tensors under autograd
    c10::IValue out;
    try {
      const Autocast autocast(o_.amp, device_);
      out = module_.forward({teacher_input(x, device_, o_.amp)});
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {  // c10::Error, or the interpreter's runtime_error
      fail<FormatError>("{}: TorchScript forward failed on an input of shape [{}]: {}", source_,
                        fmt::join(x.sizes(), ", "), torch_failure_line(e));
    }
    FKD_CHECK(out.isTensor(), FormatError, "{}: forward returned a {}, expected a logits tensor",
              source_, out.tagKind());
    return checked_logits(out.toTensor(), x, source_);
  }

  std::string describe() const override {
    const char* how = !o_.optimize              ? "TorchScript"
                      : o_.amp == AmpMode::kOff ? "TorchScript, frozen+optimized"
                                                : "TorchScript, frozen";
    return fmt::format("{} ({}{})", source_, how, precision_note(o_.amp));
  }
  AmpMode amp() const override { return o_.amp; }

 private:
  torch::jit::Module module_;
  torch::Device device_;
  std::string source_;
  TeacherOptions o_;
};

class ZooTeacher : public Teacher {
 public:
  ZooTeacher(std::shared_ptr<Net> net, torch::Device device, AmpMode amp)
      : net_(std::move(net)), device_(device), amp_(amp) {
    net_->to(device_);
    net_->eval();
  }

  torch::Tensor logits(const torch::Tensor& x) override {
    torch::NoGradGuard no_grad;
    const Autocast autocast(amp_, device_);
    return checked_logits(net_->forward(teacher_input(x, device_, amp_)), x, describe());
  }

  std::string describe() const override {
    return "zoo model " + net_->zoo_name() + precision_note(amp_);
  }
  AmpMode amp() const override { return amp_; }

 private:
  std::shared_ptr<Net> net_;
  torch::Device device_;
  AmpMode amp_;
};

void check_resolved(AmpMode amp) {
  FKD_CHECK(amp != AmpMode::kAuto, ConfigError,
            "internal: a teacher's precision must be resolved before it is loaded");
}

/// Puts a loaded module in eval mode and prepares it as `o` asks.
torch::jit::Module prepare(torch::jit::Module module, const std::string& source,
                           const TeacherOptions& o) {
  module.eval();
  if (!o.optimize) return module;
  try {
    torch::jit::Module frozen = torch::jit::freeze(module);
    if (o.amp != AmpMode::kOff) return frozen;
    return torch::jit::optimize_for_inference(frozen);
  } catch (const std::exception& e) {
    fail<FormatError>("{}: TorchScript teacher cannot be frozen and optimized: {}", source,
                      torch_failure_line(e));
  }
}

constexpr const char* kHowToSaveTeacher = "torch.jit.trace(model.eval(), example_input).save(path)";

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
                                                  const torch::Device& device,
                                                  const TeacherOptions& o) {
  check_resolved(o.amp);
  if (!std::ifstream(path, std::ios::binary).good()) {
    fail<IoError>("{}: cannot open TorchScript teacher: {}", path, std::strerror(errno));
  }
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, device);
  } catch (const std::exception& e) {
    fail_torchscript_load(path, e, kHowToSaveTeacher);
  }
  return std::make_unique<TorchScriptTeacher>(prepare(std::move(module), path, o), device, path, o);
}

std::unique_ptr<Teacher> load_torchscript_teacher(const std::vector<uint8_t>& archive,
                                                  const std::string& source,
                                                  const torch::Device& device,
                                                  const TeacherOptions& o) {
  check_resolved(o.amp);
  torch::jit::Module module;
  try {
    std::istringstream in(std::string(archive.begin(), archive.end()));
    module = torch::jit::load(in, device);
  } catch (const std::exception& e) {
    fail_torchscript_load(source, e, kHowToSaveTeacher);
  }
  return std::make_unique<TorchScriptTeacher>(prepare(std::move(module), source, o), device, source,
                                              o);
}

std::unique_ptr<Teacher> make_zoo_teacher(std::shared_ptr<Net> net, const torch::Device& device,
                                          AmpMode amp) {
  FKD_CHECK(net != nullptr, ConfigError, "make_zoo_teacher: no model given");
  check_resolved(amp);
  return std::make_unique<ZooTeacher>(std::move(net), device, amp);
}

}  // namespace fkd
