"""Writes a traced TorchScript teacher for tests/test_models.cpp.

usage: models_make_teacher.py DIR
Writes DIR/teacher.pt (torch.jit.trace of fkd's tiny model, 1 channel, 10 classes, with
randomized BatchNorm statistics), DIR/input.pt ([4, 1, 28, 28]) and DIR/logits.pt (the eager
model's eval logits on that input).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import fkd_models  # noqa: E402
from models_run import randomize_batchnorm  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    torch.manual_seed(3)
    model = fkd_models.make_model("tiny", 1, 10)
    randomize_batchnorm(model, 3, 1)
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        y = model(x)
    traced.save(os.path.join(out, "teacher.pt"))
    torch.save(x, os.path.join(out, "input.pt"))
    torch.save(y, os.path.join(out, "logits.pt"))
    print("ok")


if __name__ == "__main__":
    main()
