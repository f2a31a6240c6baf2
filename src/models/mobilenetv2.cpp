// torchvision's MobileNetV2 (width 1.0), with its parameter names.
#include <array>

#include <torch/torch.h>

#include "models/zoo_internal.h"

namespace fkd::models {
namespace {

namespace nn = torch::nn;

/// torchvision.ops.Conv2dNormActivation with ReLU6: Sequential(conv, bn, relu6).
Seq conv_bn_relu6(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t groups = 1) {
  return Seq(conv(in, out, kernel, stride, groups), batch_norm(out), nn::ReLU6());
}

/// torchvision.models.mobilenetv2.InvertedResidual: [1x1 expand] -> 3x3 depthwise -> 1x1
/// linear projection, with a residual connection when the shape is unchanged.
class InvertedResidualImpl : public nn::Module, public ScriptForward {
 public:
  InvertedResidualImpl(int64_t inp, int64_t oup, int64_t stride, int64_t expand_ratio)
      : use_res_connect_(stride == 1 && inp == oup) {
    const int64_t hidden = inp * expand_ratio;
    if (expand_ratio != 1) conv->push_back(conv_bn_relu6(inp, hidden, /*kernel=*/1));
    conv->push_back(conv_bn_relu6(hidden, hidden, /*kernel=*/3, stride, /*groups=*/hidden));
    conv->push_back(models::conv(hidden, oup, /*kernel=*/1));
    conv->push_back(batch_norm(oup));
    register_module("conv", conv);
  }

  torch::Tensor forward(torch::Tensor x) {
    return use_res_connect_ ? x + conv->forward(x) : conv->forward(x);
  }

  std::string script_forward() const override {
    return std::string("\ndef forward(self, x: Tensor) -> Tensor:\n") +
           (use_res_connect_ ? "    return x + self.conv.forward(x)\n"
                             : "    return self.conv.forward(x)\n");
  }

  Seq conv;

 private:
  bool use_res_connect_;
};
TORCH_MODULE(InvertedResidual);

class MobileNetV2 : public Net, public ScriptForward {
 public:
  MobileNetV2(int in_channels, int num_classes) : Net("mobilenetv2", in_channels, num_classes) {
    struct Stage {
      int64_t t, c, n, s;  // expansion, output channels, repeats, first stride
    };
    constexpr std::array<Stage, 7> kSetting{{
        {1, 16, 1, 1},
        {6, 24, 2, 2},
        {6, 32, 3, 2},
        {6, 64, 4, 2},
        {6, 96, 3, 1},
        {6, 160, 3, 2},
        {6, 320, 1, 1},
    }};
    int64_t input_channel = 32;
    const int64_t last_channel = 1280;
    features->push_back(conv_bn_relu6(in_channels, input_channel, /*kernel=*/3, /*stride=*/2));
    for (const auto& st : kSetting) {
      for (int64_t i = 0; i < st.n; ++i) {
        features->push_back(
            InvertedResidual(input_channel, st.c, /*stride=*/i == 0 ? st.s : 1, st.t));
        input_channel = st.c;
      }
    }
    features->push_back(conv_bn_relu6(input_channel, last_channel, /*kernel=*/1));
    register_module("features", features);

    auto fc = nn::Linear(last_channel, num_classes);
    classifier = Seq(nn::Dropout(/*p=*/0.2), fc);
    register_module("classifier", classifier);

    init_like_torchvision(*this);
    torch::NoGradGuard no_grad;
    nn::init::normal_(fc->weight, /*mean=*/0, /*std=*/0.01);
    nn::init::zeros_(fc->bias);
  }

  torch::Tensor forward(torch::Tensor x) override {
    x = features->forward(x);
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return classifier->forward(x);
  }

  std::string script_forward() const override {
    return R"(
def forward(self, x: Tensor) -> Tensor:
    x = self.features.forward(x)
    x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)
    return self.classifier.forward(x)
)";
  }

 private:
  Seq features;
  Seq classifier{nullptr};
};

}  // namespace

std::shared_ptr<Net> make_mobilenetv2(int in_channels, int num_classes) {
  return std::make_shared<MobileNetV2>(in_channels, num_classes);
}

}  // namespace fkd::models
