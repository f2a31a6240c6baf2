"""The Python module's FKD loader gives the batches `fkd train` trains on.

usage: python_loader.py WORK FKD   (WORK made by python_fixture.py; fkd importable)
fkd train writes every batch it trains on under FKD_TEST_DUMP_BATCHES (images, soft labels,
targets, raw); fkd.Loader with the same options must yield the same bytes, with another
number of workers.
"""
import errno
import glob
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import unittest

import numpy as np
import torch

import fkd
from python_testutil import cli_error

WORK, FKD = sys.argv[1], sys.argv[2]
FMNIST = os.path.join(WORK, "fmnist-store")
FOLDER = os.path.join(WORK, "folder-store")
DATA = os.path.join(WORK, "folder")
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def train_batches(name, args):
    """{(pass, batch): bytes} of every batch `fkd train ARGS` trained on."""
    out = os.path.join(WORK, name)
    shutil.rmtree(out, ignore_errors=True)
    dump = os.path.join(out, "batches")
    os.makedirs(dump)
    env = dict(os.environ, FKD_TEST_DUMP_BATCHES=dump, FKD_PROGRESS="off")
    subprocess.run([FKD, "train", "--model", "tiny", "--threads", "1", "--limit-val", "30",
                    "--out", os.path.join(out, "run"), *args],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    batches = {}
    for f in glob.glob(os.path.join(dump, "pass-*-batch-*.bin")):
        p, b = os.path.basename(f)[len("pass-"):-len(".bin")].split("-batch-")
        with open(f, "rb") as fh:
            batches[(int(p), int(b))] = fh.read()
    return batches


class LoaderTest(unittest.TestCase):
    def assert_same_batches(self, want, loader, passes):
        self.assertEqual(len(want), passes * len(loader))
        for p in range(passes):
            loader.set_epoch(p)
            count = 0
            for b, (x, q, y) in enumerate(loader):
                got = x.tobytes() + q.tobytes() + y.tobytes()
                self.assertEqual(len(got), len(want[(p, b)]), "pass %d batch %d" % (p, b))
                self.assertTrue(got == want[(p, b)], "pass %d batch %d differs" % (p, b))
                count += 1
            self.assertEqual(count, len(loader))

    def test_fashion_mnist_batches_are_fkd_trains(self):
        want = train_batches("train-fmnist", [
            "--data", "fashion-mnist", "--labels", FMNIST, "--epochs", "4", "--num-crops", "2",
            "--batch-size", "16", "--seed", "5", "--workers", "1"])
        loader = fkd.Loader("fashion-mnist", FMNIST, batch_size=16, num_crops=2, seed=5,
                            workers=3)
        self.assertEqual(len(loader), 12)  # the store's 96 images, 8 per batch
        self.assertEqual((loader.input_size, loader.channels, loader.num_classes),
                         (28, 1, 10))
        np.testing.assert_allclose(loader.mean, [0.2860])
        self.assert_same_batches(want, loader, passes=2)

    def test_folder_batches_are_fkd_trains(self):
        # Input size, normalization and RandomResizedCrop replay all resolved from the data.
        want = train_batches("train-folder", [
            "--data", DATA, "--labels", FOLDER, "--epochs", "6", "--num-crops", "3",
            "--batch-size", "12", "--seed", "2", "--workers", "2"])
        loader = fkd.FKDLoader(DATA, FOLDER, batch_size=12, num_crops=3, seed=2, workers=1)
        self.assertEqual(loader.channels, 3)
        self.assert_same_batches(want, loader, passes=2)

    def test_batches_share_the_loaders_buffers(self):
        loader = fkd.Loader("fashion-mnist", FMNIST, batch_size=16, num_crops=4, workers=2)
        x, q, y = next(iter(loader))
        self.assertEqual((x.shape, q.shape, y.shape), ((16, 1, 28, 28), (16, 10), (16,)))
        self.assertEqual((x.dtype, q.dtype, y.dtype), (np.float32, np.float32, np.int64))
        self.assertTrue(x.flags.writeable and x.flags.c_contiguous)
        self.assertIsNotNone(x.base)
        t = torch.from_numpy(x)
        self.assertEqual(t.data_ptr(), x.ctypes.data)
        np.testing.assert_allclose(q.sum(1), 1, atol=1e-3)
        # Rows are grouped by image: an image's 4 crops share its target.
        self.assertTrue((y.reshape(4, 4) == y.reshape(4, 4)[:, :1]).all())
        saved = x.copy()
        del loader  # the batch outlives its loader
        np.testing.assert_array_equal(x, saved)

    def test_gil_is_released_while_a_batch_is_made(self):
        # With a long switch interval, the counter thread runs during next() only if the
        # main thread releases the GIL there (a call that kept it would leave the count as it
        # was). workers=0 makes each batch in next() itself: 72 crops at 320 px, long enough
        # for the other thread to be scheduled.
        loader = fkd.Loader(DATA, FOLDER, batch_size=72, num_crops=3, workers=0, input_size=320)
        old = sys.getswitchinterval()
        sys.setswitchinterval(0.2)
        count, stop = [0], [False]

        def spin():
            while not stop[0]:
                count[0] += 1

        th = threading.Thread(target=spin)
        th.start()
        during = 0
        try:
            for p in range(3):
                loader.set_epoch(p)
                it = iter(loader)
                before = count[0]
                next(it)
                during += count[0] - before
        finally:
            stop[0] = True
            th.join()
            sys.setswitchinterval(old)
        self.assertGreater(during, 0)

    def test_errors_are_exceptions_with_fkd_messages(self):
        # The checks fkd train makes, in its words, naming the Python arguments.
        def python_names(message):
            for flag, arg in (("--batch-size", "batch_size"), ("--num-crops", "num_crops"),
                              ("--limit-train", "limit"), ("--data", "data")):
                message = message.replace(flag, arg)
            return message

        def train_error(*args):
            return python_names(cli_error(FKD, "train", "--model", "tiny", "--out",
                                          os.path.join(WORK, "never"), *args))

        with self.assertRaises(fkd.ConfigError) as e:
            fkd.Loader("fashion-mnist", FMNIST, batch_size=10, num_crops=4)
        self.assertEqual(str(e.exception), "batch_size 10 must be a multiple of num_crops 4")
        self.assertEqual(str(e.exception), train_error(
            "--labels", FMNIST, "--batch-size", "10", "--num-crops", "4"))
        with self.assertRaises(fkd.ConfigError) as e:
            fkd.Loader("fashion-mnist", FMNIST, batch_size=18, num_crops=9)
        self.assertEqual(str(e.exception), train_error(
            "--labels", FMNIST, "--batch-size", "18", "--num-crops", "9"))
        self.assertIn("num_crops 9 must be in [1, 8]", str(e.exception))
        # A store of other data: the message fkd train gives.
        with self.assertRaises(fkd.ConfigError) as e:
            fkd.Loader(DATA, FMNIST, batch_size=8, num_crops=2, limit=24)
        self.assertEqual(str(e.exception), train_error(
            "--data", DATA, "--labels", FMNIST, "--limit-train", "24", "--num-crops", "2",
            "--batch-size", "8"))
        self.assertIn("(limit 24)", str(e.exception))
        with self.assertRaises(fkd.DataError):
            fkd.Loader(os.path.join(WORK, "folder", "train", "class0", "img0.jpg"), FMNIST)

    def test_values_the_cli_refuses_are_refused(self):
        # A std of 0 made batches of infinities, a negative one passed; three ranks split a
        # batch of 32 images unevenly.
        for std, shown in (([0.0], "0"), ([-1], "-1"), ([float("inf")], "inf")):
            with self.assertRaises(fkd.ConfigError) as e:
                fkd.Loader("fashion-mnist", FMNIST, batch_size=16, num_crops=2, std=std)
            self.assertEqual(str(e.exception),
                             "std %s: values must be positive and finite" % shown)
        with self.assertRaises(fkd.ConfigError) as e:
            fkd.Loader("fashion-mnist", FMNIST, batch_size=128, num_crops=4, world=3)
        self.assertEqual(str(e.exception),
                         "batch_size 128 over 3 ranks: each rank takes whole images (4 crops "
                         "each), so the batch must be a multiple of 12")
        with self.assertRaises(fkd.ConfigError) as e:
            fkd.Loader("fashion-mnist", FMNIST, batch_size=16, num_crops=2, rank=2, world=2)
        self.assertEqual(str(e.exception), "rank 2 of a world of 2: expected 0 <= rank < world")
        for kwargs, message in (({"batch_size": -1}, "batch_size -1: expected an integer of at "
                                 "least 1"),
                                ({"workers": -2}, "workers -2: expected an integer in [0, "
                                 "2147483647]"),
                                ({"seed": -1}, "seed -1: expected an integer in [0, 2^64)"),
                                ({"limit": -1}, "limit -1: expected an integer of at least 0"),
                                ({"channels": 2}, "channels 2: expected 1 or 3 (0 = the "
                                 "dataset's)"),
                                ({"interpolation": "nearest"}, None)):
            with self.assertRaises(fkd.ConfigError, msg=str(kwargs)) as e:
                fkd.Loader("fashion-mnist", FMNIST, **kwargs)
            if message:
                self.assertEqual(str(e.exception), message)
            self.assertNotIn("--", str(e.exception))

    def test_wrong_types_are_one_line_naming_the_argument(self):
        for kwargs, message in (
                ({"num_crops": "4"}, "Loader(): num_crops must be an int, not str"),
                ({"batch_size": 16.0}, "Loader(): batch_size must be an int, not float"),
                ({"mean": "0.5"}, "Loader(): mean must be a sequence of floats, not str"),
                ({"std": [0.5, "x"]}, "Loader(): std[1] must be a float, not str"),
                ({"strict": "yes"}, "Loader(): strict must be a bool, not str"),
                ({"interpolation": 1}, "Loader(): interpolation must be a str, not int"),
                ({"labels": 7}, "Loader(): labels must be a str or os.PathLike, not int")):
            args = {"data": "fashion-mnist", "labels": FMNIST, **kwargs}
            with self.assertRaises(TypeError, msg=str(kwargs)) as e:
                fkd.Loader(**args)
            self.assertEqual(str(e.exception), message)
        loader = fkd.Loader("fashion-mnist", FMNIST, batch_size=16, num_crops=2)
        with self.assertRaises(TypeError) as e:
            loader.set_epoch("1")
        self.assertEqual(str(e.exception), "Loader.set_epoch(): epoch must be an int, not str")
        # numpy's integers and floats are numbers as Python's are.
        loader = fkd.Loader("fashion-mnist", FMNIST, batch_size=np.int64(16),
                            num_crops=np.int32(2), mean=np.array([0.5]), std=[np.float32(0.25)])
        self.assertEqual((loader.batch_size, loader.num_crops), (16, 2))
        np.testing.assert_allclose(loader.std, [0.25])

    def test_paths_may_be_pathlib_and_missing_ones_are_file_not_found(self):
        loader = fkd.Loader(pathlib.Path(DATA), pathlib.Path(FOLDER), batch_size=12,
                            num_crops=3)
        self.assertEqual(len(loader), 6)  # 24 images, 4 per batch
        for data, labels in ((DATA, os.path.join(WORK, "no-store")),
                             (os.path.join(WORK, "no-data"), FOLDER)):
            with self.assertRaises(FileNotFoundError) as e:
                fkd.Loader(pathlib.Path(data), labels)
            self.assertIsInstance(e.exception, fkd.NotFoundError)
            self.assertIsInstance(e.exception, fkd.IoError)
            self.assertEqual(e.exception.errno, errno.ENOENT)
            self.assertIn("no-", str(e.exception))
            self.assertEqual(len(str(e.exception).splitlines()), 1)

    def test_batches_carry_their_image_and_crop_ids_on_request(self):
        # fmnist-store labels 96 images spread over the 60,000 of the training split.
        subset = fkd.subset_indices(60000, 96)
        self.assertEqual(subset.tolist(), [k * 60000 // 96 for k in range(96)])
        with gzip.open(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz")) as f:
            train_labels = np.frombuffer(f.read(), np.uint8, offset=8)
        store = fkd.Store(FMNIST)
        plain = fkd.Loader("fashion-mnist", FMNIST, batch_size=16, num_crops=4, seed=3)
        loader = fkd.Loader("fashion-mnist", FMNIST, batch_size=16, num_crops=4, seed=3,
                            with_ids=True)
        seen = 0
        for (x, q, y, index, crop), (x0, q0, y0) in zip(loader, plain):
            np.testing.assert_array_equal(x, x0)  # the same batches, with their ids
            self.assertEqual((index.dtype, crop.dtype, index.shape), (np.int64, np.int64, y.shape))
            self.assertTrue(np.isin(index, subset).all())
            np.testing.assert_array_equal(y, train_labels[index])
            for row in range(len(y)):
                image = int(np.searchsorted(subset, index[row]))  # the store's image id
                np.testing.assert_array_equal(q[row], store.labels(image, dense=True)[crop[row]])
            # An image's rows are its 4 crops of this pass, each once.
            self.assertTrue((crop.reshape(-1, 4) < 8).all())
            self.assertTrue(all(len(set(r)) == 4 for r in crop.reshape(-1, 4).tolist()))
            seen += len(y)
        self.assertEqual(seen, 96 * 4)

    def test_subset_indices_are_the_images_fkd_eval_takes(self):
        # `fkd eval --limit 300` evaluates the 300 test images fkd.subset_indices lists,
        # spread over the split, not the first 300: Python gets its accuracy on those.
        run = os.path.join(WORK, "eval-run")
        shutil.rmtree(run, ignore_errors=True)
        env = dict(os.environ, FKD_PROGRESS="off")
        subprocess.run([FKD, "train", "--model", "tiny", "--data", "fashion-mnist",
                        "--limit-train", "512", "--limit-val", "64", "--epochs", "1",
                        "--threads", "1", "--out", run], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        out = subprocess.run([FKD, "eval", os.path.join(run, "checkpoint.pt"), "--limit", "300"],
                             check=True, env=env, capture_output=True, text=True).stdout
        fkd_top1 = float(out.split("top1 ")[1].split("%")[0])
        model_path = os.path.join(run, "tiny.pt")
        subprocess.run([FKD, "export", os.path.join(run, "checkpoint.pt"), model_path],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        extra = {"fkd.json": ""}
        model = torch.jit.load(model_path, _extra_files=extra).eval()
        meta = json.loads(extra["fkd.json"])
        with gzip.open(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz")) as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
        with gzip.open(os.path.join(FMNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
        subset = fkd.subset_indices(len(labels), 300)
        x = torch.from_numpy(images[subset].astype(np.float32)) / 255.0
        x = (x - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(
            meta["std"]).view(1, -1, 1, 1)
        with torch.no_grad():
            hits = (model(x).argmax(1).numpy() == labels[subset]).sum()
        self.assertLessEqual(abs(100.0 * hits / 300 - fkd_top1), 100.0 / 300 + 0.01)

if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
