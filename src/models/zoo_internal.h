// Private pieces of the model zoo shared by src/models/*.cpp.
#pragma once
#include <memory>
#include <string>

#include <torch/nn.h>

#include "fkd/models.h"

namespace torch::jit {
struct Module;
}  // namespace torch::jit

namespace fkd {
/// The TorchScript module of a load_scripted_model net (its tensors are the net's); null for
/// a zoo model (src/models/scripted.cpp).
torch::jit::Module* scripted_module(Net& net);

/// The net in eval mode as a TorchScript module of its own (a zoo model rebuilt as
/// export_torchscript writes it, a TorchScript student deep-copied): what the ONNX export
/// freezes and converts. The net itself is left as it was.
torch::jit::Module script_module_copy(Net& net);

/// The line of a torch exception that names the failure (see fkd::one_line).
std::string torch_failure_line(const std::exception& e);

/// Throws the FormatError for a torch::jit::load of `source` that failed with `e`: a
/// torch.save() file is named as one, with `how_to_save` (Python) as the fix.
[[noreturn]] void fail_torchscript_load(const std::string& source, const std::exception& e,
                                        const char* how_to_save);
}  // namespace fkd

namespace fkd::models {

/// Implemented by every zoo module that is not a stock LibTorch layer, so that
/// export_torchscript can emit its forward. Returns the complete TorchScript source of
/// `def forward(self, x: Tensor) -> Tensor:` in terms of the module's own parameters
/// (self.<name>) and registered children (self.<child>.forward(...): module call syntax
/// does not resolve in programmatically built script modules); it must compute exactly
/// what the C++ forward computes in eval mode.
class ScriptForward {
 public:
  virtual ~ScriptForward() = default;
  virtual std::string script_forward() const = 0;
};

/// A TorchScript float literal that reads back as the same double.
std::string float_literal(double v);

// --- building blocks ----------------------------------------------------------

/// nn::Sequential with a concrete forward(Tensor), so it can sit inside another
/// Sequential (torchvision nests them: features.0.0, layer1.0.downsample.0, ...).
class SeqImpl : public torch::nn::SequentialImpl {
 public:
  using torch::nn::SequentialImpl::SequentialImpl;
  torch::Tensor forward(torch::Tensor x) {
    return torch::nn::SequentialImpl::forward(std::move(x));
  }
};
TORCH_MODULE(Seq);

/// Conv2d without bias, square kernel, "same"-style padding (kernel - 1) / 2.
inline torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1,
                              int64_t groups = 1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                               .stride(stride)
                               .padding((kernel - 1) / 2)
                               .groups(groups)
                               .bias(false));
}

/// torch::nn::BatchNorm2d's parameters, buffers (same names) and arithmetic, whose
/// training-mode statistics may span the ranks of a data-parallel run (set_batch_norm_sync).
/// Its own module rather than a subclass of torch::nn::BatchNorm2dImpl, whose vtable LibTorch
/// does not export.
class BatchNorm2dImpl : public torch::nn::Cloneable<BatchNorm2dImpl>, public ScriptForward {
 public:
  explicit BatchNorm2dImpl(const torch::nn::BatchNormOptions& options);
  void reset() override;
  /// [N, C, H, W] -> [N, C, H, W], as BatchNorm2d.
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  std::string script_forward() const override;
  void set_sync(std::shared_ptr<BatchNormSync> sync) { sync_ = std::move(sync); }

  torch::nn::BatchNormOptions options;
  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  std::shared_ptr<BatchNormSync> sync_;
};
TORCH_MODULE(BatchNorm2d);

inline BatchNorm2d batch_norm(int64_t channels) {
  return BatchNorm2d(torch::nn::BatchNormOptions(channels));
}

/// torchvision's conv init: kaiming_normal_(fan_out, relu), bias 0; BatchNorm weight 1,
/// bias 0. Linear layers keep LibTorch's default (same as PyTorch's nn.Linear).
void init_like_torchvision(torch::nn::Module& root);

// --- zoo constructors (one per architecture file) -------------------------------

/// He et al. 2016 CIFAR ResNet of depth 6n+2 (BasicBlocks, 16/32/64 channels,
/// 1x1 conv + BN projection shortcuts where the shape changes).
std::shared_ptr<Net> make_cifar_resnet(const std::string& name, int depth, int in_channels,
                                       int num_classes);
/// torchvision's resnet18 (BasicBlock) or resnet50 (Bottleneck).
std::shared_ptr<Net> make_imagenet_resnet(const std::string& name, int in_channels,
                                          int num_classes);
std::shared_ptr<Net> make_mobilenetv2(int in_channels, int num_classes);
std::shared_ptr<Net> make_tiny(int in_channels, int num_classes);

}  // namespace fkd::models
