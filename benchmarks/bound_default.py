"""How the staleness bound K should grow with the worker count N: a simulator study behind ``max_staleness="auto"``.

For each N and each candidate K, N virtual workers of equal mean speed with per-step noise (``const:1+lognormal:S``,
and optionally one worker F times slower) train the simulator's non-convex ``mlp`` problem with Adam for a fixed
virtual time, under ``bound_policy="accumulate"`` (held-back gradients averaged, as both real engines do). Printed
per (N, K), as medians over seeds:

* ``idle``: the fraction of worker time spent waiting for the bound (``wait_time / (N * virtual_time)``);
* ``grads/t``: gradients computed per unit of virtual time, relative to the unbounded run of the same N (1.0 = no
  compute lost to the bound);
* ``upd/grad``: applied updates per computed gradient (below 1 when ``accumulate`` sums gradients);
* ``stale``: the mean staleness of the applied updates;
* ``F``: the objective averaged over the last tenth of the run, relative to the best K of the same N (lower is
  better, 1.0 = best).

Usage::

    python benchmarks/bound_default.py                       # N = 2, 4, 8, 16; about two minutes on 2 cores
    python benchmarks/bound_default.py --workers 2 4 --seeds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from lightning_async._engine.simulated import SimulatedEngine
from lightning_async.sim.problems import get_problem


def candidates(n: int) -> list[int | None]:
    """Fixed bounds to compare: the old fixed default 4, multiples of N - 1, and no bound at all."""
    ks = {1, 4, max(n - 1, 1), 2 * (n - 1), 2 * n - 1, 4 * (n - 1)}
    return [*sorted(k for k in ks if k >= 1), None]


def run_one(
    n: int, k: int | None, seed: int, time_budget: float, speeds: str, lr: float, reduction: str
) -> dict[str, float]:
    problem = get_problem("mlp", seed=0, dtype=torch.float32, batch_size=16)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(problem.model.parameters(), lr=lr)
    engine = SimulatedEngine(
        problem.model, optimizer, problem.loss_fn, problem.sample, workers=n, speeds=speeds,
        max_staleness=k, bound_policy="accumulate", accumulate_reduction=reduction, seed=seed, keep_records=False,
    )
    tail: list[float] = []  # the objective over the last tenth of the run, once per unit of virtual time
    next_eval = 0.9 * time_budget
    while engine.virtual_time < time_budget:
        engine.run(1)
        if engine.virtual_time >= next_eval:
            tail.append(problem.objective()[0])
            next_eval += 1.0
    loss = statistics.fmean(tail)
    counters = engine.counters.as_dict()
    applied = counters["applied"]
    return {
        "idle": engine.total_wait_time() / (n * engine.virtual_time),
        "grads_per_t": engine.computations / engine.virtual_time,
        "updates_per_grad": applied / max(engine.computations, 1),
        "staleness": counters["mean_staleness"],
        "loss": loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--time", type=float, default=150.0, help="virtual time per run (one step takes about 1)")
    parser.add_argument("--noise", type=float, default=0.3, help="sigma of the lognormal per-step noise")
    parser.add_argument("--slow", type=float, default=None, help="make worker 0 this many times slower")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--reduction", default="mean", choices=["mean", "sum"],
                        help="how 'accumulate' combines the gradients it holds back (the real engines: mean)")
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for n in args.workers:
        base = f"slow:1:{args.slow}" if args.slow else "const:1"
        speeds = f"{base}+lognormal:{args.noise}" if args.noise > 0 else base
        per_k: dict[int | None, dict[str, float]] = {}
        for k in candidates(n):
            runs = [run_one(n, k, seed, args.time, speeds, args.lr, args.reduction) for seed in range(args.seeds)]
            per_k[k] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        free = per_k[None]["grads_per_t"]
        best = min(r["loss"] for r in per_k.values())
        print(f"\nN = {n}, speeds {speeds}, {args.seeds} seeds, virtual time {args.time}, {args.reduction}")
        print(f"{'K':>10} {'idle':>6} {'grads/t':>8} {'upd/grad':>9} {'stale':>6} {'F':>6}")
        for k, r in per_k.items():
            label = "none" if k is None else str(k)
            tags = [t for t, v in (("N-1", n - 1), ("2(N-1)", 2 * (n - 1)), ("2N-1", 2 * n - 1)) if v == k]
            label += f" ({', '.join(tags)})" if tags else ""
            print(f"{label:>10} {r['idle']:6.3f} {r['grads_per_t'] / free:8.3f} {r['updates_per_grad']:9.3f} "
                  f"{r['staleness']:6.2f} {r['loss'] / best:6.3f}")
            rows.append({"workers": n, "max_staleness": k, "speeds": speeds, **r})
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
