// The tiny student CNN (about 93k parameters for one input channel).
#include <array>

#include <torch/torch.h>

#include "models/zoo_internal.h"

namespace fkd::models {
namespace {

namespace nn = torch::nn;

/// The tiny student: four conv-BN-ReLU layers (two with stride 2), global pool, linear.
class Tiny : public Net, public ScriptForward {
 public:
  Tiny(int in_channels, int num_classes) : Net("tiny", in_channels, num_classes) {
    const std::array<std::array<int64_t, 3>, 4> kLayers{{
        {in_channels, 32, 1},
        {32, 64, 2},
        {64, 64, 1},
        {64, 64, 2},
    }};
    for (const auto& [in, out, stride] : kLayers) {
      features->push_back(conv(in, out, /*kernel=*/3, stride));
      features->push_back(batch_norm(out));
      features->push_back(nn::ReLU());
    }
    register_module("features", features);
    fc = register_module("fc", nn::Linear(64, num_classes));
    init_like_torchvision(*this);
  }

  torch::Tensor forward(torch::Tensor x) override {
    x = features->forward(x);
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return fc(x);
  }

  std::string script_forward() const override {
    return R"(
def forward(self, x: Tensor) -> Tensor:
    x = self.features.forward(x)
    x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)
    return self.fc.forward(x)
)";
  }

 private:
  Seq features;
  nn::Linear fc{nullptr};
};

}  // namespace

std::shared_ptr<Net> make_tiny(int in_channels, int num_classes) {
  return std::make_shared<Tiny>(in_channels, num_classes);
}

}  // namespace fkd::models
