"""The simulated engine: P virtual workers in one process, a deterministic delayed-iterate sequence.

Each virtual worker repeats: select its block(s) (:class:`~lightning_async.sim.blocks.BlockSelector`), read the
parameters at the current version of those blocks, compute a stochastic gradient of the selected blocks on the next
batch, and push it when its virtual clock says the computation is over (durations from a
:class:`~lightning_async.sim.speeds.SpeedProfile`). Pushes are processed in the order of an event queue keyed by
``(virtual time, worker id)``. The engine holds the one authoritative optimizer (one state per block, invariant 1):
virtual workers hold gradients and, under ``"accumulate"``, a copy of the parameters they read; never adaptive
state.

The staleness bound is the shared :class:`~lightning_async._engine.bound.StalenessBound`, checked on every block an
update touches:

* ``"wait"``: a read or an apply that is not admitted waits; the worker's clock moves to the moment it is admitted.
* ``"accumulate"``: reads wait as for ``"wait"``; a push that is not admitted makes the worker compute another
  gradient on the parameters it holds (next batch, same base version) and add it to its pending update, then push
  again when that computation ends. No work is lost.
* ``"drop"``: nothing waits; an update whose staleness exceeds ``max_staleness`` is discarded and counted.

Gradients are computed on the parameters as they are at read time, which is what makes the iterate sequence exact:
update ``t`` is ``X_{t+1} = X_t + step(grad f(X_{read(t)}, xi_t))`` with ``version - read <= max_staleness``.

With one worker and ``max_staleness=0`` the engine performs exactly the plain loop ``zero_grad; loss.backward();
optimizer.step()`` over the same batches, bit for bit.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_async._engine.base import NonFiniteStreak, Telemetry
from lightning_async._engine.blocks import OVERLAPS, BlockLayout, BlockSelector, BlocksSpec, make_blocks
from lightning_async._engine.bound import StalenessBound
from lightning_async._engine.pending import ACCUMULATE_REDUCTIONS, PendingUpdate
from lightning_async._engine.records import (
    APPLIED,
    REJECTED_NON_FINITE,
    REJECTED_STALE,
    UpdateCounters,
    UpdateRecord,
)
from lightning_async._engine.speeds import SpeedProfile

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch) -> scalar tensor``: the stochastic objective ``f(X, xi)`` on one batch."""
DataSource = Callable[[torch.Generator], Any] | Iterable[Any]
"""A callable ``data(generator) -> batch`` (drawing from the run's data generator), or any iterable of batches
(restarted when exhausted, e.g. a ``DataLoader``)."""



def derive_seed(seed: int, stream: str) -> int:
    """Seed of one random stream (``"data"``, ``"speeds"``, ``"selection"``) of a run seeded with ``seed``.

    Streams are independent, so that e.g. the batches do not depend on the speed draws.
    """
    key = [ord(c) for c in stream]
    return int(np.random.SeedSequence([seed, *key]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _batch_samples(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor, else 1."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor) and batch[0].dim():
        return int(batch[0].shape[0])
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim():
                return int(v.shape[0])
    return 1


def _accepts_staleness(optimizer: torch.optim.Optimizer) -> bool:
    try:
        from lightning_async.optim import AsyncOptimizer  # noqa: PLC0415 (optional, lands separately)
    except ImportError:
        return False
    return isinstance(optimizer, AsyncOptimizer)


@dataclass
class SimulationState:
    """Where a run stands; returned by :meth:`SimulatedEngine.run`.

    Attributes:
        applied: applied updates so far.
        received: received updates so far.
        virtual_time: virtual time of the last processed event.
        stopped_by: ``"steps"`` when the requested applied count was reached, ``"max_received"`` otherwise.
    """

    applied: int
    received: int
    virtual_time: float
    stopped_by: str


class _Worker:
    """What one virtual worker holds between its read and its push."""

    __slots__ = ("blocks", "touched", "params", "reads", "pending", "steps", "held")

    def __init__(self) -> None:
        self.blocks: tuple[int, ...] = ()
        self.touched: tuple[int, ...] = ()
        self.params: tuple[int, ...] = ()
        self.reads: dict[int, int] = {}
        self.pending = PendingUpdate()  # the gradients computed on the read held, not yet applied
        self.steps = 0
        self.held: list[torch.Tensor] | None = None


class SimulatedEngine:
    """P virtual workers training ``model`` with one authoritative ``optimizer`` under a staleness bound.

    Args:
        model: any module; its trainable parameters are the authoritative parameters.
        optimizer: built on ``model.parameters()``. A :class:`lightning_async.optim.AsyncOptimizer` receives
            ``step(staleness=s)`` (``s`` is the largest staleness over the update's selected blocks); a plain torch
            optimizer receives ``step()``.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        data: ``data(generator) -> batch`` or an iterable of batches (cycled).
        workers: number of virtual workers P (>= 1).
        speeds: a :class:`SpeedProfile` or its ``SPEC`` text (see :mod:`lightning_async.sim.speeds`).
        blocks: ``"all"``, ``"tensor"``, ``"layer"`` or groups of parameter names (see
            :func:`lightning_async.sim.blocks.make_blocks`).
        selection: ``"all"``, ``"cyclic"`` or ``"random"``.
        overlap: ``"sum"`` or ``"average"``: the rule for tensors shared by several blocks.
        max_staleness: the bound K, or ``None`` for no bound.
        bound_policy: ``"accumulate"``, ``"wait"`` or ``"drop"``.
        accumulate_reduction: under ``"accumulate"``, whether a pending update is the ``"mean"`` (default, as both
            real engines apply it) or the ``"sum"`` of the gradients it accumulated.
        seed: seeds the data, speed and block-selection streams (independent of one another).
        keep_records: keep one :class:`UpdateRecord` per block of each received update (turn off for long runs).
        max_non_finite: a worker whose gradient is non-finite this many times in a row raises
            :class:`~lightning_async.errors.NonFiniteGradientError` (a ``RuntimeError``), as the real engines do.

    Raises:
        ValueError: for an invalid argument, naming it and the accepted values.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        data: DataSource,
        *,
        workers: int = 1,
        speeds: SpeedProfile | str = "const:1",
        blocks: BlocksSpec = "tensor",
        selection: str = "all",
        overlap: str = "sum",
        max_staleness: int | None = 0,
        bound_policy: str = "accumulate",
        accumulate_reduction: str = "mean",
        seed: int = 0,
        keep_records: bool = True,
        max_non_finite: int = 3,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}.")
        if overlap not in OVERLAPS:
            raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}.")
        if accumulate_reduction not in ACCUMULATE_REDUCTIONS:
            raise ValueError(
                f"accumulate_reduction must be one of {ACCUMULATE_REDUCTIONS}, got {accumulate_reduction!r}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        if not isinstance(max_non_finite, int) or max_non_finite < 1:
            raise ValueError(f"max_non_finite must be an integer >= 1, got {max_non_finite!r}.")
        if not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}.")
        self.bound = StalenessBound(max_staleness, bound_policy)
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.workers = workers
        self.layout: BlockLayout = make_blocks(model, blocks)
        named = [p for _, p in model.named_parameters() if p.requires_grad]
        self.params: list[nn.Parameter] = named
        opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in zip(self.layout.param_names, named) if id(p) not in opt_ids]
        if missing:
            raise ValueError(
                f"optimizer does not hold the model parameters {missing}; build it on model.parameters()."
            )
        self.overlap = overlap
        self.accumulate_reduction = accumulate_reduction
        self.seed = seed
        self.keep_records = keep_records
        self.max_non_finite = max_non_finite
        self.profile = speeds if isinstance(speeds, SpeedProfile) else SpeedProfile.parse(speeds)
        self.clock = self.profile.bind(workers, torch.Generator().manual_seed(derive_seed(seed, "speeds")))
        self.selector = BlockSelector(
            selection, self.layout.num_blocks, torch.Generator().manual_seed(derive_seed(seed, "selection"))
        )
        self.data_generator = torch.Generator().manual_seed(derive_seed(seed, "data"))
        self._data_fn: Callable[[], Any] = self._make_data(data)
        self._async_step = _accepts_staleness(optimizer)
        self._average = overlap == "average" and self.layout.overlapping

        nb = self.layout.num_blocks
        self.versions: list[int] = [0] * nb
        self._inflight: list[dict[int, int]] = [{} for _ in range(nb)]
        self._state = [_Worker() for _ in range(workers)]
        self._events: list[tuple[float, int]] = []
        self._read_waiting: list[int] = []
        self._apply_waiting: list[int] = []
        self._nonfinite = [NonFiniteStreak(w) for w in range(workers)]
        # per worker: gradients computed, virtual time spent waiting, samples in its applied updates, deferrals
        self._gradients = [0] * workers
        self._waited = [0.0] * workers
        self._samples = [0] * workers
        self.deferred = 0
        """Pushes put off by ``"accumulate"`` (the worker computed another gradient on the same read)."""
        self.counters = UpdateCounters()
        self.records: list[UpdateRecord] = []
        self.virtual_time = 0.0
        self.computations = 0
        """Gradient computations performed (including accumulated and dropped ones)."""
        self.wait_time = 0.0
        """Virtual time workers spent in waits that ended (reads and applies); see :meth:`total_wait_time`."""
        self._wait_since: dict[int, float] = {}
        self._selection_cache: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._started = False

    def total_wait_time(self) -> float:
        """Virtual time workers spent waiting so far, including the waits still open at :attr:`virtual_time` (with
        many more workers than the bound admits, most waits are open at any moment)."""
        return self.wait_time + sum(self.virtual_time - since for since in self._wait_since.values())

    # ----------------------------------------------------------------------------------------------- data, grads

    def _make_data(self, data: DataSource) -> Callable[[], Any]:
        if callable(data):
            gen = self.data_generator
            return lambda: data(gen)  # type: ignore[operator]
        if isinstance(data, Iterable):
            state: dict[str, Iterator[Any]] = {"it": iter(data)}

            def next_batch() -> Any:
                try:
                    return next(state["it"])
                except StopIteration:
                    state["it"] = iter(data)  # type: ignore[arg-type]
                    try:
                        return next(state["it"])
                    except StopIteration:
                        raise ValueError("data is an empty iterable: it yields no batch.") from None

            return next_batch
        raise ValueError(f"data must be callable as data(generator) or an iterable of batches, got {type(data)!r}.")

    def _gradient(self, params: tuple[int, ...]) -> tuple[list[torch.Tensor | None], int]:
        batch = self._data_fn()
        with torch.enable_grad():
            loss = self.loss_fn(self.model, batch)
            grads = torch.autograd.grad(loss, [self.params[i] for i in params], allow_unused=True)
        self.computations += 1
        return list(grads), _batch_samples(batch)

    def _gradient_at(self, held: list[torch.Tensor], params: tuple[int, ...]) -> tuple[list[torch.Tensor | None], int]:
        """Gradient at the parameters a worker holds (its read), not at the current ones."""
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for p, h in zip(self.params, held):
                p.copy_(h)
        try:
            return self._gradient(params)
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current):
                    p.copy_(c)

    # ----------------------------------------------------------------------------------------------- admission

    def _may_read(self, blocks: tuple[int, ...]) -> list[int]:
        """Blocks of ``blocks`` on which a read is not admitted now."""
        return [b for b in blocks if not self.bound.may_read(self.versions[b], self._inflight[b].values())]

    def _may_apply(self, worker: int) -> bool:
        w = self._state[worker]
        for b in w.touched:
            others = (r for u, r in self._inflight[b].items() if u != worker)
            if not self.bound.may_apply(self.versions[b], w.reads[b], others):
                return False
        return True

    # ----------------------------------------------------------------------------------------------- worker steps

    def _request_read(self, worker: int, now: float) -> None:
        w = self._state[worker]
        w.blocks = self.selector.select(worker, w.steps)
        cached = self._selection_cache.get(w.blocks)
        if cached is None:
            touched = sorted({t for b in w.blocks for t in self.layout.touching[b]})
            params = sorted({i for b in w.blocks for i in self.layout.members[b]})
            cached = self._selection_cache[w.blocks] = (tuple(touched), tuple(params))
        w.touched, w.params = cached
        if self.bound.policy == "drop":
            self._start(worker, now)
        else:
            self._wait_since[worker] = now
            self._read_waiting.append(worker)

    def _start(self, worker: int, now: float) -> None:
        w = self._state[worker]
        waited = now - self._wait_since.pop(worker, now)
        self.wait_time += waited
        self._waited[worker] += waited
        w.reads = {b: self.versions[b] for b in w.touched}
        for b, v in w.reads.items():
            self._inflight[b][worker] = v
        if self.bound.policy == "accumulate":
            w.held = [p.detach().clone() for p in self.params]
        grads, samples = self._gradient(w.params)
        w.pending.add(grads, samples, adopt=True)
        self._gradients[worker] += 1
        heapq.heappush(self._events, (now + self.clock.duration(worker), worker))

    def _release(self, worker: int) -> None:
        w = self._state[worker]
        for b in w.touched:
            del self._inflight[b][worker]
        w.pending.clear()
        w.reads, w.held, w.steps = {}, None, w.steps + 1

    def _verdict(self, worker: int, verdict: str) -> None:
        w = self._state[worker]
        staleness = {b: self.versions[b] - w.reads[b] for b in w.touched}
        self.counters.count(verdict, max(staleness[b] for b in w.blocks), w.pending.samples)
        if verdict == APPLIED:
            self._samples[worker] += w.pending.samples
        if self.keep_records:
            self.records.extend(
                UpdateRecord(worker, b, w.reads[b], staleness[b], verdict, w.pending.samples) for b in w.touched
            )

    def _apply(self, worker: int, now: float) -> None:
        w = self._state[worker]
        waited = now - self._wait_since.pop(worker, now)
        self.wait_time += waited
        self._waited[worker] += waited
        self._verdict(worker, APPLIED)
        for i, g in zip(w.params, w.pending.update(self.accumulate_reduction)):
            self.params[i].grad = g
        shared = [i for i in w.params if self.layout.multiplicity[i] > 1] if self._average else []
        before = [self.params[i].detach().clone() for i in shared]
        if self._async_step:
            staleness = max(self.versions[b] - w.reads[b] for b in w.blocks)
            self.optimizer.step(staleness=staleness)  # type: ignore[call-arg]
        else:
            self.optimizer.step()
        if shared:
            with torch.no_grad():
                for i, b0 in zip(shared, before):
                    p = self.params[i]
                    p.sub_(b0).div_(self.layout.multiplicity[i]).add_(b0)
        for i in w.params:
            self.params[i].grad = None
        for b in w.touched:
            self.versions[b] += 1
        self._release(worker)

    def _reject(self, worker: int, reason: str) -> None:
        self._verdict(worker, reason)
        self._release(worker)

    def _finite(self, grads: list[torch.Tensor | None]) -> bool:
        return all(g is None or bool(torch.isfinite(g).all()) for g in grads)

    def _on_push(self, worker: int, now: float) -> str:
        """Handle the end of a computation of ``worker``; return ``"applied"``, ``"rejected"`` or ``"deferred"``."""
        w = self._state[worker]
        finite = self._finite(w.pending.grads or [])
        self._nonfinite[worker].record(finite, w.steps, self.max_non_finite)
        if not finite:
            self._reject(worker, REJECTED_NON_FINITE)
            self._request_read(worker, now)
            return "rejected"
        if self._may_apply(worker):
            self._apply(worker, now)
            self._request_read(worker, now)
            return "applied"
        policy = self.bound.policy
        if policy == "drop":
            self._reject(worker, REJECTED_STALE)
            self._request_read(worker, now)
            return "rejected"
        if policy == "wait":
            self._wait_since[worker] = now
            self._apply_waiting.append(worker)
        else:
            assert w.held is not None
            grads, samples = self._gradient_at(w.held, w.params)
            w.pending.add(grads, samples, adopt=True)
            self._gradients[worker] += 1
            heapq.heappush(self._events, (now + self.clock.duration(worker), worker))
        self.deferred += 1
        return "deferred"

    def _admit(self, now: float, target: int, callback: Callable[[SimulatedEngine], None] | None) -> None:
        """Admit waiting applies, then waiting reads, that the bound now allows (nothing once at ``target``)."""
        if self.counters.applied >= target:
            return
        progress = True
        while progress and self._apply_waiting and self.counters.applied < target:
            progress = False
            for worker in list(self._apply_waiting):
                if self.counters.applied >= target:
                    break
                if self._may_apply(worker):
                    self._apply_waiting.remove(worker)
                    self._apply(worker, now)
                    self._request_read(worker, now)
                    progress = True
                    if callback is not None:
                        callback(self)
        if self.counters.applied >= target or not self._read_waiting:
            return
        blocked: set[int] = set()
        still: list[int] = []
        nb = self.layout.num_blocks
        for worker in self._read_waiting:
            touched = self._state[worker].touched
            if len(blocked) == nb or blocked.intersection(touched):
                still.append(worker)
                continue
            refused = self._may_read(touched)
            if refused:
                blocked.update(refused)
                still.append(worker)
            else:
                self._start(worker, now)
        self._read_waiting = still

    # ----------------------------------------------------------------------------------------------- driving

    def run(
        self,
        steps: int,
        *,
        callback: Callable[[SimulatedEngine], None] | None = None,
        max_received: int | None = None,
    ) -> SimulationState:
        """Run until ``steps`` more updates have been applied (a run can be continued by calling again).

        Args:
            steps: number of applied updates to add.
            callback: called as ``callback(engine)`` after every applied update (e.g. to evaluate or step a
                learning-rate scheduler); ``engine.counters.applied`` is the applied count.
            max_received: stop early once this many updates have been received in total (guards runs where
                ``"drop"`` discards almost everything). Default: ``100 * steps`` more than now.

        Returns:
            Where the run stands, with ``stopped_by`` saying which limit ended it.

        Raises:
            RuntimeError: if no worker can make progress (a bug in the bound), or a worker's gradients are
                repeatedly non-finite.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}.")
        target = self.counters.applied + steps
        limit = self.counters.received + (100 * steps if max_received is None else max_received)
        if not self._started:
            self._started = True
            for worker in range(self.workers):
                self._request_read(worker, 0.0)
        self._admit(self.virtual_time, target, callback)
        stopped_by = "steps"
        while self.counters.applied < target:
            if self.counters.received >= limit:
                stopped_by = "max_received"
                break
            if not self._events:
                raise RuntimeError(
                    f"simulated engine stalled: no worker computing, {len(self._apply_waiting)} waiting to apply, "
                    f"{len(self._read_waiting)} waiting to read (versions {self.versions}, policy "
                    f"{self.bound.policy!r}, max_staleness {self.bound.max_staleness})."
                )
            now, worker = heapq.heappop(self._events)
            self.virtual_time = now
            outcome = self._on_push(worker, now)
            if outcome == "applied" and callback is not None:
                callback(self)
            if outcome != "deferred" and self.bound.policy != "drop":
                self._admit(now, target, callback)
        return SimulationState(self.counters.applied, self.counters.received, self.virtual_time, stopped_by)

    # ----------------------------------------------------------------------------------------------- reporting

    @property
    def in_flight(self) -> int:
        """Workers that hold a read (computing, accumulating or waiting to apply)."""
        return sum(1 for w in self._state if w.reads)

    def telemetry(self) -> Telemetry:
        """The run so far in the real engines' report: counters, per-worker rows (rates per unit of virtual time)
        and the staleness histogram of the applied updates."""
        c = self.counters
        counters = {
            "gradients": sum(self._gradients), "received": c.received, "applied": c.applied,
            "rejected_stale": c.rejected.get(REJECTED_STALE, 0),
            "rejected_nonfinite": c.rejected.get(REJECTED_NON_FINITE, 0),
            "deferred": self.deferred, "samples": c.samples_applied, "rejected": c.rejected_total,
        }
        now = self.virtual_time
        open_waits = {w: now - since for w, since in self._wait_since.items()}
        per_worker = []
        for w in range(self.workers):
            wait = self._waited[w] + open_waits.get(w, 0.0)
            per_worker.append({
                "gradients": float(self._gradients[w]), "samples": float(self._samples[w]),
                "samples_per_s": self._samples[w] / now if now else 0.0, "wait_seconds": wait,
                "wait_fraction": wait / now if now else 0.0,
            })
        top = max(c.staleness_histogram, default=-1)
        return Telemetry(
            counters=counters, per_worker=per_worker,
            staleness_histogram=[c.staleness_histogram.get(s, 0) for s in range(top + 1)],
            max_staleness=self.bound.max_staleness, bound_policy=self.bound.policy, version=max(self.versions),
            extra={"engine": "simulated", "virtual_time": now},
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the run so far (configuration, counters, virtual time)."""
        return {
            "workers": self.workers,
            "speeds": self.profile.spec,
            "blocks": self.layout.as_dict(),
            "selection": self.selector.selection,
            "overlap": self.overlap,
            "max_staleness": self.bound.max_staleness,
            "bound_policy": self.bound.policy,
            "accumulate_reduction": self.accumulate_reduction,
            "seed": self.seed,
            "optimizer": type(self.optimizer).__name__,
            "optimizer_receives_staleness": self._async_step,
            "counters": self.counters.as_dict(),
            "versions": list(self.versions),
            "virtual_time": self.virtual_time,
            "computations": self.computations,
            "wait_time": self.total_wait_time(),
            "straggling_steps": self.clock.straggling_steps,
        }

