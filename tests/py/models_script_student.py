"""TorchScript students for tests/test_scripted.cpp, made and run with torchvision.

usage:
  models_script_student.py make OUT.pt ARCH CHANNELS CLASSES [--trace]
      ARCH: resnet18 | mobilenet_v3_small, freshly initialized (seed 0), the first
      convolution adapted to CHANNELS; torch.jit.script (or, with --trace, torch.jit.trace
      in eval mode on a [2, CHANNELS, 28, 28] input) saved to OUT.pt. Prints the
      state_dict's names, one per line.
  models_script_student.py run MODEL.pt INPUT.pt OUT.pt
      torch.jit.load(MODEL.pt) in eval mode on the tensor in INPUT.pt; its logits to OUT.pt.
"""
import sys

import torch
import torchvision


def make(out: str, arch: str, channels: int, classes: int, trace: bool) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=classes)
    if arch == "resnet18":
        model.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    else:
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
