"""Oracle for fkd's soft cross-entropy and KD targets.

usage: soft_ce.py LOGITS.pt TARGETS.pt TEMPERATURE
         both [N, C] float tensors (torch::pickle_save from C++); prints the mean over the
         batch of -sum_c q_c * log_softmax(logits / T)_c, computed by torch.nn.functional
"""
import sys

import torch
import torch.nn.functional as F


def main():
    logits = torch.load(sys.argv[1]).double()
    q = torch.load(sys.argv[2]).double()
    t = float(sys.argv[3])
    loss = F.cross_entropy(logits / t, q)  # probability targets: -sum q log_softmax, mean
    print(repr(loss.item()))


if __name__ == "__main__":
    main()
