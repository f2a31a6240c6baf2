"""fkd.StoreWriter: a store written record by record from Python reads back as the original.

usage: python_writer.py WORK FKD   (WORK made by python_fixture.py; fkd importable)
"""
import os
import pathlib
import shutil
import subprocess
import sys
import unittest

import numpy as np

import fkd

WORK, FKD = sys.argv[1], sys.argv[2]
FMNIST = os.path.join(WORK, "fmnist-store")


def copy_records(src, writer, end):
    for image in range(writer.next_image, end):
        idx, val = src.labels(image)
        h, w = src.image_size(image)
        writer.append(image, h, w, idx, val)


class WriterTest(unittest.TestCase):
    def assert_same_store(self, a, b):
        self.assertEqual(a.manifest, b.manifest)
        for image in range(a.num_images):
            for x, y in zip(a.labels(image) + a.crops(image), b.labels(image) + b.crops(image)):
                np.testing.assert_array_equal(x, y)
            self.assertEqual(a.image_size(image), b.image_size(image))

    def fresh(self, name):
        out = os.path.join(WORK, name)
        shutil.rmtree(out, ignore_errors=True)
        return out

    def test_round_trip(self):
        src = fkd.Store(FMNIST)
        out = self.fresh("written")
        w = fkd.StoreWriter(out, src.manifest)
        self.assertEqual((w.next_image, w.finished), (0, False))
        copy_records(src, w, src.num_images)
        w.finish()
        self.assertTrue(w.finished)
        self.assert_same_store(src, fkd.Store(out))
        subprocess.run([FKD, "label", "verify", out], check=True, stdout=subprocess.DEVNULL)
        # The written store trains as the original.
        a = next(iter(fkd.Loader("fashion-mnist", FMNIST, batch_size=8, num_crops=2)))
        b = next(iter(fkd.Loader("fashion-mnist", out, batch_size=8, num_crops=2)))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)

    def test_an_unfinished_shard_resumes(self):
        src = fkd.Store(FMNIST)
        out = self.fresh("written-resumed")
        w = fkd.StoreWriter(out, src.manifest)
        copy_records(src, w, 60)
        del w  # stopped before finish(): the complete blocks stay
        w = fkd.StoreWriter(out, src.manifest)
        self.assertLessEqual(w.next_image, 60)
        copy_records(src, w, src.num_images)
        w.finish()
        self.assert_same_store(src, fkd.Store(out))

    def test_labels_in_other_layouts_and_dtypes(self):
        src = fkd.Store(FMNIST)
        out = self.fresh("written-cast")
        w = fkd.StoreWriter(out, src.manifest)
        for image in range(src.num_images):
            idx, val = src.labels(image)
            w.append(image, 28, 28, idx.astype(np.int64).ravel(), val.astype(np.float64))
        w.finish()
        self.assert_same_store(src, fkd.Store(out))

    def test_explicit_boxes_written_from_python_replay_as_given(self):
        # An importer's store: every crop's box given, here the derived store's boxes
        # mirrored left-right, so they cannot come from the sampler.
        src = fkd.Store(FMNIST)
        out = self.fresh("written-explicit")
        w = fkd.StoreWriter(out, dict(src.manifest, crops="explicit", version=3))
        given = {}
        for image in range(src.num_images):
            idx, val = src.labels(image)
            h, w_ = src.image_size(image)
            boxes, flips = src.crops(image)
            boxes = boxes.copy()
            boxes[:, 0] = w_ - boxes[:, 0] - boxes[:, 2]
            boxes = np.clip(boxes, 0, None)
            boxes[:, 2] = np.minimum(boxes[:, 2], w_ - boxes[:, 0])
            boxes[:, 3] = np.minimum(boxes[:, 3], h - boxes[:, 1])
            boxes[:, 1] = np.minimum(boxes[:, 1], h - boxes[:, 3])
            given[image] = (boxes, ~flips)
            w.append(image, h, w_, idx, val, boxes, ~flips)
        w.finish()
        store = fkd.Store(out)
        self.assertEqual(store.manifest["crops"], "explicit")
        for image, (boxes, flips) in given.items():
            got_boxes, got_flips = store.crops(image)
            np.testing.assert_array_equal(got_boxes, boxes)
            np.testing.assert_array_equal(got_flips, flips)
            for x, y in zip(store.labels(image), src.labels(image)):
                np.testing.assert_array_equal(x, y)
        subprocess.run([FKD, "label", "verify", out], check=True, stdout=subprocess.DEVNULL)
        w2 = fkd.StoreWriter(self.fresh("written-explicit-bad"), dict(src.manifest, crops="explicit", version=3))
        idx, val = src.labels(0)
        with self.assertRaises(fkd.ConfigError) as e:
            w2.append(0, 28, 28, idx, val)
        self.assertIn("append needs boxes and flips", str(e.exception))
        boxes, flips = src.crops(0)
        boxes = boxes.copy()
        boxes[0, 2] = 40  # wider than the image
        with self.assertRaises(fkd.Error) as e:
            w2.append(0, 28, 28, idx, val, boxes, flips)
        self.assertEqual(len(str(e.exception).splitlines()), 1)

    def test_errors_are_exceptions_with_fkd_messages(self):
        src = fkd.Store(FMNIST)
        out = self.fresh("written-bad")
        w = fkd.StoreWriter(out, src.manifest)
        idx, val = src.labels(0)
        with self.assertRaises(fkd.ConfigError) as e:
            w.append(1, 28, 28, idx, val)
        self.assertIn("records must be appended in image order: expected image 0, got 1",
                      str(e.exception))
        with self.assertRaises(fkd.ConfigError) as e:
            w.append(0, 28, 28, idx[:4], val)
        self.assertIn("indices hold 20 values, expected 8 crops x 5", str(e.exception))
        boxes, flips = src.crops(0)
        with self.assertRaises(fkd.ConfigError) as e:
            w.append(0, 28, 28, idx, val, boxes, flips)
        self.assertIn("crops are derived from its sampler and seed", str(e.exception))
        bad = dict(src.manifest, seed=src.manifest["seed"] + 1)
        with self.assertRaises(fkd.ConfigError) as e:
            fkd.StoreWriter(out, bad)
        self.assertIn("seed", str(e.exception))
        with self.assertRaises(fkd.ConfigError) as e:
            fkd.StoreWriter(self.fresh("written-bad-k"), dict(src.manifest, k=20))
        self.assertIn("manifest for", str(e.exception))
        self.assertEqual(len(str(e.exception).splitlines()), 1)

    def test_the_manifest_is_checked_in_memory(self):
        # A writer's manifest once went through a temporary folder: with TMPDIR unusable the
        # writer failed, and any error but a FormatError left the folder behind. A child
        # process, so that TMPDIR is read afresh.
        tmp = os.path.join(WORK, "tmpdir-writer")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        out = self.fresh("written-tmpdir")
        script = (
            "import sys, fkd\n"
            "src = fkd.Store(sys.argv[1])\n"
            "w = fkd.StoreWriter(sys.argv[2], src.manifest)\n"
            "try:\n"
            "    fkd.StoreWriter(sys.argv[2] + '-k', dict(src.manifest, k=20))\n"
            "except fkd.ConfigError as e:\n"
            "    print(e)\n")
        for tmpdir in (os.path.join(WORK, "no-such-tmpdir"), tmp):
            env = dict(os.environ, TMPDIR=tmpdir)
            r = subprocess.run([sys.executable, "-c", script, FMNIST, out], env=env,
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("manifest for " + out + "-k", r.stdout)
            shutil.rmtree(out, ignore_errors=True)
        self.assertEqual(os.listdir(tmp), [])

    def test_wrong_types_are_one_line_and_paths_may_be_pathlib(self):
        src = fkd.Store(FMNIST)
        for args, message in (((self.fresh("w-type"), list(src.manifest.items())),
                               "StoreWriter(): manifest must be a dict, not list"),
                              ((3, src.manifest), "StoreWriter(): path must be a str or "
                               "os.PathLike, not int")):
            with self.assertRaises(TypeError) as e:
                fkd.StoreWriter(*args)
            self.assertEqual(str(e.exception), message)
        w = fkd.StoreWriter(pathlib.Path(self.fresh("w-path")), src.manifest)
        idx, val = src.labels(0)
        with self.assertRaises(TypeError) as e:
            w.append(0, "28", 28, idx, val)
        self.assertEqual(str(e.exception), "StoreWriter.append(): height must be an int, not str")
        with self.assertRaises(TypeError) as e:
            w.append(0, 28, 28, "indices", val)
        self.assertEqual(str(e.exception),
                         "StoreWriter.append(): indices must be an array of int32, not str")
        with self.assertRaises(fkd.ConfigError) as e:
            w.append(0, 0, 28, idx, val)
        self.assertEqual(str(e.exception), "height 0: expected an integer in [1, 4294967295]")
        copy_records(src, w, src.num_images)
        w.finish()
        self.assert_same_store(src, fkd.Store(os.path.join(WORK, "w-path")))


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
