"""torchvision's RandomResizedCrop.get_params statistics, the oracle for fkd's sampler.

usage: data_rrc_stats.py H W N
prints: mean area fraction, mean aspect ratio (w/h), fraction of full-width-or-height crops
"""
import sys

import torch
import torchvision.transforms as T
from PIL import Image

H, W, N = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)
img = Image.new("L", (W, H))
area = ratio = full = 0.0
for _ in range(N):
    i, j, h, w = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
    area += h * w / (H * W)
    ratio += w / h
    full += (h == H or w == W)
print(area / N, ratio / N, full / N)
