"""fkd's ONNX files in runtimes other than fkd: onnx's checker, OpenCV DNN and onnxruntime.

usage: edge_runtimes.py STEP WORK FKD [OPENCV_ONNX]
  fixture      trains small students (zoo tiny, resnet20, mobilenetv2; torchvision's
               resnet18 and mobilenet_v3_small and a student of every supported operator,
               scripted), exports each with --int8, and writes fkd's logits of 200 test images
               for the checkpoint and for both files, and the images themselves
  checker      python3-onnx's checker (full check: strict shape inference) on every file
  opencv       OpenCV 4.6's DNN runs each float file without ReLU6 (OPENCV_ONNX:
               tests/edge/opencv_onnx.cpp) and gives fkd's logits; it refuses the int8 files and
               opset 13's Clip, as recorded in docs/edge.md
  onnxruntime  onnxruntime-node (npm, installed into WORK/../ort) runs every file: float
               logits within 1e-4 of fkd's, int8 argmax as fkd's int8 evaluator's
Exits 77 (skipped) when npm cannot install onnxruntime-node.
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
PY = "/usr/bin/python3"
N = 200  # test images compared
# name: (model, training options)
MODELS = {
    "tiny": ("tiny", ["--epochs", "1", "--limit-train", "1500"]),
    "resnet20": ("resnet20", ["--epochs", "1", "--limit-train", "64", "--batch-size", "64"]),
    "mobilenetv2": ("mobilenetv2", ["--epochs", "1", "--limit-train", "64", "--batch-size", "64"]),
    "tv_resnet18": ("script:resnet18", ["--epochs", "1", "--limit-train", "64", "--batch-size", "64"]),
    "tv_mobilenet_v3_small": ("script:mobilenet_v3_small",
                              ["--epochs", "1", "--limit-train", "64", "--batch-size", "64"]),
    "allops": ("allops", ["--epochs", "1", "--limit-train", "600"]),
}


def run(cmd, **kw):
    env = dict(os.environ, FKD_PROGRESS="off", OMP_WAIT_POLICY="passive")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r.stdout


def logits(path):
    return np.fromfile(path, dtype=np.float32).reshape(N, -1)


def fixture(work, fkd):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for name, (model, opts) in MODELS.items():
        d = os.path.join(work, name)
        if model.startswith("script:"):
            model_file = d + ".pt"
            run([PY, os.path.join(HERE, "models_script_student.py"), "make", model_file,
                 model[len("script:"):], "1", "10"])
            model = model_file
        elif model == "allops":
            model = d + ".pt"
            run([PY, os.path.join(HERE, "edge_ops.py"), "student", model, "1", "10"])
        run([fkd, "train", "--model", model, "--limit-val", "200", "--threads", "2",
             "--out", d] + opts)
        ckpt = os.path.join(d, "checkpoint.pt")
        run([fkd, "export", ckpt, d + ".onnx", "--int8", "--calibration", "64", "--threads", "2"])
        run([fkd, "eval", ckpt, "--limit", str(N), "--threads", "2", "--save-inputs",
             d + ".x.f32", "--save-logits", d + ".ref.f32"])
        for kind in ("onnx", "int8.onnx"):
            run([fkd, "eval", f"{d}.{kind}", "--limit", str(N), "--threads", "2",
                 "--save-logits", f"{d}.{kind}.f32"])


class Files(unittest.TestCase):
    work = ""

    def files(self):
        for name in MODELS:
            for kind in ("onnx", "int8.onnx"):
                yield name, kind, os.path.join(self.work, f"{name}.{kind}")


class Checker(Files):
    def test_every_file_passes_the_checker_with_strict_shapes(self):
        import onnx
        for name, kind, path in self.files():
            with self.subTest(file=path):
                m = onnx.load(path)
                onnx.checker.check_model(m, full_check=True)
                self.assertEqual(m.opset_import[0].version, 13)
                ops = {n.op_type for n in m.graph.node}
                self.assertNotIn("BatchNormalization", ops)
                self.assertEqual("QuantizeLinear" in ops, kind == "int8.onnx")


class OpenCV(Files):
    tool = ""

    def test_float_files_give_fkds_logits_and_qdq_is_refused(self):
        import onnx
        for name, kind, path in self.files():
            with self.subTest(file=path):
                out = path + ".opencv.f32"
                r = subprocess.run([self.tool, path, os.path.join(self.work, name + ".x.f32"), out],
                                   capture_output=True, text=True)
                if kind == "int8.onnx":
                    # OpenCV 4.6 stops at the first DequantizeLinear of constant weights.
                    self.assertEqual(r.returncode, 3, r.stderr)
                    self.assertIn("DequantizeLinear", r.stderr)
                    continue
                if "Clip" in {n.op_type for n in onnx.load(path).graph.node}:
                    # ... and reads Clip only as opsets before 11 wrote it (bounds as
                    # attributes): ReLU6 models are refused.
                    self.assertEqual(r.returncode, 3, r.stderr)
                    self.assertIn("parseClip", r.stderr)
                    continue
                self.assertEqual(r.returncode, 0, r.stderr)
                got, want = logits(out), logits(os.path.join(self.work, name + ".ref.f32"))
                self.assertLess(np.abs(got - want).max() / np.abs(want).max(), 1e-4)
                self.assertTrue((got.argmax(1) == want.argmax(1)).all())


def install_onnxruntime(folder):
    """onnxruntime-node in folder/node_modules; False when npm or node cannot get it."""
    if os.path.isdir(os.path.join(folder, "node_modules", "onnxruntime-node")):
        return True
    if not shutil.which("npm") or not shutil.which("node"):
        print("skipped: node and npm are needed to install onnxruntime-node")
        return False
    os.makedirs(folder, exist_ok=True)
    r = subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund",
                        "--prefix", folder, "onnxruntime-node"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        print("skipped: npm install onnxruntime-node failed (no registry?):",
              (r.stderr.strip().splitlines() or [""])[-1])
        return False
    return True


class OnnxRuntime(Files):
    node_path = ""

    def ort(self, model, inputs, compare):
        env = dict(os.environ, NODE_PATH=self.node_path)
        r = subprocess.run(["node", os.path.join(ROOT, "tools", "edge", "ort_eval.js"), model,
                            inputs, "--compare", compare], capture_output=True, text=True,
                           env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_float_logits_within_1e4_of_fkd_and_int8_argmax_as_fkd(self):
        for name, kind, path in self.files():
            with self.subTest(file=path):
                x = os.path.join(self.work, name + ".x.f32")
                if kind == "onnx":
                    rep = self.ort(path, x, os.path.join(self.work, name + ".ref.f32"))
                    self.assertLess(rep["max_relative_diff"], 1e-4)
                    self.assertEqual(rep["argmax_agreement"], 100)
                else:
                    rep = self.ort(path, x, path + ".f32")
                    # onnxruntime's fused int8 Add/Concat/pooling round differently by one
                    # step now and then; the Conv/Gemm arithmetic is fkd's.
                    self.assertGreaterEqual(rep["argmax_agreement"], 99.5)
                    self.assertLess(rep["max_relative_diff"], 0.1)
                    self.assertEqual(rep["images"], N)


def main():
    step, work, fkd = sys.argv[1], sys.argv[2], sys.argv[3]
    if step == "fixture":
        fixture(work, fkd)
        return
    Files.work = work
    if step == "checker":
        suite = Checker
    elif step == "opencv":
        OpenCV.tool = sys.argv[4]
        suite = OpenCV
    elif step == "onnxruntime":
        folder = os.path.join(os.path.dirname(work), "ort")
        if not install_onnxruntime(folder):
            sys.exit(77)
        OnnxRuntime.node_path = os.path.join(folder, "node_modules")
        suite = OnnxRuntime
    else:
        sys.exit(f"unknown step {step}")
    result = unittest.TextTestRunner(verbosity=2).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(suite))
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
