// ResNets: the CIFAR variant by depth (resnet20..resnet110) and torchvision's
// resnet18 / resnet50, with torchvision's parameter names.
#include <array>

#include <torch/torch.h>

#include "fkd/error.h"
#include "models/zoo_internal.h"

namespace fkd::models {
namespace {

namespace nn = torch::nn;

/// conv1x1 (stride) + BN projection: torchvision's `downsample` Sequential.
Seq projection(int64_t in, int64_t out, int64_t stride) {
  return Seq(conv(in, out, /*kernel=*/1, stride), batch_norm(out));
}

/// torchvision.models.resnet.BasicBlock (expansion 1).
class BasicBlockImpl : public nn::Module, public ScriptForward {
 public:
  static constexpr int64_t kExpansion = 1;

  BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride)
      : conv1(register_module("conv1", conv(inplanes, planes, /*kernel=*/3, stride))),
        bn1(register_module("bn1", batch_norm(planes))),
        conv2(register_module("conv2", conv(planes, planes, /*kernel=*/3))),
        bn2(register_module("bn2", batch_norm(planes))) {
    if (stride != 1 || inplanes != planes * kExpansion)
      downsample = register_module("downsample", projection(inplanes, planes * kExpansion, stride));
  }

  torch::Tensor forward(torch::Tensor x) {
    auto out = torch::relu(bn1(conv1(x)));
    out = bn2(conv2(out));
    auto identity = downsample ? downsample->forward(x) : x;
    return torch::relu(out + identity);
  }

  std::string script_forward() const override {
    return std::string(R"(
def forward(self, x: Tensor) -> Tensor:
    out = torch.relu(self.bn1.forward(self.conv1.forward(x)))
    out = self.bn2.forward(self.conv2.forward(out))
)") + (downsample ? "    identity = self.downsample.forward(x)\n" : "    identity = x\n") +
           "    return torch.relu(out + identity)\n";
  }

  nn::Conv2d conv1;
  BatchNorm2d bn1;
  nn::Conv2d conv2;
  BatchNorm2d bn2;
  Seq downsample{nullptr};
};
TORCH_MODULE(BasicBlock);

/// torchvision.models.resnet.Bottleneck (ResNet v1.5: stride on the 3x3 conv, expansion 4).
class BottleneckImpl : public nn::Module, public ScriptForward {
 public:
  static constexpr int64_t kExpansion = 4;

  BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride)
      : conv1(register_module("conv1", conv(inplanes, planes, /*kernel=*/1))),
        bn1(register_module("bn1", batch_norm(planes))),
        conv2(register_module("conv2", conv(planes, planes, /*kernel=*/3, stride))),
        bn2(register_module("bn2", batch_norm(planes))),
        conv3(register_module("conv3", conv(planes, planes * kExpansion, /*kernel=*/1))),
        bn3(register_module("bn3", batch_norm(planes * kExpansion))) {
    if (stride != 1 || inplanes != planes * kExpansion)
      downsample = register_module("downsample", projection(inplanes, planes * kExpansion, stride));
  }

  torch::Tensor forward(torch::Tensor x) {
    auto out = torch::relu(bn1(conv1(x)));
    out = torch::relu(bn2(conv2(out)));
    out = bn3(conv3(out));
    auto identity = downsample ? downsample->forward(x) : x;
    return torch::relu(out + identity);
  }

  std::string script_forward() const override {
    return std::string(R"(
def forward(self, x: Tensor) -> Tensor:
    out = torch.relu(self.bn1.forward(self.conv1.forward(x)))
    out = torch.relu(self.bn2.forward(self.conv2.forward(out)))
    out = self.bn3.forward(self.conv3.forward(out))
)") + (downsample ? "    identity = self.downsample.forward(x)\n" : "    identity = x\n") +
           "    return torch.relu(out + identity)\n";
  }

  nn::Conv2d conv1;
  BatchNorm2d bn1;
  nn::Conv2d conv2;
  BatchNorm2d bn2;
  nn::Conv2d conv3;
  BatchNorm2d bn3;
  Seq downsample{nullptr};
};
TORCH_MODULE(Bottleneck);

/// A stage of `blocks` residual blocks; the first one carries the stride.
template <typename Block>
Seq make_stage(int64_t& inplanes, int64_t planes, int64_t blocks, int64_t stride) {
  Seq stage;
  stage->push_back(Block(inplanes, planes, stride));
  inplanes = planes * Block::Impl::kExpansion;
  for (int64_t i = 1; i < blocks; ++i) stage->push_back(Block(inplanes, planes, /*stride=*/1));
  return stage;
}

/// CIFAR ResNet (He et al. 2016, section 4.2) with projection shortcuts.
class CifarResNet : public Net, public ScriptForward {
 public:
  CifarResNet(const std::string& name, int depth, int in_channels, int num_classes)
      : Net(name, in_channels, num_classes),
        conv1(register_module("conv1", conv(in_channels, 16, /*kernel=*/3))),
        bn1(register_module("bn1", batch_norm(16))) {
    const int64_t n = (depth - 2) / 6;
    int64_t inplanes = 16;
    layer1 = register_module("layer1", make_stage<BasicBlock>(inplanes, 16, n, /*stride=*/1));
    layer2 = register_module("layer2", make_stage<BasicBlock>(inplanes, 32, n, /*stride=*/2));
    layer3 = register_module("layer3", make_stage<BasicBlock>(inplanes, 64, n, /*stride=*/2));
    fc = register_module("fc", nn::Linear(64, num_classes));
    init_like_torchvision(*this);
  }

  torch::Tensor forward(torch::Tensor x) override {
    x = torch::relu(bn1(conv1(x)));
    x = layer3->forward(layer2->forward(layer1->forward(x)));
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return fc(x);
  }

  std::string script_forward() const override {
    return R"(
def forward(self, x: Tensor) -> Tensor:
    x = torch.relu(self.bn1.forward(self.conv1.forward(x)))
    x = self.layer3.forward(self.layer2.forward(self.layer1.forward(x)))
    x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)
    return self.fc.forward(x)
)";
  }

 private:
  nn::Conv2d conv1;
  BatchNorm2d bn1;
  Seq layer1{nullptr}, layer2{nullptr}, layer3{nullptr};
  nn::Linear fc{nullptr};
};

/// torchvision.models.ResNet: 7x7/2 stem, 3x3/2 max pool, four stages (64..512 planes).
template <typename Block>
class ImageNetResNet : public Net, public ScriptForward {
 public:
  ImageNetResNet(const std::string& name, const std::array<int64_t, 4>& blocks, int in_channels,
                 int num_classes)
      : Net(name, in_channels, num_classes),
        conv1(register_module("conv1",
                              nn::Conv2d(nn::Conv2dOptions(in_channels, 64, /*kernel_size=*/7)
                                             .stride(2)
                                             .padding(3)
                                             .bias(false)))),
        bn1(register_module("bn1", batch_norm(64))) {
    int64_t inplanes = 64;
    layer1 = register_module("layer1", make_stage<Block>(inplanes, 64, blocks[0], /*stride=*/1));
    layer2 = register_module("layer2", make_stage<Block>(inplanes, 128, blocks[1], /*stride=*/2));
    layer3 = register_module("layer3", make_stage<Block>(inplanes, 256, blocks[2], /*stride=*/2));
    layer4 = register_module("layer4", make_stage<Block>(inplanes, 512, blocks[3], /*stride=*/2));
    fc = register_module("fc", nn::Linear(512 * Block::Impl::kExpansion, num_classes));
    init_like_torchvision(*this);
  }

  torch::Tensor forward(torch::Tensor x) override {
    x = torch::relu(bn1(conv1(x)));
    x = torch::max_pool2d(x, /*kernel_size=*/3, /*stride=*/2, /*padding=*/1);
    x = layer4->forward(layer3->forward(layer2->forward(layer1->forward(x))));
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return fc(x);
  }

  std::string script_forward() const override {
    return R"(
def forward(self, x: Tensor) -> Tensor:
    x = torch.relu(self.bn1.forward(self.conv1.forward(x)))
    x = torch.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    x = self.layer4.forward(self.layer3.forward(self.layer2.forward(self.layer1.forward(x))))
    x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)
    return self.fc.forward(x)
)";
  }

 private:
  nn::Conv2d conv1;
  BatchNorm2d bn1;
  Seq layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
  nn::Linear fc{nullptr};
};

}  // namespace

std::shared_ptr<Net> make_cifar_resnet(const std::string& name, int depth, int in_channels,
                                       int num_classes) {
  FKD_CHECK(depth >= 8 && (depth - 2) % 6 == 0, ConfigError,
            "model '{}': CIFAR ResNet depth must be 6n+2 (e.g. 20, 32, 44, 56, 110), got {}", name,
            depth);
  return std::make_shared<CifarResNet>(name, depth, in_channels, num_classes);
}

std::shared_ptr<Net> make_imagenet_resnet(const std::string& name, int in_channels,
                                          int num_classes) {
  if (name == "resnet18")
    return std::make_shared<ImageNetResNet<BasicBlock>>(name, std::array<int64_t, 4>{2, 2, 2, 2},
                                                        in_channels, num_classes);
  if (name == "resnet50")
    return std::make_shared<ImageNetResNet<Bottleneck>>(name, std::array<int64_t, 4>{3, 4, 6, 3},
                                                        in_channels, num_classes);
  fail<ConfigError>("model '{}': not a torchvision ResNet this zoo builds (resnet18, resnet50)",
                    name);
}

}  // namespace fkd::models
