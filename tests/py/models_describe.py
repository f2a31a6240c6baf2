"""Prints parameter counts and state-dict names/shapes of fkd zoo models built in Python.

usage: models_describe.py NAME:IN_CHANNELS:NUM_CLASSES ...
For each spec prints "model SPEC params N" followed by one "KEY SHAPE" line per state-dict
entry in order (SHAPE is comma-separated sizes, "-" for a scalar), then "end".
resnet18 / resnet50 / mobilenetv2 come from torchvision (python/fkd_models.py).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import torch  # noqa: E402
import fkd_models  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    for spec in sys.argv[1:]:
        name, cin, ncls = spec.split(":")
        model = fkd_models.make_model(name, int(cin), int(ncls))
        print(f"model {spec} params {fkd_models.count_parameters(model)}")
        for key, t in model.state_dict().items():
            shape = ",".join(str(s) for s in t.shape) or "-"
            print(f"{key} {shape}")
        print("end")


if __name__ == "__main__":
    main()
