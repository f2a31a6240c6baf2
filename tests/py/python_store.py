"""The Python module's Store against `fkd inspect` and the label formulas.

usage: python_store.py WORK FKD   (WORK made by python_fixture.py; fkd importable)
"""
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import unittest

import numpy as np

import fkd
from python_testutil import cli_error

WORK, FKD = sys.argv[1], sys.argv[2]
FMNIST = os.path.join(WORK, "fmnist-store")
FOLDER = os.path.join(WORK, "folder-store")


def inspect_image(store, image):
    """fkd inspect --image: [(box, normalized, flip, [(class, p), ...])] per crop."""
    out = subprocess.run([FKD, "inspect", store, "--image", str(image)], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    rows = []
    for line in out[2:]:
        box = line[line.index("(") + 1:line.index(")")]
        rest = line[line.index(")") + 1:]
        norm = rest[rest.index("(") + 1:rest.index(")")]
        fields = rest[rest.index(")") + 1:].split()
        flip = fields[0] == "yes"
        top = [(fields[k], float(fields[k + 1])) for k in range(1, len(fields) - 1, 2)]
        rows.append(([int(v) for v in box.split(",")], [float(v) for v in norm.split(",")],
                     flip, top))
    return rows


class StoreTest(unittest.TestCase):
    def test_manifest_and_properties(self):
        s = fkd.Store(FMNIST)
        with open(os.path.join(FMNIST, "manifest.json")) as f:
            manifest = json.load(f)
        self.assertEqual(s.manifest, manifest)
        self.assertEqual((s.num_images, len(s)), (96, 96))
        self.assertEqual(s.classes, manifest["classes"])
        self.assertEqual(s.classes[0], "T-shirt/top")
        self.assertEqual((s.label_type, s.k, s.precision, s.crops_per_image, s.num_classes),
                         ("marginal_smoothing", 5, "fp16", 8, 10))
        self.assertEqual(s.image_size(3), (28, 28))
        f = fkd.Store(FOLDER)
        self.assertEqual((f.label_type, f.precision, f.crops_per_image, f.num_classes),
                         ("full", "fp32", 6, 3))

    def test_crops_and_labels_as_fkd_inspect_shows_them(self):
        for path, images in ((FMNIST, (0, 7, 95)), (FOLDER, (0, 13, 23))):
            s = fkd.Store(path)
            for image in images:
                want = inspect_image(path, image)
                boxes, flips = s.crops(image)
                norm, flips2 = s.crops(image, normalized=True)
                dense = s.labels(image, dense=True)
                self.assertEqual(boxes.shape, (s.crops_per_image, 4))
                self.assertEqual((boxes.dtype, norm.dtype, flips.dtype, dense.dtype),
                                 (np.int32, np.float32, np.bool_, np.float32))
                self.assertEqual(len(want), s.crops_per_image)
                for c, (box, n, flip, top) in enumerate(want):
                    where = "%s image %d crop %d" % (path, image, c)
                    self.assertEqual(boxes[c].tolist(), box, where)
                    np.testing.assert_allclose(norm[c], n, atol=6e-5)
                    self.assertEqual(bool(flips[c]), flip)
                    self.assertEqual(bool(flips2[c]), flip)
                    order = np.argsort(-dense[c], kind="stable")[:len(top)]
                    self.assertEqual([s.classes[k] for k in order], [t[0] for t in top])
                    np.testing.assert_allclose(dense[c][order], [t[1] for t in top], atol=6e-5)

    def test_normalized_boxes_are_the_pixel_boxes_over_the_image_size(self):
        s = fkd.Store(FOLDER)
        for image in range(s.num_images):
            h, w = s.image_size(image)
            px, _ = s.crops(image)
            n, _ = s.crops(image, normalized=True)
            want = np.stack([px[:, 1] / h, px[:, 0] / w, px[:, 3] / h, px[:, 2] / w], axis=1)
            np.testing.assert_allclose(n, want, rtol=1e-6)

    def test_sparse_labels_recover_to_dense_with_the_reference_formulas(self):
        s = fkd.Store(FMNIST)
        for image in (0, 50):
            idx, val = s.labels(image)
            self.assertEqual((idx.shape, val.shape, idx.dtype, val.dtype),
                             ((8, 5), (8, 5), np.int32, np.float32))
            # marginal smoothing: the top-k probabilities, (1 - their sum) / (C - k) elsewhere
            want = np.repeat(((1 - val.sum(1)) / (10 - 5))[:, None], 10, axis=1)
            np.put_along_axis(want, idx.astype(np.int64), val, axis=1)
            np.testing.assert_allclose(s.labels(image, dense=True), want, atol=1e-6)
        f = fkd.Store(FOLDER)
        idx, val = f.labels(4)
        self.assertEqual((idx.shape, val.shape), ((6, 0), (6, 3)))
        np.testing.assert_array_equal(f.labels(4, dense=True), val)
        np.testing.assert_allclose(val.sum(1), 1, atol=1e-5)

    def test_errors_are_exceptions_with_fkd_messages(self):
        missing = os.path.join(WORK, "no-store")
        with self.assertRaises(FileNotFoundError) as e:
            fkd.Store(pathlib.Path(missing))
        self.assertEqual(str(e.exception), cli_error(FKD, "inspect", missing))
        self.assertEqual(e.exception.errno, errno.ENOENT)
        self.assertIsInstance(e.exception, fkd.NotFoundError)
        self.assertIsInstance(e.exception, fkd.IoError)
        self.assertIsInstance(e.exception, fkd.Error)
        # A folder that is no store: malformed, a ValueError.
        with self.assertRaises(fkd.FormatError) as e:
            fkd.Store(os.path.join(WORK, "folder"))
        self.assertEqual(str(e.exception), cli_error(FKD, "inspect", os.path.join(WORK, "folder")))
        self.assertIsInstance(e.exception, ValueError)
        # Arguments of the wrong type: one line naming them.
        with self.assertRaises(TypeError) as e:
            fkd.Store(FMNIST, check_crops="no")
        self.assertEqual(str(e.exception), "Store(): check_crops must be a bool, not str")
        with self.assertRaises(TypeError) as e:
            fkd.Store(FMNIST).labels(1.5)
        self.assertEqual(str(e.exception), "Store.labels(): image must be an int, not float")
        with self.assertRaises(TypeError) as e:
            fkd.Store(FMNIST).crops(0, normalized=None)
        self.assertEqual(str(e.exception),
                         "Store.crops(): normalized must be a bool, not NoneType")
        self.assertEqual(fkd.Store(pathlib.Path(FMNIST)).labels(np.int64(3))[0].shape, (8, 5))

        s = fkd.Store(FMNIST)
        with self.assertRaises(fkd.ConfigError) as e:
            s.labels(96)
        self.assertEqual(str(e.exception), "image 96 out of range [0, 96)")

        # A flipped byte inside the records: the store opens; the damaged record raises.
        damaged = os.path.join(WORK, "damaged-store")
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(FMNIST, damaged)
        shard = [f for f in os.listdir(damaged) if f.endswith(".fkdl")][0]
        with open(os.path.join(damaged, shard), "r+b") as f:
            f.seek(os.path.getsize(os.path.join(damaged, shard)) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x55]))
        d = fkd.Store(damaged)
        errors = []
        for image in range(d.num_images):
            try:
                d.labels(image)
            except fkd.FormatError as e:
                errors.append((image, str(e)))
        self.assertTrue(errors, "no record of %s raised" % damaged)
        image, message = errors[0]
        self.assertEqual(message, cli_error(FKD, "inspect", damaged, "--image", str(image)))
        self.assertIn(shard, message)

        # A truncated shard: opening the store raises.
        with open(os.path.join(damaged, shard), "r+b") as f:
            f.truncate(100)
        with self.assertRaises(fkd.FormatError) as e:
            fkd.Store(damaged)
        self.assertEqual(str(e.exception), cli_error(FKD, "inspect", damaged))
        self.assertEqual(len(str(e.exception).splitlines()), 1)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
