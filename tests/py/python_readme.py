"""The README's Python example is python/examples/fkd_student.py, and it trains.

usage: python_readme.py WORK FKD   (WORK made by python_fixture.py; fkd importable)
"""
import importlib.util
import math
import os
import sys
import unittest

import torch

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
        model, losses = example.train(os.path.join(WORK, "fmnist-store"), batch_size=16,
                                      num_crops=2, max_steps=3)
        self.assertEqual(len(losses), 3)
        self.assertTrue(all(math.isfinite(v) and v > 0 for v in losses), losses)
        self.assertEqual(model.fc.out_features, 10)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
