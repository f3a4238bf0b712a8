"""Callbacks that make workers slow or faulty on purpose: for tests, demos and benchmarks.

Both are keyed on the worker's global rank and its own step count, so a run is reproducible whatever the timing.
They can be configured in YAML like any callback (``trainer.callbacks``), or from the environment with
:func:`fault_injector_from_env` so that they work under any launcher.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def _ranks(ranks: int | Sequence[int]) -> frozenset[int]:
    values = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    for r in values:
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"ranks must be non-negative integers, got {ranks!r}.")
    return frozenset(values)


_WARMUP_STEPS = 3


def _read_seconds(trainer: Trainer) -> float:
    return float(getattr(getattr(trainer, "strategy", None), "read_seconds", 0.0))


class Slowdown(Callback):
    """Makes the chosen workers ``factor`` times slower at computing their gradients.

    A slowed worker's natural gradient time (from the start of its step's batch to its optimizer step: the forward
    and backward passes) is tracked as the median of its recent steps. Each step of a slowed worker then sleeps
    ``(factor - 1)`` times that long between computing its gradient and the optimizer step, as a device ``factor``
    times slower would. What follows the gradient is not scaled: the update, its communication, and fetching the
    next batch take the same time on a slower device, and scaling them would multiply whatever an engine or a
    strategy does there (a round trip, a wait) by ``factor - 1``. Nor is the strategy's wait for its parameters as
    the step starts (``AsyncAdaptiveStrategy.read_seconds``, which the parameter-server engine spends on the reply
    to its last push): it runs after the callbacks' batch start and is left out of the gradient time. Under DDP
    the sleep holds back every worker at the next all-reduce; under ``async_adaptive`` only the slowed worker.

    Args:
        ranks: global rank(s) to slow down.
        factor: slowdown factor k >= 1 (1 means no slowdown).
        extra_seconds: a constant delay added to every slowed step, on top of the proportional one.
    """

    def __init__(self, ranks: int | list[int] = 1, factor: float = 2.0, extra_seconds: float = 0.0) -> None:
        self.ranks = _ranks(ranks)
        if not factor >= 1.0:
            raise ValueError(f"factor must be >= 1 (1 = no slowdown), got {factor!r}.")
        if not extra_seconds >= 0.0:
            raise ValueError(f"extra_seconds must be >= 0, got {extra_seconds!r}.")
        self.factor = float(factor)
        self.extra_seconds = float(extra_seconds)
        self.natural_step_seconds: float | None = None
        self.slept = 0.0
        self._start: float | None = None
        self._read_at_start = 0.0
        self._recent: deque[float] = deque(maxlen=32)
        self._steps = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._start is None:  # the first batch of the optimizer step (with gradient accumulation, of its window)
            self._start = time.perf_counter()
            self._read_at_start = _read_seconds(trainer)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self._start is None:
            return
        # the strategy's hook takes the reads after the callbacks' batch start: a wait for the network, not compute
        computed = time.perf_counter() - self._start - (_read_seconds(trainer) - self._read_at_start)
        self._start = None
        if trainer.global_rank not in self.ranks:
            return
        # not slowed until its natural speed is known (after the warm-up steps)
        natural = self.natural_step_seconds or 0.0
        delay = (self.factor - 1.0) * natural + self.extra_seconds
        if delay > 0:
            time.sleep(delay)
            self.slept += delay
        self._steps += 1
        if self._steps > _WARMUP_STEPS:  # the first iterations are mostly warm-up, not the worker's speed
            self._recent.append(computed)
            # the median of recent steps: robust to scheduling hiccups
            self.natural_step_seconds = statistics.median(self._recent)


FAULTS = ("crash", "hang", "nan", "inf", "raise", "delay", "duplicate")


class FaultInjector(Callback):
    """Injects a fault on chosen workers at chosen steps (the worker's own count of optimizer steps, from 0).

    Faults:
        ``"nan"`` / ``"inf"``: the gradients of that step become non-finite (after backward, before the step).
        ``"crash"``: the process exits at once with exit code 1 (``os._exit``), as a killed worker would.
        ``"hang"``: the process sleeps ``seconds`` (default one hour) between its gradient and its update: a hung
        worker that holds a read.
        ``"raise"``: a ``RuntimeError`` is raised in the training loop.
        ``"delay"``: the step is delayed by ``seconds``.
        ``"duplicate"``: after the step, the worker's last update is sent again to every remote owner, byte for
        byte (``engine="parameter_server"`` only: the shared-memory engine has no wire). Each owner must reject it
        as ``rejected_duplicate``; the verdicts are kept in ``duplicate_verdicts``.

    Args:
        fault: one of the faults above.
        ranks: global rank(s) where it happens.
        steps: the step(s) at which it happens.
        seconds: duration for ``"hang"`` and ``"delay"``.
    """

    def __init__(
        self, fault: str, ranks: int | list[int] = 1, steps: int | list[int] = 0, seconds: float = 3600.0
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}.")
        self.fault = fault
        self.ranks = _ranks(ranks)
        self.steps = _ranks(steps)
        self.seconds = float(seconds)
        self.fired = 0
        self.duplicate_verdicts: dict[int, str] = {}
        self._step = 0

    def _due(self, trainer: Trainer) -> bool:
        return trainer.global_rank in self.ranks and self._step in self.steps

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._due(trainer):
            return
        if self.fault == "crash":
            os._exit(1)
        if self.fault == "raise":
            self.fired += 1
            raise RuntimeError(f"FaultInjector: injected error on worker {trainer.global_rank} at step {self._step}")
        if self.fault == "delay":
            self.fired += 1
            time.sleep(self.seconds)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.fault == "hang" and self._due(trainer):  # mid-step: after the read, before the update
            self.fired += 1
            time.sleep(self.seconds)
        if self.fault in ("nan", "inf") and self._due(trainer):
            value = float("nan") if self.fault == "nan" else float("inf")
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.fill_(value)
                    break
            self.fired += 1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.fault == "duplicate" and self._due(trainer):
            engine = getattr(trainer.strategy, "engine", None)
            if not hasattr(engine, "resend_last_push"):
                raise RuntimeError(
                    "FaultInjector('duplicate') needs AsyncAdaptiveStrategy(engine='parameter_server'): the "
                    "shared-memory engine sends no messages that could be duplicated."
                )
            self.duplicate_verdicts.update(engine.resend_last_push())
            self.fired += 1
        self._step += 1


def fault_injector_from_env(variable: str = "LIGHTNING_ASYNC_FAULT") -> FaultInjector | None:
    """Build a :class:`FaultInjector` from a JSON environment variable, e.g.
    ``LIGHTNING_ASYNC_FAULT='{"fault": "crash", "ranks": 1, "steps": 5}'``; ``None`` when it is unset."""
    raw = os.environ.get(variable)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{variable} must hold a JSON object such as {{\"fault\": \"nan\"}}, got {raw!r}") from error
    return FaultInjector(**spec)


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters that hold a NaN or an infinity (empty when all are finite)."""
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]
