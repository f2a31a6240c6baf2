"""A small TorchScript teacher for the labeling tests, and its softmax as the oracle.

usage: label_teacher.py make OUT.pt IN_CHANNELS NUM_CLASSES
         traces a seeded conv net (any input size) with torch.jit.trace and saves it
       label_teacher.py softmax TEACHER.pt INPUT.pt OUTPUT.pt TEMPERATURE [AMP]
         INPUT.pt holds a [N, C, H, W] float tensor (torch::pickle_save from C++);
         writes softmax(teacher(x) / T) as a [N, num_classes] float tensor; with AMP bf16
         the teacher runs under torch.autocast("cpu", dtype=torch.bfloat16) on
         channels-last input and the softmax in float32
"""
import sys

import torch
import torch.nn as nn


def make(out, in_ch, classes):
    torch.manual_seed(11)
    net = nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():  # spread the logits so top-k is not a tie
        net[-1].weight.mul_(8.0)
    net.eval()
    traced = torch.jit.trace(net, torch.randn(2, in_ch, 28, 28))
    traced.save(out)


def softmax(teacher, inp, out, temperature, amp="off"):
    model = torch.jit.load(teacher).eval()
    x = torch.load(inp)
    bf16 = amp == "bf16"
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        p = torch.softmax(logits.float() / temperature, dim=1)
    torch.save(p.contiguous(), out)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        softmax(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), *sys.argv[6:7])
