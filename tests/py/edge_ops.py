"""TorchScript models for the ONNX export's tests (tests/test_export.cpp), made with PyTorch.

usage:
  edge_ops.py cases OUTDIR
      One torch.jit.script'ed module per exported operator (and a few the export must
      refuse), each taking a [2, 3, 8, 8] input, saved as OUTDIR/<name>.pt; prints the names,
      one per line. Names starting with "refuse_" must be refused.
  edge_ops.py student OUT.pt CHANNELS CLASSES
      A small CNN that uses every operator of the supported set at once (scripted, seed 0), as
      a TorchScript student for fkd train.
  edge_ops.py refusing-student OUT.pt CHANNELS CLASSES
      A student with an operator the export refuses (torch.cumsum).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def case(fn_src: str, **params):
    """A scripted module whose forward is `fn_src` (a lambda body over x and self)."""
    ns = {}
    src = (
        "import torch\nimport torch.nn.functional as F\nfrom typing import List\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self, params):\n"
        "        super().__init__()\n"
        "        for k, v in params.items():\n"
        "            setattr(self, k, torch.nn.Parameter(v, requires_grad=False))\n"
        "    def forward(self, x):\n"
        f"        {fn_src}\n"
    )
    path = os.path.join(os.environ.get("EDGE_OPS_TMP", "/tmp"), f"edge_case_{os.getpid()}.py")
    with open(path, "w") as f:
        f.write(src)
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"edge_case_{len(CASES)}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # Scripted now: torch.jit.script reads the source from the file, which the next case
    # replaces.
    return torch.jit.script(mod.M(params).eval())


CASES = {}


def make_cases() -> None:
    torch.manual_seed(0)
    r = torch.randn
    CASES["conv_grouped_strided"] = case(
        "return F.conv2d(x, self.w, self.b, stride=2, padding=1, groups=3)", w=r(6, 1, 3, 3), b=r(6))
    CASES["conv_same_dilated"] = case(
        "return F.conv2d(x, self.w, None, stride=1, padding='same', dilation=2)", w=r(4, 3, 4, 4))
    CASES["batch_norm_alone"] = case(
        "return F.batch_norm(torch.relu(x), self.m, self.v, self.g, self.b, False, 0.1, 1e-5)",
        m=r(3), v=r(3).abs() + 0.5, g=r(3), b=r(3))
    CASES["relu6_hardtanh"] = case("return F.relu6(x) + F.hardtanh(x, -0.5, 2.0)")
    CASES["hardswish_hardsigmoid"] = case("return F.hardswish(x) * F.hardsigmoid(x)")
    CASES["silu_sigmoid_tanh"] = case("return F.silu(x) - torch.sigmoid(x) + torch.tanh(x)")
    CASES["gelu_erf_tanh"] = case("return F.gelu(x) + F.gelu(x, approximate='tanh')")
    CASES["add_alpha_scalar_div"] = case("return torch.add(x, x * 2.0, alpha=0.5) / 3.0 - 1.0")
    CASES["pools"] = case(
        "return torch.cat([F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 2), "
        "F.adaptive_avg_pool2d(x, 4)], 1)")
    CASES["mean_flatten_linear"] = case(
        "return F.linear(torch.flatten(x.mean([2, 3], keepdim=True), 1), self.w, self.b)",
        w=r(5, 3), b=r(5))
    CASES["view_matmul_addmm"] = case(
        "y = x.view(x.size(0), -1)\n        return torch.addmm(self.b, y, self.w) + y @ self.w",
        w=r(192, 7), b=r(7))
    CASES["linear_3d_layer_norm"] = case(
        "y = F.linear(x.reshape(2, 3, 64), self.w, self.b)\n"
        "        return F.layer_norm(y, [16], self.g, self.bb, 1e-5)",
        w=r(16, 64), b=r(16), g=r(16), bb=r(16))
    CASES["softmax_log_softmax"] = case("return F.softmax(x, 1) + F.log_softmax(x, -1)")
    CASES["static_branch_loop"] = case(
        "if x.dim() == 4:\n            x = x * 2.0\n        else:\n            x = x - 1.0\n"
        "        for i in range(3):\n            x = x + float(i)\n        return torch.relu(x)")
    CASES["dropout_contiguous"] = case("return F.dropout(x, 0.5, False).contiguous()")
    CASES["refuse_cumsum"] = case("return torch.cumsum(x, 1)")
    CASES["refuse_data_branch"] = case(
        "if bool(x.mean([0, 1, 2, 3])):\n            return x * 2.0\n        return x")
    CASES["refuse_tuple"] = case("return x, x")


def make_student(out: str, channels: int, classes: int) -> None:
    torch.manual_seed(0)

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False),
                                    nn.BatchNorm2d(16), nn.Hardswish())
            self.pw = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.SiLU())
            self.side = nn.Sequential(nn.Conv2d(16, 8, 1), nn.GELU())
            self.se1 = nn.Conv2d(32, 8, 1)
            self.se2 = nn.Conv2d(8, 32, 1)
            self.gate = nn.Conv2d(32, 32, 1)
            self.norm = nn.LayerNorm(32)
            self.fc = nn.Linear(32, classes)

        def forward(self, x):
            x = self.stem(x)
            y = self.dw(x)
            y = torch.cat([self.pw(y), self.side(F.max_pool2d(x, 2))], 1)
            s = F.hardsigmoid(self.se2(torch.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
            y = y * s + y * torch.sigmoid(self.gate(F.avg_pool2d(y, 3, 1, 1)))
            y = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
            return self.fc(self.norm(y))

    torch.jit.script(Student()).save(out)


def make_refusing_student(out: str, channels: int, classes: int) -> None:
    """A student fkd trains but cannot export: a cumulative sum in its forward."""
    torch.manual_seed(0)

    class Refusing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(channels, 8, 3, padding=1)
            self.fc = nn.Linear(8, classes)

        def forward(self, x):
            y = torch.cumsum(torch.relu(self.conv(x)), 2)
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))

    torch.jit.script(Refusing()).save(out)


def main() -> None:
    if sys.argv[1] == "cases":
        out = sys.argv[2]
        os.makedirs(out, exist_ok=True)
        os.environ["EDGE_OPS_TMP"] = out
        make_cases()
        for name, m in CASES.items():
            m.save(os.path.join(out, name + ".pt"))
            print(name)
        os.remove(os.path.join(out, f"edge_case_{os.getpid()}.py"))
    elif sys.argv[1] == "student":
        make_student(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "refusing-student":
        make_refusing_student(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
