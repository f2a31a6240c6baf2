"""Runs fkd zoo models in Python for the C++ interop tests (tests/test_models.cpp).

usage: models_run.py JOB [+ JOB ...]   (several jobs share one interpreter start)
  load-sd NAME IN CLASSES SD INPUT OUT
      builds the model (python/fkd_models.py), load_state_dict(torch.load(SD), strict=True),
      eval mode, saves its logits on torch.load(INPUT) to OUT.
  export-sd NAME IN CLASSES SEED SD INPUT OUT
      builds the model with torch.manual_seed(SEED), randomizes BatchNorm weights and running
      statistics (measured on a random batch), saves torch.save(dict(state_dict)) to SD and its eval logits on INPUT to OUT.
  jit ARCHIVE INPUT OUT [NAME IN CLASSES]
      torch.jit.load(ARCHIVE), saves its logits on INPUT to OUT; with NAME IN CLASSES also
      checks that the archive's state-dict names and shapes equal the Python model's.
Prints "ok JOB" per finished job; exits non-zero on any error.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import torch  # noqa: E402
import fkd_models  # noqa: E402


def randomize_batchnorm(model: torch.nn.Module, seed: int, in_channels: int) -> None:
    """Random BatchNorm affine weights, then running statistics measured on a random batch
    (as tests/test_models.cpp does), with num_batches_tracked set to 7."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.momentum = 1.0
        model.train()
        model(torch.randn(8, in_channels, 32, 32, generator=g) * 4)
        for m in bns:
            m.momentum = 0.1
            m.num_batches_tracked.fill_(7)


def logits(model, path_in: str, path_out: str) -> None:
    x = torch.load(path_in)
    with torch.no_grad():
        y = model(x)
    torch.save(y.detach().contiguous(), path_out)


def run(job) -> None:
    kind, args = job[0], job[1:]
    if kind == "load-sd":
        name, cin, ncls, sd, inp, out = args
        model = fkd_models.make_model(name, int(cin), int(ncls))
        model.load_state_dict(torch.load(sd), strict=True)
        model.eval()
        logits(model, inp, out)
    elif kind == "export-sd":
        name, cin, ncls, seed, sd, inp, out = args
        torch.manual_seed(int(seed))
        model = fkd_models.make_model(name, int(cin), int(ncls))
        randomize_batchnorm(model, int(seed), int(cin))
        model.eval()
        torch.save(dict(model.state_dict()), sd)
        logits(model, inp, out)
    elif kind == "jit":
        archive, inp, out = args[:3]
        model = torch.jit.load(archive)
        model.eval()
        if len(args) == 6:  # the archive's state dict must match the Python model's
            name, cin, ncls = args[3:]
            ref = fkd_models.make_model(name, int(cin), int(ncls)).state_dict()
            got = model.state_dict()
            if list(got) != list(ref):
                raise SystemExit(f"{archive}: state dict names differ from {name}'s")
            for key, t in ref.items():
                if got[key].shape != t.shape:
                    raise SystemExit(f"{archive}: {key} has shape {tuple(got[key].shape)}, "
                                     f"expected {tuple(t.shape)}")
        logits(model, inp, out)
    else:
        raise SystemExit(f"unknown job {kind}")
    print("ok", " ".join(job), flush=True)


def main() -> None:
    torch.set_num_threads(1)
    job = []
    for a in sys.argv[1:] + ["+"]:
        if a == "+":
            if job:
                run(job)
            job = []
        else:
            job.append(a)


if __name__ == "__main__":
    main()
