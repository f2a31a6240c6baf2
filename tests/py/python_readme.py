"""The README's Python example is python/examples/fkd_student.py, and it trains.

usage: python_readme.py WORK FKD   (WORK made by python_fixture.py; fkd importable)
"""
import importlib.util
import math
import os
import sys
import unittest

import torch

import fkd

WORK = sys.argv[1]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
EXAMPLE = os.path.join(ROOT, "python", "examples", "fkd_student.py")


class ReadmeExampleTest(unittest.TestCase):
    def test_readme_shows_the_example_verbatim(self):
        with open(EXAMPLE) as f:
            example = f.read()
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        self.assertIn("```python\n" + example + "```\n", readme)

    def test_example_trains_a_few_steps(self):
        spec = importlib.util.spec_from_file_location("fkd_student", EXAMPLE)
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        torch.manual_seed(0)
        torch.set_num_threads(1)
        model, loader, losses = example.train(os.path.join(WORK, "fmnist-store"),
                                              batch_size=16, num_crops=2, max_steps=3)
        self.assertEqual(len(losses), 3)
        self.assertTrue(all(math.isfinite(v) and v > 0 for v in losses), losses)
        self.assertEqual(model[-1].out_features, 10)
        # Its evaluation runs on the test images fkd eval --limit takes and prints a top-1.
        top1 = example.accuracy(model, loader, limit=500)
        self.assertTrue(0.0 <= top1 <= 100.0, top1)

    def test_example_accuracy_reads_the_test_split(self):
        # A model that always answers class c is right on exactly the test images of class c:
        # 1,000 of Fashion-MNIST's 10,000 for every c (normalization and labels read right).
        spec = importlib.util.spec_from_file_location("fkd_student", EXAMPLE)
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)

        class Always(torch.nn.Module):
            def __init__(self, c):
                super().__init__()
                self.c = c

            def forward(self, x):
                self.seen = (float(x.min()), float(x.max()))
                out = torch.zeros(x.shape[0], 10)
                out[:, self.c] = 1
                return out

        class Norm:
            mean, std = [0.5], [0.25]

        for c in (0, 7):
            always = Always(c)
            self.assertAlmostEqual(example.accuracy(always, Norm()), 10.0)
            self.assertAlmostEqual(always.seen[0], -2.0, places=5)  # (0 - 0.5) / 0.25
            self.assertAlmostEqual(always.seen[1], 2.0, places=5)   # (1 - 0.5) / 0.25
        # limit keeps the images fkd.subset_indices names, spread over the split.
        images, labels = example.test_images(limit=1000)
        all_images, all_labels = example.test_images()
        keep = fkd.subset_indices(10000, 1000)
        self.assertEqual(len(labels), 1000)
        self.assertTrue((labels == all_labels[keep]).all())
        self.assertTrue((images == all_images[keep]).all())


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
