"""The oracle for fkd's reduced-precision teachers: a TorchScript file under torch.autocast.

usage: teacher_amp.py DIR
Writes DIR/teacher.pt (torch.jit.trace of torchvision's resnet18, 3 channels, 10 classes,
with randomized BatchNorm statistics), DIR/input.pt ([8, 3, 32, 32]), and the logits of the
loaded file on that input in float32 (DIR/logits_fp32.pt) and under
torch.autocast("cpu", dtype=torch.bfloat16) on channels-last input (DIR/logits_bf16.pt),
as a PyTorch user would run the same teacher.
"""
import os
import sys

import torch
import torchvision


def main() -> None:
    out = sys.argv[1]
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=10)
    g = torch.Generator().manual_seed(6)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    model.eval()
    x = torch.randn(8, 3, 32, 32, generator=g)
    with torch.no_grad():
        torch.jit.trace(model, x).save(os.path.join(out, "teacher.pt"))
        teacher = torch.jit.load(os.path.join(out, "teacher.pt")).eval()
        fp32 = teacher(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = teacher(x.contiguous(memory_format=torch.channels_last))
    torch.save(x, os.path.join(out, "input.pt"))
    torch.save(fp32.float(), os.path.join(out, "logits_fp32.pt"))
    torch.save(bf16.float(), os.path.join(out, "logits_bf16.pt"))
    print("ok")


if __name__ == "__main__":
    main()
