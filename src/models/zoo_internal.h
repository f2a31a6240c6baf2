// Private pieces of the model zoo shared by src/models/*.cpp.
#pragma once
#include <memory>
#include <string>

#include <torch/nn.h>

#include "fkd/models.h"

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

inline torch::nn::BatchNorm2d batch_norm(int64_t channels) {
  return torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(channels));
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
