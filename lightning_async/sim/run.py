"""Run the simulated engine on a :class:`~lightning_async.sim.problems.Problem` and record the trajectory.

The trajectory holds, at log-spaced applied-update counts ``t`` (and ``t = 0``), the exact objective ``F(X_t)``, the
exact stationarity measure ``||grad F(X_t)||^2`` and its running minimum over the evaluated iterates, with the
virtual time; the result adds the staleness histogram, the counters and the rate check of
:mod:`lightning_async.sim.metrics`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from lightning_async._engine.simulated import SimulatedEngine
from lightning_async.sim.metrics import eval_schedule, rate_check, running_min
from lightning_async.sim.problems import Problem


def simulate(
    problem: Problem,
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    eval_points: int = 60,
    lr_decay: str = "none",
    max_received: int | None = None,
    **engine_kwargs: Any,
) -> dict[str, Any]:
    """Train ``problem.model`` with ``optimizer`` on ``steps`` applied updates of the simulated engine.

    Args:
        problem: the objective (its ``sample`` is the engine's data source).
        optimizer: built on ``problem.model.parameters()``.
        steps: applied updates to run.
        eval_points: about this many log-spaced evaluations of ``F`` and ``||grad F||^2``.
        lr_decay: ``"none"`` or ``"sqrt"``: multiply every group's ``lr`` by ``1 / sqrt(1 + t)`` after applied update
            ``t`` (a diminishing step for optimizers without a step rule of their own).
        max_received: passed to :meth:`SimulatedEngine.run`.
        **engine_kwargs: passed to :class:`SimulatedEngine` (workers, speeds, blocks, selection, overlap,
            max_staleness, bound_policy, seed, ...).

    Returns:
        A JSON-ready dictionary: ``trajectory``, ``staleness_histogram``, ``counters``, ``rate``, ``engine``,
        ``wall_time_s``, ``updates_per_s``, ``stopped_by``.
    """
    if lr_decay not in ("none", "sqrt"):
        raise ValueError(f"lr_decay must be 'none' or 'sqrt', got {lr_decay!r}.")
    engine_kwargs.setdefault("keep_records", False)
    engine = SimulatedEngine(problem.model, optimizer, problem.loss_fn, problem.sample, **engine_kwargs)
    schedule = eval_schedule(steps, eval_points)
    traj: dict[str, list[float]] = {"applied": [], "virtual_time": [], "loss": [], "grad_norm_sq": []}
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    nxt = {"i": 0}

    def evaluate(t: int) -> None:
        loss, gsq = problem.objective()
        traj["applied"].append(t)
        traj["virtual_time"].append(engine.virtual_time)
        traj["loss"].append(loss)
        traj["grad_norm_sq"].append(gsq)

    def on_apply(e: SimulatedEngine) -> None:
        t = e.counters.applied
        if lr_decay == "sqrt":
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr / math.sqrt(1 + t)
        while nxt["i"] < len(schedule) and schedule[nxt["i"]] <= t:
            if schedule[nxt["i"]] == t:
                evaluate(t)
            nxt["i"] += 1

    on_apply(engine)  # t = 0
    start = time.perf_counter()
    state = engine.run(steps, callback=on_apply, max_received=max_received)
    wall = time.perf_counter() - start
    engine.counters.check()
    traj["min_grad_norm_sq"] = running_min(traj["grad_norm_sq"])
    positive = [(t, m) for t, m in zip(traj["applied"], traj["min_grad_norm_sq"]) if t > 0]
    rate = rate_check([p[0] for p in positive], [p[1] for p in positive]) if positive else {}
    counters = engine.counters.as_dict()
    return {
        "problem": {"name": problem.name, "description": problem.description},
        "trajectory": traj,
        "staleness_histogram": counters["staleness_histogram"],
        "counters": counters,
        "rate": rate,
        "engine": engine.summary(),
        "stopped_by": state.stopped_by,
        "wall_time_s": wall,
        "updates_per_s": state.applied / wall if wall > 0 else None,
        "final": {"loss": traj["loss"][-1], "grad_norm_sq": traj["grad_norm_sq"][-1],
                  "min_grad_norm_sq": traj["min_grad_norm_sq"][-1]},
    }
