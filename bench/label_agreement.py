#!/usr/bin/env python3
"""How far apart two label stores of the same crops are: the recovered soft labels (what a
student trains on, through fkd's Python module) crop by crop.

usage: label_agreement.py STORE_A STORE_B [--images N] [--json]
prints top-1 agreement (the same top class), top-5 agreement (the same set of five top
classes: of the dense labels for full stores, the stored top-k indices for marginal ones,
whose recovered tail ties with tiny stored values), mean KL(A || B) in nats, and the
largest probability difference, over the first N images (default all) of the stores,
which must hold the same images and crops.
"""
import argparse
import json

import numpy as np

import fkd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--images", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    a, b = fkd.Store(args.a), fkd.Store(args.b)
    assert a.num_images == b.num_images and a.crops_per_image == b.crops_per_image
    n = a.num_images if args.images <= 0 else min(args.images, a.num_images)
    top1 = top5 = crops = 0
    kl = 0.0
    worst = 0.0
    k = min(5, a.num_classes)
    for i in range(n):
        boxes_a, flips_a = a.crops(i)
        boxes_b, flips_b = b.crops(i)
        assert np.array_equal(boxes_a, boxes_b) and np.array_equal(flips_a, flips_b), i
        p = a.labels(i, dense=True).astype(np.float64)
        q = b.labels(i, dense=True).astype(np.float64)
        top1 += int((p.argmax(1) == q.argmax(1)).sum())
        if a.label_type.startswith("marginal") and a.k == k:
            pa = np.sort(a.labels(i)[0], axis=1)
            qa = np.sort(b.labels(i)[0], axis=1)
        else:
            pa = np.sort(np.argsort(-p, axis=1, kind="stable")[:, :k], axis=1)
            qa = np.sort(np.argsort(-q, axis=1, kind="stable")[:, :k], axis=1)
        top5 += int((pa == qa).all(axis=1).sum())
        eps = 1e-12
        kl += float((p * (np.log(p + eps) - np.log(q + eps))).sum())
        worst = max(worst, float(np.abs(p - q).max()))
        crops += p.shape[0]
    r = {"images": n, "crops": crops, "top1_agreement": top1 / crops,
         "top5_agreement": top5 / crops, "mean_kl": kl / crops, "max_abs_diff": worst}
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{crops} crops: top-1 agreement {100 * r['top1_agreement']:.2f}%, top-{k} set "
              f"agreement {100 * r['top5_agreement']:.2f}%, mean KL {r['mean_kl']:.2e} nats, "
              f"max |diff| {worst:.4f}")


if __name__ == "__main__":
    main()
