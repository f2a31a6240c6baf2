"""Saves a torch.jit.script'ed function (not a module): what a user may pass as --model.

usage: cli_scripted_function.py OUT.pt
"""
import sys

import torch


@torch.jit.script
def identity(x: torch.Tensor) -> torch.Tensor:
    return x


if __name__ == "__main__":
    torch.jit.save(identity, sys.argv[1])
