"""The README's path to the edge (train -> export --int8 -> onnxruntime) runs as written.

usage: edge_readme.py WORK BUILD_DIR
  Runs the shell block under README's "edge-quickstart" marker in WORK, where build/ and
  tools/ point to the build and the source tree, with two changes that keep it short: the
  training runs 1 epoch on 1,000 images, and fkd eval reads 300 test images. npm install
  runs for real; without node or npm, or when the registry is unreachable, the test is
  skipped (exit 77). Checks that onnxruntime ran the int8 file on every image and agreed
  with fkd's int8 evaluator.
"""
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def readme_block():
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"<!-- edge-quickstart[^>]*-->\n```sh\n(.*?)```", text, re.S)
    if not m:
        sys.exit("README.md: no shell block after the edge-quickstart marker")
    return m.group(1)


def shortened(block):
    lines = []
    for line in block.splitlines():
        if line.startswith("build/fkd train "):
            assert "--epochs 10" in line, line
            line = line.replace("--epochs 10", "--epochs 1 --limit-train 1000 --limit-val 200")
        elif line.startswith("build/fkd eval "):
            line += " --limit 300"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main():
    work, build = sys.argv[1], sys.argv[2]
    if not shutil.which("node") or not shutil.which("npm"):
        print("skipped: the README's block needs node and npm")
        sys.exit(77)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.symlink(os.path.abspath(build), os.path.join(work, "build"))
    os.symlink(os.path.join(ROOT, "tools"), os.path.join(work, "tools"))
    script = "set -e\n" + shortened(readme_block())
    env = dict(os.environ, FKD_PROGRESS="off", OMP_WAIT_POLICY="passive")
    r = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, env=env,
                       timeout=1200)
    if r.returncode != 0 and not os.path.isdir(os.path.join(work, "node_modules",
                                                             "onnxruntime-node")):
        print("skipped: npm install onnxruntime-node failed (no registry?):", r.stderr[-500:])
        sys.exit(77)
    if r.returncode != 0:
        sys.exit(f"the README's block failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    for f in ("tiny.onnx", "tiny.int8.onnx", "tiny.calibration.f32", "tiny.calibration.json"):
        if not os.path.isfile(os.path.join(work, f)):
            sys.exit(f"the README's block wrote no {f}")
    calib = json.load(open(os.path.join(work, "tiny.calibration.json")))
    if calib["shape"] != [512, 1, 28, 28]:
        sys.exit(f"calibration shape {calib['shape']}, expected [512, 1, 28, 28]")
    report = json.loads(r.stdout.strip().splitlines()[-1])
    if report["images"] != 300 or report["argmax_agreement"] < 99.5:
        sys.exit(f"onnxruntime's run of the int8 file: {report}")
    print("README block ran:", report)


if __name__ == "__main__":
    main()
