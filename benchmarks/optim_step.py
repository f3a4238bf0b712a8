"""Step time of every preset as a ratio to its torch counterpart (foreach), measured in the same run.

Model: an MLP of about 10M parameters (float32, CPU). For each preset, our optimizer and torch's are built on
two copies of the model with the same gradients; their ``step()`` calls are interleaved (ours, torch, ours, ...)
for ``--repeats`` rounds after ``--warmup`` rounds, and the ratio of the medians is reported. AsyncAdaNorm has no
torch counterpart and is compared with torch Adagrad (the closest kernel sequence). torch.optim.Muon has no
foreach path; it is compared with its for-loop (its only) implementation.

Usage::

    python benchmarks/optim_step.py --out optim_step.json [--repeats 30] [--warmup 5] [--width 2048]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from lightning_async.optim import (
    AsyncAdagrad,
    AsyncAdam,
    AsyncAdamW,
    AsyncAdaNorm,
    AsyncMuon,
    AsyncRMSprop,
    AsyncSGD,
)

# name -> (ours, torch counterpart, kwargs shared by both, torch-only kwargs)
PRESETS: dict[str, tuple[Callable, Callable, dict, dict]] = {
    "AsyncSGD(momentum=0.9)": (AsyncSGD, torch.optim.SGD, dict(lr=1e-3, momentum=0.9), dict(foreach=True)),
    "AsyncAdagrad": (AsyncAdagrad, torch.optim.Adagrad, dict(lr=1e-3), dict(foreach=True)),
    "AsyncAdaNorm (vs Adagrad)": (AsyncAdaNorm, torch.optim.Adagrad, dict(lr=1e-3), dict(foreach=True)),
    "AsyncRMSprop(momentum=0.9)": (AsyncRMSprop, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.9),
                                   dict(foreach=True)),
    "AsyncAdam": (AsyncAdam, torch.optim.Adam, dict(lr=1e-3), dict(foreach=True)),
    "AsyncAdamW": (AsyncAdamW, torch.optim.AdamW, dict(lr=1e-3), dict(foreach=True)),
    "AsyncMuon": (AsyncMuon, torch.optim.Muon, dict(lr=1e-3), dict()),
}


def make_model(width: int, matrices_only: bool) -> torch.nn.Module:
    # 3 square layers of width w and a head: ~3 w^2 parameters (w=1824 gives ~10M)
    layers = []
    for _ in range(3):
        layers += [torch.nn.Linear(width, width, bias=not matrices_only), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, 10, bias=not matrices_only))
    return torch.nn.Sequential(*layers)


def fill_grads(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2


def time_step(opt: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def bench(name: str, width: int, repeats: int, warmup: int) -> dict:
    ours_cls, torch_cls, kwargs, torch_kwargs = PRESETS[name]
    model_a = make_model(width, matrices_only=torch_cls is torch.optim.Muon)
    model_b = copy.deepcopy(model_a)
    fill_grads(model_a, 0)
    fill_grads(model_b, 0)
    ours = ours_cls(model_a.parameters(), **kwargs)
    theirs = torch_cls(model_b.parameters(), **kwargs, **torch_kwargs)
    t_ours, t_torch = [], []
    for i in range(warmup + repeats):
        if i % 2:  # alternate who goes first, so neither always runs on a warmer cache
            b = time_step(theirs)
            a = time_step(ours)
        else:
            a = time_step(ours)
            b = time_step(theirs)
        if i >= warmup:
            t_ours.append(a)
            t_torch.append(b)
    n_params = sum(p.numel() for p in model_a.parameters())
    m_ours, m_torch = statistics.median(t_ours), statistics.median(t_torch)
    # The median of the per-round ratios is robust to load that drifts during the run (shared machines).
    paired = statistics.median(a / b for a, b in zip(t_ours, t_torch))
    return {"preset": name, "torch": torch_cls.__name__, "params": n_params, "ours_ms": 1e3 * m_ours,
            "torch_ms": 1e3 * m_torch, "ratio_of_medians": m_ours / m_torch, "ratio": paired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the JSON results")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--width", type=int, default=1824, help="layer width (1824: about 10M parameters)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", default=None, help="subset of preset names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or list(PRESETS)
    rows = [bench(name, args.width, args.repeats, args.warmup) for name in names]
    print(f"| {'preset':<28} | {'torch':<8} | {'params':>9} | {'ours ms':>8} | {'torch ms':>8} | "
          f"{'ratio (median of pairs)':>23} | {'ratio of medians':>16} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 25}|{'-' * 18}|")
    for r in rows:
        print(f"| {r['preset']:<28} | {r['torch']:<8} | {r['params']:>9} | {r['ours_ms']:>8.2f} | "
              f"{r['torch_ms']:>8.2f} | {r['ratio']:>23.3f} | {r['ratio_of_medians']:>16.3f} |")
    meta = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
            "width": args.width, "machine": platform.machine(), "python": platform.python_version()}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
