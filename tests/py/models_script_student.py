"""TorchScript students for tests/test_scripted.cpp, made and run with torchvision.

usage:
  models_script_student.py make OUT.pt ARCH CHANNELS CLASSES [--trace]
      ARCH: resnet18 | mobilenet_v3_small (the first convolution adapted to CHANNELS) |
      plain (a small CNN without BatchNorm or Dropout), freshly initialized (seed 0); torch.jit.script (or, with --trace, torch.jit.trace
      in eval mode on a [2, CHANNELS, 28, 28] input) saved to OUT.pt. Prints the
      state_dict's names, one per line.
  models_script_student.py run MODEL.pt INPUT.pt OUT.pt
      torch.jit.load(MODEL.pt) in eval mode on the tensor in INPUT.pt; its logits to OUT.pt.
"""
import sys

import torch
import torchvision


def plain_cnn(channels: int, classes: int) -> torch.nn.Module:
    """A small CNN with neither BatchNorm nor Dropout."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, classes))


def make(out: str, arch: str, channels: int, classes: int, trace: bool) -> None:
    torch.manual_seed(0)
    if arch == "plain":
        model = plain_cnn(channels, classes)
    elif arch == "resnet18":
        model = torchvision.models.resnet18(num_classes=classes)
        model.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    else:
        model = getattr(torchvision.models, arch)(num_classes=classes)
        old = model.features[0][0]
        model.features[0][0] = torch.nn.Conv2d(channels, old.out_channels, 3, 2, 1, bias=False)
    if trace:
        model.eval()
        scripted = torch.jit.trace(model, torch.randn(2, channels, 28, 28))
    else:
        scripted = torch.jit.script(model)
    scripted.save(out)
    for name in model.state_dict().keys():
        print(name)


def run(model_path: str, input_path: str, out: str) -> None:
    model = torch.jit.load(model_path)
    model.eval()
    x = torch.load(input_path)
    with torch.no_grad():
        y = model(x)
    torch.save(y, out)
    print("ok")


def main() -> None:
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), "--trace" in sys.argv)
    elif sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
