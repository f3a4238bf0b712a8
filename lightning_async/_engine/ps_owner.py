"""The owner side of the parameter-server engine: one authority per block group (versions, reads in flight,
admission under the staleness bound, the checks on every update, apply with the owner's optimizer, eviction).
"""

from __future__ import annotations

import copy
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_async._engine import ps_wire as wire
from lightning_async._engine.base import all_finite, is_async_optimizer
from lightning_async._engine.bound import StalenessBound
from lightning_async._engine.ps_common import (
    _DEAD,
    _EVICTED,
    _FINISHED,
    _REPORTED,
    _RUNNING,
    OWNER_COUNTERS,
    _versions,
)
from lightning_async._engine.ps_placement import (
    _restricted_optimizer,
)
from lightning_async.errors import AsyncTrainingError, WorkerDiedError, WorkerTimeoutError


@dataclass(frozen=True)
class OwnerContext:
    """What an owner's authority needs from the rank that hosts it: the run's settings and three hooks.

    Attributes:
        rank: the owner rank.
        num_workers: the world size.
        owner_ranks: every owner rank, sorted (the first one counts a non-finite update once for the run).
        bound: the run's staleness bound.
        timeout: seconds an admission wait may last before the read holders are blamed.
        hang_timeout: seconds a worker holding a read may stay silent (named in the error).
        on_worker_failure: ``"stop"`` or ``"continue"``.
        histogram_bins: bins of the staleness histogram.
        mark_gone: called with a worker the authority evicted (``"continue"``): the rank records it in the store.
        own_wait: called with the seconds the rank's own worker waited at this authority (its telemetry).
        interrupt: called while the rank's own worker waits here (it may raise, e.g. on a SIGTERM).
    """

    rank: int
    num_workers: int
    owner_ranks: list[int]
    bound: StalenessBound
    timeout: float
    hang_timeout: float
    on_worker_failure: str
    histogram_bins: int
    mark_gone: Callable[[int], None]
    own_wait: Callable[[float], None]
    interrupt: Callable[[], None]


class _Authority:
    """What one owner rank holds for its block group, shared by its server threads and its own worker.

    Args:
        context: the owner's settings and hooks.
        blocks: the blocks this owner holds.
        params: every worker-side parameter of the model (the owner copies its blocks').
        optimizer: the user's optimizer; its rule runs here restricted to ``blocks``.
    """

    def __init__(
        self, context: OwnerContext, blocks: list[int], params: list[torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> None:
        self.ctx = context
        self.blocks = blocks
        self.cond = threading.Condition()
        self.shadows = {b: torch.nn.Parameter(params[b].detach().clone(), requires_grad=True) for b in blocks}
        self.user_optimizer = optimizer
        self.optimizer, self._group_of = _restricted_optimizer(optimizer, params, self.shadows)
        self.version = 0
        self.block_versions = {b: 0 for b in blocks}
        self.reads: dict[int, list[int]] = {}  # worker -> read versions it holds, oldest first (two with overlap)
        self.read_queue: list[int] = []  # workers waiting for a read, first come first served
        self.last_seq: dict[int, int] = {}
        p = context.num_workers
        self.applied_samples = [0] * p  # per worker: the samples its applied updates carried
        self.counts = np.zeros((p, len(OWNER_COUNTERS)), dtype=np.int64)
        self.hist = np.zeros((p, context.histogram_bins), dtype=np.int64)
        self.reported = np.zeros((p, len(_REPORTED)), dtype=np.float64)
        self.status = [0] * p
        self.last_seen = [time.time()] * p
        self.failed: AsyncTrainingError | None = None
        self._c = {n: i for i, n in enumerate(OWNER_COUNTERS)}
        self._async = is_async_optimizer(self.optimizer)

    # -------------------------------------------------------------- bookkeeping
    def count(self, w: int, name: str, delta: int = 1) -> None:
        self.counts[w, self._c[name]] += delta

    def touch(self, w: int, prelude: list[int] | None = None) -> None:
        self.last_seen[w] = time.time()
        if self.status[w] == 0:
            self.status[w] = _RUNNING
        if prelude is not None:
            now = self.last_seen[w]
            self.reported[w] = [
                float(prelude[wire.P_GRADIENTS]), prelude[wire.P_WAIT_US] / 1e6, prelude[wire.P_BUSY_US] / 1e6,
                self.reported[w, 3] or now, now,
            ]

    def check(self, w: int) -> None:
        """Raise the owner's failure, or the eviction of ``w`` (called under the lock)."""
        if self.failed is not None:
            raise self.failed
        if self.status[w] in (_EVICTED, _DEAD):
            raise WorkerTimeoutError(
                f"worker {w} was evicted by owner rank {self.ctx.rank} (it was unresponsive for longer than the "
                "timeout); its updates are no longer accepted."
            )

    def _blame(self, w: int) -> list[int]:
        return sorted(v for v in self.reads if v != w)

    def _describe(self, holders: list[int]) -> str:
        now = time.time()
        return "; ".join(
            f"worker {h} holds read version {_versions(self.reads[h])} (last message "
            f"{now - self.last_seen[h]:.1f}s ago)"
            for h in holders if h in self.reads
        ) or "no other worker holds a read"

    def _in_flight(self, w: int, skip_oldest: bool = False) -> list[int]:
        """Every read in flight (``w``'s own included: with overlap its next read is in flight while its last
        update travels), without ``w``'s oldest if ``skip_oldest`` (the update being applied)."""
        out = [r for v, rs in self.reads.items() if v != w for r in rs]
        mine = self.reads.get(w, [])
        return out + (mine[1:] if skip_oldest else mine)

    def _take_read(self, w: int) -> int:
        self.reads.setdefault(w, []).append(self.version)
        return self.version

    def _drop_oldest(self, w: int) -> None:
        held = self.reads.get(w)
        if held:
            held.pop(0)
            if not held:
                del self.reads[w]
            self.cond.notify_all()

    def _drop_all(self, w: int) -> int:
        dropped = len(self.reads.pop(w, ()))
        if dropped:
            self.cond.notify_all()
        return dropped

    def wait_for(self, w: int, predicate: Any, what: str) -> None:
        """Under the lock: wait until ``predicate()``; on ``timeout``, fail or evict the silent read holders."""
        start = time.monotonic()
        deadline = start + self.ctx.timeout
        while True:
            self.check(w)
            if predicate():
                waited = time.monotonic() - start
                if waited > 0 and w == self.ctx.rank:
                    self.ctx.own_wait(waited)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holders = self._blame(w)
                message = (
                    f"worker {w} waited {self.ctx.timeout:.1f}s at owner rank {self.ctx.rank} to {what}; "
                    f"{self._describe(holders)}"
                )
                if self.ctx.on_worker_failure == "continue":
                    silent = [h for h in holders if time.time() - self.last_seen[h] >= self.ctx.timeout]
                    if silent:
                        for h in silent:
                            self._evict(h, _EVICTED)
                        deadline = time.monotonic() + self.ctx.timeout
                        continue
                error = WorkerTimeoutError(
                    message + ". Raise the timeout if the peers are just slow, or raise max_staleness."
                )
                if holders and self.ctx.on_worker_failure == "stop":
                    self.failed = error
                    self.cond.notify_all()
                raise error
            self.cond.wait(min(remaining, 0.5))
            if w == self.ctx.rank:
                self.ctx.interrupt()  # this worker's own wait (its main thread): a SIGTERM ends it

    def _evict(self, w: int, status: int) -> None:
        if self.status[w] in (_EVICTED, _DEAD, _FINISHED):
            self.status[w] = max(self.status[w], status) if self.status[w] != _FINISHED else _FINISHED
            return
        self.status[w] = status
        lost = self._drop_all(w)
        if lost:
            self.count(w, "lost", lost)  # the updates it was computing (or sending) will never arrive
        self.cond.notify_all()
        self.ctx.mark_gone(w)

    def worker_failed(self, w: int, error: wire.ChannelError) -> None:
        with self.cond:
            if self.status[w] == _FINISHED:
                return
            if self.ctx.on_worker_failure == "continue":
                print(
                    f"lightning_async: owner rank {self.ctx.rank}: worker {w} "
                    f"{'is hung' if error.timed_out else 'is gone (its connection closed)'}; its in-flight update is "
                    "lost and the others carry on (on_worker_failure='continue').",
                    file=sys.stderr, flush=True,
                )
                self._evict(w, _EVICTED if error.timed_out else _DEAD)
                return
            if self.failed is None:
                if error.timed_out:
                    self.failed = WorkerTimeoutError(
                        f"worker {w} held a read at owner rank {self.ctx.rank} and sent nothing for "
                        f"{self.ctx.hang_timeout:.1f}s: it is hung; the run stops (on_worker_failure='stop'). "
                        "Resume with Trainer.fit(..., ckpt_path='last')."
                    )
                else:
                    self.failed = WorkerDiedError(
                        f"worker {w} is no longer running (its connection to owner rank {self.ctx.rank} closed); "
                        "the run stops (on_worker_failure='stop'). Resume with Trainer.fit(..., ckpt_path='last')."
                    )
            self.status[w] = _EVICTED if error.timed_out else _DEAD
            self.cond.notify_all()

    def bye(self, w: int) -> None:
        with self.cond:
            if self.status[w] not in (_EVICTED, _DEAD):
                self.status[w] = _FINISHED
            self._drop_all(w)
            self.cond.notify_all()

    # -------------------------------------------------------------- reads
    def params_out(self, out: Any = None) -> Any:
        """Under the lock: the owned blocks as ``(block, version, tensor)``: clones, or ``out(views)``'s result
        (``out`` copies them where they go, e.g. into a reply frame or the local worker's parameters, while the
        lock keeps them consistent: no intermediate clone)."""
        if out is not None:
            return out([(b, self.block_versions[b], self.shadows[b].detach()) for b in self.blocks])
        return [(b, self.block_versions[b], self.shadows[b].detach().clone()) for b in self.blocks]

    def _may_read(self, w: int, pair: bool = False) -> bool:
        held = self._in_flight(w)
        return self.ctx.bound.may_read(self.version, [*held, self.version] if pair else held)

    def read(self, w: int, mode: int, out: Any = None) -> tuple[int, Any, int]:
        """Serve a READ: returns (version or -1 if no read was taken, parameters or None, reads taken)."""
        with self.cond:
            self.check(w)
            self.last_seen[w] = time.time()
            if mode in (wire.RELEASE, wire.RELEASE_REFRESH):
                self._drop_all(w)  # every read: the pushes sent before this request were served before it
                if mode == wire.RELEASE:
                    return -1, None, 0
            if mode in (wire.REFRESH, wire.RELEASE_REFRESH):
                return -1, self.params_out(out), 0
            if w in self.reads:  # already holds one: hand back the same version's parameters cannot be done
                raise AsyncTrainingError(f"worker {w} asked owner rank {self.ctx.rank} for a second read")
            if mode == wire.READ_TRY:
                if self.read_queue or not self._may_read(w):
                    return -1, None, 0
            else:  # first come first served: a worker that re-reads at once must not starve a waiting one
                self.read_queue.append(w)
                try:
                    self.wait_for(w, lambda: self.read_queue[0] == w and self._may_read(w), "take a read")
                finally:
                    self.read_queue.remove(w)
                    self.cond.notify_all()
            # READ_PAIR: two reads of one version (the worker's next gradient is computed on these parameters too,
            # while its first update travels: overlap) if the bound admits two; else one (it asks again later)
            pair = mode == wire.READ_PAIR and self._may_read(w, pair=True)
            if pair:
                self._take_read(w)
            return self._take_read(w), self.params_out(out), 2 if pair else 1

    # -------------------------------------------------------------- updates
    def push(
        self, w: int, seq: int, base: int, grads: list[tuple[int, Any]], samples: int, flags: int,
        schema_error: str | None, out: Any = None, finite: bool = False, deferred: int = 0,
    ) -> tuple[str, int, Any, int]:
        """Check and admit one update; returns (verdict, read version taken or -1, parameters or None, reads taken).

        The update's base must be the oldest read ``w`` holds here (a worker's updates arrive in the order of its
        reads). ``out``: see :meth:`params_out`. ``finite``: the caller (the local worker) already checked these very
        gradients. ``deferred``: gradients the worker summed into this update while its previous one was in
        flight (counted as ``deferred``)."""
        with self.cond:
            self.check(w)
            self.last_seen[w] = time.time()
            if seq <= self.last_seq.get(w, 0):
                return self._reject(w, "rejected_duplicate", release=False), -1, None, 0
            self.last_seq[w] = seq
            if deferred:
                self.count(w, "deferred", deferred)  # summed into this update by the worker (overlap)
            if schema_error is not None:
                return self._reject(w, "rejected_schema", release=True), -1, None, 0
            held = self.reads.get(w)
            if not held or held[0] != base or base > self.version:
                if held and held[0] != base:
                    self._drop_all(w)
                return self._reject(w, "rejected_version", release=False), -1, None, 0
            pipelined = bool(flags & wire.F_PIPELINED)  # the worker moved on: a rejection consumes the read
            if flags & wire.F_NONFINITE and self.ctx.owner_ranks[0] != self.ctx.rank:
                # the worker's one non-finite gradient reaches every owner (each releases its read); the first
                # owner counts it, as it counts samples, so one gradient is one rejection
                if pipelined:
                    self._drop_oldest(w)
                return "rejected_nonfinite", -1, None, 0
            if flags & wire.F_NONFINITE or not (finite or all_finite([g for _, g in grads])):
                return self._reject(w, "rejected_nonfinite", release=pipelined), -1, None, 0
            others = lambda: self._in_flight(w, skip_oldest=True)  # noqa: E731
            policy = self.ctx.bound.policy
            if policy == "wait" or (flags & wire.F_MUST_APPLY and policy == "accumulate"):
                self.wait_for(w, lambda: self.ctx.bound.may_apply(self.version, base, others()), "apply an update")
            elif not self.ctx.bound.may_apply(self.version, base, others()):
                if policy == "accumulate":
                    self.count(w, "deferred")
                    return "deferred", -1, None, 0
                return self._reject(w, "rejected_stale", release=True), -1, None, 0
            staleness = self.version - base
            self._apply(grads, staleness)
            self.applied_samples[w] += samples
            self.count(w, "received")
            self.count(w, "applied")
            if pipelined:
                self.count(w, "overlapped")
            if self.ctx.owner_ranks[0] == self.ctx.rank:
                self.count(w, "samples", samples)
            self.hist[w, min(staleness, self.ctx.histogram_bins - 1)] += 1
            self._drop_oldest(w)
            self.cond.notify_all()
            if flags & wire.F_WANT_READ and not self.read_queue:
                # a pair (the worker starts overlapping: it computes on these twice) if the bound admits two, else
                # one read if it admits one
                pair = bool(flags & wire.F_WANT_PAIR) and self._may_read(w, pair=True)
                if pair or self._may_read(w):
                    if pair:
                        self._take_read(w)
                    return "applied", self._take_read(w), self.params_out(out), 2 if pair else 1
            return "applied", -1, None, 0

    def others_samples(self, w: int) -> int:
        """The samples the updates of every worker but ``w`` applied here carried."""
        return sum(self.applied_samples) - self.applied_samples[w]

    def _reject(self, w: int, reason: str, *, release: bool) -> str:
        self.count(w, "received")
        self.count(w, reason)
        if release:
            self._drop_oldest(w)
        return reason

    def _apply(self, grads: list[tuple[int, Any]], staleness: int) -> None:
        user_groups = self.user_optimizer.param_groups
        for gi, group in zip(self._group_of, self.optimizer.param_groups):
            for key, value in user_groups[gi].items():
                if key != "params":
                    group[key] = value
        with torch.no_grad():
            for b, g in grads:
                self.shadows[b].grad = g
            try:
                if self._async:
                    self.optimizer.step(staleness=staleness)  # type: ignore[call-arg]
                else:
                    self.optimizer.step()
            finally:
                for b in self.blocks:
                    self.shadows[b].grad = None
        self.version += 1
        for b, _ in grads:
            self.block_versions[b] += 1

    # -------------------------------------------------------------- snapshot / load / telemetry
    def snapshot(self) -> tuple[dict[str, Any], list[tuple[int, int, torch.Tensor]]]:
        with self.cond:
            tensors = self.params_out()
            state_rows, scalars = [], []
            for b in self.blocks:
                for key, value in self.optimizer.state.get(self.shadows[b], {}).items():
                    if isinstance(value, torch.Tensor):
                        state_rows.append([b, str(key), len(tensors)])
                        tensors.append((b, 0, value.detach().clone()))
                    elif value is None or isinstance(value, (int, float, bool)):
                        scalars.append([b, str(key), value])
                    else:
                        raise TypeError(
                            f"{type(self.optimizer).__name__} keeps state {key!r} of type {type(value).__name__}; "
                            "the parameter_server engine checkpoints tensors and numbers only."
                        )
            meta = {
                "rank": self.ctx.rank,
                "blocks": self.blocks,
                "version": self.version,
                "block_versions": [self.block_versions[b] for b in self.blocks],
                "counts": self.counts.tolist(),
                "hist": self.hist.tolist(),
                "reported": self.reported.tolist(),
                "state": state_rows,
                "scalars": scalars,
            }
            return meta, tensors

    def load(self, meta: dict[str, Any]) -> None:
        # checked in full before anything changes: a bad message (a version of 1e400 parses as infinity) is refused
        # with an error reply and leaves the owner as it was
        version = _version_number(meta["version"])
        block_versions = [_version_number(v) for v in meta["block_versions"]]
        with self.cond:
            self.version = version
            for b, v in zip(self.blocks, block_versions):
                self.block_versions[b] = v
            self.counts[:] = 0
            self.hist[:] = 0
            counts = np.asarray(meta.get("counts", []), dtype=np.int64)
            if counts.size and counts.shape == self.counts.shape:
                self.counts[:] = counts
            hist = meta.get("hist", [])
            for w, row in enumerate(hist[: self.hist.shape[0]]):
                n = min(len(row), self.hist.shape[1])
                self.hist[w, :n] = row[:n]
            self.reads.clear()

    def telemetry(self) -> dict[str, Any]:
        with self.cond:
            return {
                "rank": self.ctx.rank,
                "version": self.version,
                "counts": self.counts.tolist(),
                "hist": self.hist.tolist(),
                "reported": self.reported.tolist(),
                "status": list(self.status),
                "last_seen": list(self.last_seen),
                "reads": {str(k): list(v) for k, v in self.reads.items()},
            }

    def adopt(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Take this owner's blocks' parameters and optimizer state from the worker's (just loaded) objects."""
        with self.cond, torch.no_grad():
            self.optimizer.state.clear()
            for b in self.blocks:
                local = params[b]
                self.shadows[b].copy_(local.detach())
                state = optimizer.state.get(local)
                if state:
                    self.optimizer.state[self.shadows[b]] = {
                        k: (v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                        for k, v in state.items()
                    }


def _version_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"a version must be a non-negative finite number, got {value!r}")
    if value != int(value) or value >= 2**62:
        raise ValueError(f"a version must be an integer below 2**62, got {value!r}")
    return int(value)
