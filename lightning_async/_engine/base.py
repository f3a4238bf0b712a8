"""The engine interface: what the Lightning glue asks of the place where the authoritative state lives.

A worker's life under any engine::

    engine.begin_step(local_params)        # take a read: fresh parameters and their version (or keep the ones held)
    ... forward / backward on the local copy ...
    engine.submit(local_params, samples)   # apply, defer (accumulate) or reject the update
    engine.end_epoch(local_params)         # flush what is deferred, release the read, refresh the local copy

Counters (per worker, summed by :meth:`Engine.telemetry`) obey ``applied + rejected_stale + rejected_nonfinite ==
received``; every applied update's staleness is recorded in a histogram whose sum is ``applied``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_async.errors import NonFiniteGradientError

#: per-worker integer counters, in the order they are stored
COUNTERS: tuple[str, ...] = (
    "gradients",  # gradients computed by the worker (local steps)
    "received",  # updates offered to the authority (a deferred gradient is not offered yet)
    "applied",
    "rejected_stale",
    "rejected_nonfinite",
    "deferred",  # offers put off by the "accumulate" policy (the gradient stays in the local sum)
    "samples",  # samples in applied updates
)
#: per-worker float timers, in seconds
TIMERS: tuple[str, ...] = ("wait_seconds", "busy_seconds", "heartbeat", "started")


@dataclass
class Telemetry:
    """A summary of one run's staleness and throughput, for logs and the end-of-fit report."""

    counters: dict[str, int]
    per_worker: list[dict[str, float]]
    staleness_histogram: list[int]
    max_staleness: int | None
    bound_policy: str
    version: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def staleness_mean(self) -> float:
        total = sum(self.staleness_histogram)
        return sum(s * n for s, n in enumerate(self.staleness_histogram)) / total if total else 0.0

    @property
    def staleness_max(self) -> int:
        nonzero = [s for s, n in enumerate(self.staleness_histogram) if n]
        return nonzero[-1] if nonzero else 0

    def metrics(self, prefix: str = "async/") -> dict[str, float]:
        """Flat scalars for a Lightning logger."""
        out = {f"{prefix}{k}": float(v) for k, v in self.counters.items()}
        out[f"{prefix}staleness_mean"] = self.staleness_mean
        out[f"{prefix}staleness_max"] = float(self.staleness_max)
        out[f"{prefix}version"] = float(self.version)
        for w, row in enumerate(self.per_worker):
            out[f"{prefix}worker{w}/samples_per_s"] = row["samples_per_s"]
            out[f"{prefix}worker{w}/wait_fraction"] = row["wait_fraction"]
        return out

    def summary(self) -> str:
        """A human-readable report, printed at the end of fit.

        It names what each counter counts: a gradient is one worker's local step; an *update* is what reaches the
        optimizer (one gradient, or the average of gradients a worker held back under ``"accumulate"`` and its
        next one); on the parameter-server engine each owner counts its own blocks' part of an update.
        """
        c = self.counters
        workers = len(self.per_worker)
        engine = self.extra.get("engine")
        owners = len(self.extra.get("owners", ())) or 1
        head = f"lightning_async: {workers} worker{'s' if workers != 1 else ''}"
        if engine:
            head += f", engine {engine!r}" + (f" ({owners} owners)" if owners > 1 else "")
        head += f", bound policy {self.bound_policy!r}, max_staleness {self.max_staleness}"
        per_worker = ", ".join(f"worker {w}: {int(row['gradients'])}" for w, row in enumerate(self.per_worker))
        per_owner = f", counted per owner ({owners} owners each apply their blocks' part)" if owners > 1 else ""
        lines = [
            head,
            f"  gradients computed: {c['gradients']} ({per_worker})",
            f"  updates{per_owner}: {c['applied']} applied, {c['rejected_stale']} rejected as too stale, "
            f"{c['rejected_nonfinite']} rejected as non-finite (of {c['received']} received)",
        ]
        if c.get("deferred"):
            lines.append(
                f"  held back: {c['deferred']} times a gradient waited for the bound and was averaged into the "
                "same worker's next update instead of being applied alone"
                + (" (counted per owner)" if owners > 1 else "")
            )
        lines.append(
            f"  staleness of the applied updates: mean {self.staleness_mean:.2f}, max {self.staleness_max}, "
            f"histogram {_compact_histogram(self.staleness_histogram)}"
        )
        described = {
            "overlapped": "updates sent while the next gradient was computed (overlap)",
            "lost": "updates lost with a failed worker",
            "rejected_schema": "updates rejected for a wrong shape or dtype",
            "rejected_duplicate": "duplicate updates rejected",
            "rejected_version": "updates rejected for an unknown version",
        }
        extra = [f"{c[name]} {text}" for name, text in described.items() if c.get(name)]
        if extra:
            lines.append("  also: " + "; ".join(extra))
        for w, row in enumerate(self.per_worker):
            lines.append(
                f"  worker {w}: {int(row['samples'])} samples in applied updates, {row['samples_per_s']:.1f} "
                f"samples/s, waiting {100 * row['wait_fraction']:.1f}% of the time"
            )
        return "\n".join(lines)


def _compact_histogram(hist: Sequence[int]) -> str:
    return "{" + ", ".join(f"{s}: {n}" for s, n in enumerate(hist) if n) + "}"


class NonFiniteStreak:
    """Counts a worker's non-finite gradients in a row and stops the run once there are too many."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.count = 0

    def record(self, finite: bool, step: int, limit: int) -> None:
        """Note the verdict on the worker's gradient of ``step``; raise :class:`NonFiniteGradientError` once
        ``limit`` gradients in a row were non-finite (the engine's ``max_consecutive_nonfinite``)."""
        if finite:
            self.count = 0
            return
        self.count += 1
        if self.count >= limit:
            raise NonFiniteGradientError(
                f"worker {self.worker} produced non-finite gradients {self.count} times in a row (last at its step "
                f"{step}); none reached the optimizer state. Lower the learning rate, clip gradients "
                "(Trainer(gradient_clip_val=...)), or check the data, or raise max_consecutive_nonfinite."
            )


class Engine(ABC):
    """Owns the authoritative parameters and optimizer state; measures and bounds staleness.

    Beyond the step (:meth:`begin_step`, :meth:`submit`, :meth:`end_epoch`) the glue drives a worker's life:
    :meth:`adopt_optimizer_state` / :meth:`attach_state` once the optimizer exists, :meth:`start`, batches from
    :meth:`next_batch`, and at the end :meth:`finish` then :meth:`wait_for_workers` and :meth:`close` (or
    :meth:`leave`); after a failure :meth:`abort`. :meth:`request_stop` / :meth:`stop_requested` carry one worker's
    stopping condition to all. Long waits call :attr:`interrupt` on the worker's main thread.
    """

    worker: int
    num_workers: int
    #: called now and then inside long waits on the worker's own (main) thread; it raises to end the wait (the
    #: Lightning glue raises once the process received SIGTERM)
    interrupt: Callable[[], None] | None = None

    # ------------------------------------------------------------------ a worker's life
    @abstractmethod
    def adopt_optimizer_state(self, is_creator: bool) -> None:
        """Take over the user's optimizer state as the authoritative one (after it was created or loaded);
        ``is_creator``: this process creates what the others attach to."""

    @abstractmethod
    def attach_state(self) -> None:
        """Attach to the authoritative optimizer state made by the creator (a no-op where there is nothing to map)."""

    @abstractmethod
    def start(self) -> None:
        """Mark this worker as training (its clocks start; the engine's threads run)."""

    @abstractmethod
    def next_batch(self, epoch: int, num_batches: int) -> int | None:
        """The next unclaimed batch index of ``epoch`` (each index once over all workers), or ``None``."""

    @abstractmethod
    def finish(self, local_params: Sequence[torch.Tensor]) -> None:
        """End training on this worker: flush what is deferred, release its reads and mark it finished."""

    @abstractmethod
    def wait_for_workers(self, timeout: float, *, raise_on_failure: bool = True) -> bool:
        """Wait (at most ``timeout`` seconds) until no other worker still trains; ``True`` if none does.
        ``raise_on_failure``: raise if a peer failed instead of finishing (else a failed peer counts as done)."""

    @abstractmethod
    def abort(self, reason: str) -> None:
        """Stop after a failure of this worker, telling the peers ``reason`` (idempotent; no goodbye)."""

    @abstractmethod
    def request_stop(self) -> None:
        """Ask every worker to stop training at the end of its current step (one worker's stopping condition)."""

    @abstractmethod
    def stop_requested(self) -> bool:
        """Whether some worker called :meth:`request_stop`."""

    @abstractmethod
    def describe_peers(self) -> str:
        """The other workers' state in a line, for error messages (alive, finished, failed, what read they hold)."""

    def is_gone(self, rank: int) -> bool:
        """Whether ``rank`` was dropped from the run and the others go on without it. Engines that stop the whole
        run on any failure (this default) never drop a worker."""
        del rank
        return False

    def leave(self) -> bool:
        """Leave the run for good after :meth:`finish` or :meth:`abort` and release this worker's resources;
        ``True`` if this worker also removed what the run shares (it was the last to leave)."""
        self.close()
        return True

    @abstractmethod
    def begin_step(self, local_params: Sequence[torch.Tensor]) -> None:
        """Before computing a gradient: copy fresh parameters into ``local_params`` unless a read is held."""

    @abstractmethod
    def submit(self, local_params: Sequence[torch.Tensor], samples: int) -> str:
        """Offer the gradients in ``local_params[i].grad``; return the verdict (``"applied"``, ``"deferred"``,
        ``"rejected_stale"`` or ``"rejected_nonfinite"``; the parameter-server engine with overlap also returns
        ``"sent"``: handed to a remote owner, whose verdict is counted in the telemetry)."""

    @abstractmethod
    def end_epoch(self, local_params: Sequence[torch.Tensor]) -> None:
        """Apply what is deferred, release the read, and copy the current parameters into ``local_params``."""

    @abstractmethod
    def refresh(self, local_params: Sequence[torch.Tensor]) -> None:
        """Copy the current authoritative parameters into ``local_params`` without taking a read."""

    @property
    @abstractmethod
    def version(self) -> int:
        """Updates applied so far over all blocks' owner(s): the global progress of training."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of parameters, optimizer state, versions and counters (plain tensors and ints)."""

    @abstractmethod
    def load_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Restore versions and counters saved by :meth:`snapshot`."""

    @abstractmethod
    def telemetry(self) -> Telemetry:
        """Counters, staleness histogram and per-worker throughput over all workers."""

    @abstractmethod
    def close(self) -> None:
        """Release shared resources (idempotent)."""


def all_finite(grads: Sequence[torch.Tensor | None]) -> bool:
    """Whether every floating-point gradient is finite: one fused reduction, not a Python loop over tensors."""
    tensors = [g for g in grads if g is not None and (g.is_floating_point() or g.is_complex())]
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors, ord=math.inf)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def is_async_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer takes ``step(staleness=...)`` (a :mod:`lightning_async.optim` optimizer)."""
    from lightning_async.optim import AsyncOptimizer  # engines may use the rules; the rules never import engines

    return isinstance(optimizer, AsyncOptimizer)
