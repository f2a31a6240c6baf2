// TorchScript students: a torch.jit.script'ed model trained through the Net interface.
//
// ScriptedNet mirrors the TorchScript module's hierarchy with plain nn::Modules that register
// the module's very tensors (shared TensorImpls, not copies): an optimizer step, a checkpoint
// load (copy_/set_data) or a device move (set_data) on the Net's parameters changes what the
// TorchScript forward computes with, and state_dict names are Python's.
#include <algorithm>
#include <array>
#include <filesystem>
#include <sstream>

#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "fkd/error.h"
#include "fkd/file_io.h"
#include "fkd/models.h"
#include "models/zoo_internal.h"

namespace fkd {
namespace {

/// A TorchScript submodule's parameters, buffers and children, registered on an nn::Module.
class MirrorModule : public torch::nn::Module {
 public:
  explicit MirrorModule(const torch::jit::Module& jm)
      : torch::nn::Module(jm.type()->name() ? jm.type()->name()->name() : "Module") {
    mirror(*this, jm);
  }

  static void mirror(torch::nn::Module& into, const torch::jit::Module& jm) {
    for (const auto& p : jm.named_parameters(/*recurse=*/false)) {
      into.register_parameter(p.name, p.value, p.value.requires_grad());
    }
    for (const auto& b : jm.named_buffers(/*recurse=*/false)) into.register_buffer(b.name, b.value);
    for (const auto& c : jm.named_children()) {
      into.register_module(c.name, std::make_shared<MirrorModule>(c.value));
    }
  }
};

/// Runs TorchScript as the interpreter does, op by op under ordinary autograd: the profiling
/// executor would switch to a differently fused and differentiated plan after its first
/// calls, so a resumed run (which starts profiling again) would not continue bit for bit.
class PlainExecution {
 public:
  PlainExecution() : was_(torch::jit::getGraphExecutorOptimize()) {
    torch::jit::setGraphExecutorOptimize(false);
  }
  ~PlainExecution() { torch::jit::setGraphExecutorOptimize(was_); }
  PlainExecution(const PlainExecution&) = delete;
  PlainExecution& operator=(const PlainExecution&) = delete;

 private:
  bool was_;
};

class ScriptedNet final : public Net {
 public:
  ScriptedNet(torch::jit::Module module, std::vector<uint8_t> archive, const std::string& source,
              int in_channels, int num_classes)
      : Net(source, in_channels, num_classes),
        module_(std::move(module)),
        archive_(std::move(archive)) {
    MirrorModule::mirror(*this, module_);
    train(true);
  }

  torch::Tensor forward(torch::Tensor x) override {
    PlainExecution plain;
    c10::IValue out;
    try {
      out = module_.forward({std::move(x)});
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail<FormatError>("{}: TorchScript forward failed: {}", zoo_name(), torch_failure_line(e));
    }
    FKD_CHECK(out.isTensor(), FormatError, "{}: forward returned a {}, expected a logits tensor",
              zoo_name(), out.tagKind());
    return out.toTensor();
  }

  void train(bool on = true) override {
    torch::nn::Module::train(on);
    module_.train(on);
  }

  torch::jit::Module& module() { return module_; }
  const std::vector<uint8_t>& archive() const { return archive_; }

 private:
  torch::jit::Module module_;
  std::vector<uint8_t> archive_;
};

/// Operators whose train/eval behaviour is an argument, and that argument's position.
constexpr std::array<std::pair<const char*, size_t>, 9> kModeArguments = {{
    {"aten::batch_norm", 5},
    {"aten::_batch_norm_impl_index", 5},
    {"aten::native_batch_norm", 5},
    {"aten::dropout", 2},
    {"aten::dropout_", 2},
    {"aten::feature_dropout", 2},
    {"aten::feature_dropout_", 2},
    {"aten::alpha_dropout", 2},
    {"aten::feature_alpha_dropout", 2},
}};

/// The first BatchNorm/Dropout operator in `block` whose training flag is a constant (what
/// torch.jit.trace records: the mode the model was traced in); empty if none.
std::string fixed_mode_operator(const torch::jit::Block* block) {
  for (const torch::jit::Node* node : block->nodes()) {
    for (const torch::jit::Block* sub : node->blocks()) {
      std::string found = fixed_mode_operator(sub);
      if (!found.empty()) return found;
    }
    const std::string kind = node->kind().toQualString();
    for (const auto& [op, arg] : kModeArguments) {
      if (kind == op && node->inputs().size() > arg &&
          node->input(arg)->node()->kind() == c10::prim::Constant) {
        return kind;
      }
    }
  }
  return {};
}

void refuse_traced(const torch::jit::Module& jm, const std::string& source) {
  FKD_CHECK(jm.find_method("forward").has_value(), FormatError,
            "{}: the TorchScript module has no forward method", source);
  // Submodule calls are inlined so that every layer's operators are seen.
  std::shared_ptr<torch::jit::Graph> graph = jm.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  const std::string op = fixed_mode_operator(graph->block());
  FKD_CHECK(op.empty(), FormatError,
            "{}: a traced model ({} is fixed to the mode it was traced in, so BatchNorm/Dropout "
            "cannot switch between training and evaluation); save the student with "
            "torch.jit.script(model).save(path)",
            source, op);
}

}  // namespace

bool is_model_file(const std::string& model) {
  const auto names = model_names();
  if (std::find(names.begin(), names.end(), model) != names.end()) return false;
  const std::string ext = std::filesystem::path(model).extension().string();
  std::error_code ec;
  return ext == ".pt" || ext == ".pth" || std::filesystem::is_regular_file(model, ec);
}

std::shared_ptr<Net> load_scripted_model(std::vector<uint8_t> archive, const std::string& source,
                                         int in_channels, int num_classes) {
  if (const std::string damage = zip_damage(archive.data(), archive.size()); !damage.empty()) {
    fail<FormatError>("{}: {}", source, damage);
  }
  torch::jit::Module module;
  try {
    std::istringstream in(std::string(archive.begin(), archive.end()));
    module = torch::jit::load(in, torch::kCPU);
  } catch (const std::exception& e) {
    fail_torchscript_load(source, e, "torch.jit.script(model).save(path)");
  }
  FKD_CHECK(module.parameters().size() > 0, FormatError,
            "{}: a TorchScript module without parameters (a scripted function?), nothing to "
            "train; a student is a torch.jit.script'ed nn.Module with weights",
            source);
  refuse_traced(module, source);
  return std::make_shared<ScriptedNet>(std::move(module), std::move(archive), source, in_channels,
                                       num_classes);
}

const std::vector<uint8_t>* scripted_archive(const Net& net) {
  const auto* s = dynamic_cast<const ScriptedNet*>(&net);
  return s ? &s->archive() : nullptr;
}

torch::jit::Module* scripted_module(Net& net) {
  auto* s = dynamic_cast<ScriptedNet*>(&net);
  return s ? &s->module() : nullptr;
}

}  // namespace fkd
