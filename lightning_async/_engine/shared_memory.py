"""The ``shared_memory`` engine: one node, parameters and optimizer state in shared memory, lock-free writes.

This is the paper's computational model (Hogwild!-style): there is no server. Each worker process

1. takes a *read*: copies the shared parameters into its private model and records their version;
2. computes a gradient on its private copy;
3. is *admitted* to apply it (a few integer checks under a short cross-process lock, see
   :mod:`lightning_async._engine.bound`), then runs the optimizer's rule directly on the shared parameters and
   shared optimizer state while the other workers keep computing.

Writes: by default (``lock_free=False``) one write at a time holds a write lock for the duration of the
optimizer step; reads never take it, so a read may still see a write half done (the paper's inconsistent reads).
With ``lock_free=True`` writes overlap too, exactly Hogwild!. That is safe for SGD-like rules but not for adaptive
ones: two concurrent read-modify-writes of Adam's second moment can lose one of them while the first moment keeps
it, and the step ``m / (sqrt(v) + eps)`` then divides by ~``eps`` (observed here: parameters jumping by 1e3 in the
first updates). Serialising only the writes costs little, since a step is short next to a gradient.

Versions: ``reserved`` counts admitted updates (staleness is measured against it), and a read is labelled with
the number of updates whose writes have all finished (the *committed* prefix), so a read that overlaps a write
is counted as older, never newer: measured staleness is never below the true one and the bound holds.

Optimizer state: the user's optimizer keeps working unchanged. Its parameters stay the worker's private
``nn.Parameter`` objects; to apply, their ``.data`` is pointed at the shared tensors for the duration of
``optimizer.step``. Its state tensors are replaced by shared ones: eagerly when the optimizer offers
``init_state()`` (every :mod:`lightning_async.optim` preset does), otherwise after the first step that creates
them, which then runs under a lock so that exactly one worker creates each parameter's state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_async._engine.base import (
    COUNTERS,
    TIMERS,
    Engine,
    NonFiniteStreak,
    Telemetry,
    all_finite,
    is_async_optimizer,
)
from lightning_async._engine.bound import StalenessBound
from lightning_async._engine.pending import PendingUpdate
from lightning_async._engine.shm import (
    FileLock,
    make_private_directory,
    map_array,
    map_tensor,
    pid_alive,
    write_private_text,
)
from lightning_async.errors import RunAbortedError, WorkerDiedError, WorkerTimeoutError

_HEADER = 16
_H_RESERVED, _H_PAUSED, _H_ABORT, _H_STOP, _H_CURSOR = 0, 1, 2, 3, 4  # cursor: 2 slots of (epoch tag, next batch)
_IDLE = -1
_RUNNING, _FINISHED, _FAILED, _LEFT = 1, 2, 3, 4
_STATUS_NAMES = {0: "not started", _RUNNING: "running", _FINISHED: "finished", _FAILED: "failed", _LEFT: "left"}
_UNBOUNDED_BINS = 64
#: seconds between two checks that the other workers' processes are alive (a few ``kill(pid, 0)`` calls)
LIVENESS_INTERVAL = 0.5
#: after a failure whose cause is known, how long worker 0 waits for the others to stop before it leaves the run's
#: shared memory: each notices the failure at its next step or wait, so this does not depend on ``timeout``
ABORT_GRACE_SECONDS = 10.0


class SharedMemoryEngine(Engine):
    """Authoritative parameters and optimizer state in ``/dev/shm``, shared by the workers of one node.

    Args:
        directory: the run's shared directory (the same path in every worker).
        worker: this worker's index in ``[0, num_workers)``.
        num_workers: number of worker processes.
        params: the worker's private parameters (the model's ``nn.Parameter`` objects), in a fixed order.
        optimizer: the user's optimizer over ``params``.
        create: ``True`` in exactly one worker, which allocates the shared state from its ``params``.
        max_staleness: the bound K (``None``: unbounded).
        bound_policy: ``"accumulate"``, ``"wait"`` or ``"drop"``.
        timeout: seconds any single wait may last before it raises :class:`WorkerTimeoutError`.
        max_consecutive_nonfinite: raise :class:`NonFiniteGradientError` after this many non-finite gradients
            in a row from this worker.
        lock_free: let writes overlap (Hogwild!); see the module docstring for why it is off by default.
    """

    def __init__(
        self,
        directory: Path,
        worker: int,
        num_workers: int,
        params: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        *,
        create: bool,
        max_staleness: int | None,
        bound_policy: str,
        timeout: float,
        max_consecutive_nonfinite: int = 5,
        lock_free: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.lock_free = lock_free
        self.worker = worker
        self.num_workers = num_workers
        self.params = list(params)
        self.optimizer = optimizer
        self.bound = StalenessBound(max_staleness, bound_policy)
        self.timeout = timeout
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self._bins = (max_staleness if max_staleness is not None else _UNBOUNDED_BINS) + 2
        n, p = len(self.params), num_workers
        self._layout = {
            "reads": (_HEADER, p),
            "writing": (_HEADER + p, p),
            "status": (_HEADER + 2 * p, p),
            "pid": (_HEADER + 3 * p, p),
            "block_versions": (_HEADER + 4 * p, n),
            "state_ready": (_HEADER + 4 * p + n, n),
        }
        ctrl_len = _HEADER + 4 * p + 2 * n
        d = self.directory
        if create:
            make_private_directory(d)  # 0700: the model and optimizer state are nobody else's to read
            write_private_text(d / "owner", str(os.getpid()))
        self.ctrl = map_array(d / "control.bin", (ctrl_len,), np.int64, create=create)
        self.counts = map_array(d / "counters.bin", (p, len(COUNTERS)), np.int64, create=create)
        self.hist = map_array(d / "histogram.bin", (p, self._bins), np.int64, create=create)
        self.timers = map_array(d / "timers.bin", (p, len(TIMERS)), np.float64, create=create)
        if create:
            self.ctrl[:] = 0
            self._view("reads")[:] = _IDLE
            self._view("writing")[:] = _IDLE
        self.lock = FileLock(d / "control.lock", timeout)
        self.state_lock = FileLock(d / "state.lock", timeout)
        self.write_lock = FileLock(d / "write.lock", timeout)
        self.shared = [
            map_tensor(d / f"param{i}.bin", tuple(q.shape), q.dtype, create=create) for i, q in enumerate(self.params)
        ]
        self._attached = [False] * n
        if create:
            with torch.no_grad():
                for s, q in zip(self.shared, self.params):
                    s.copy_(q.detach())
            if hasattr(optimizer, "init_state"):
                optimizer.init_state()  # type: ignore[attr-defined]
                self._export_state(range(n))
        self._read: int | None = None
        self._pending = PendingUpdate()
        self._nonfinite = NonFiniteStreak(self.worker)
        self._local_step = 0
        self._next_liveness_check = 0.0
        #: called in every bounded wait; may raise to end it (the strategy raises on a SIGTERM received meanwhile)
        self.interrupt: Callable[[], None] | None = None
        self._c = {name: i for i, name in enumerate(COUNTERS)}
        self._t = {name: i for i, name in enumerate(TIMERS)}

    # ------------------------------------------------------------------ shared-layout helpers
    def _view(self, name: str) -> np.ndarray:
        start, length = self._layout[name]
        return self.ctrl[start : start + length]

    def _count(self, name: str, delta: int = 1) -> None:
        self.counts[self.worker, self._c[name]] += delta

    def _timer(self, name: str) -> float:
        return float(self.timers[self.worker, self._t[name]])

    def _set_timer(self, name: str, value: float) -> None:
        self.timers[self.worker, self._t[name]] = value

    def start(self) -> None:
        """Mark this worker running (called once training starts in this process)."""
        now = time.time()
        self._view("pid")[self.worker] = os.getpid()
        self._view("status")[self.worker] = _RUNNING
        if self._timer("started") == 0.0:
            self._set_timer("started", now)
        self._set_timer("heartbeat", now)
        self._attach_ready_state()

    def finish(self, local_params: Sequence[torch.Tensor]) -> None:
        """Flush, release the read and mark this worker finished (end of fit in this process)."""
        self.end_epoch(local_params)
        self._view("status")[self.worker] = _FINISHED

    # ------------------------------------------------------------------ versions
    @property
    def version(self) -> int:
        return int(self.ctrl[_H_RESERVED])

    def _committed(self) -> int:
        writing = [int(w) for w in self._view("writing") if w != _IDLE]
        return min(writing) if writing else int(self.ctrl[_H_RESERVED])

    def _other_reads(self) -> list[int]:
        reads = self._view("reads")
        return [int(r) for w, r in enumerate(reads) if w != self.worker and r != _IDLE]

    # ------------------------------------------------------------------ the worker's step
    def begin_step(self, local_params: Sequence[torch.Tensor]) -> None:
        self._set_timer("heartbeat", time.time())
        # every step, not only inside waits: under "accumulate" a worker may never wait, and must still stop when a
        # peer failed or died (the coordinator included)
        self.check_peers()
        if self._read is not None:
            return  # holding a read: keep computing on the same parameters (accumulate, or accumulate_grad_batches)
        read = self._wait_until(self._try_read, "take a read")
        self._read = read
        self._copy_shared_to(local_params)

    def _try_read(self) -> int | None:
        if self.ctrl[_H_PAUSED]:
            return None
        committed = self._committed()
        if not self.bound.may_read(self.version, self._other_reads(), read_version=committed):
            return None
        self._view("reads")[self.worker] = committed
        return committed

    def submit(self, local_params: Sequence[torch.Tensor], samples: int) -> str:
        start = time.perf_counter()
        self._local_step += 1
        self._count("gradients")
        grads = [q.grad for q in local_params]
        if not all_finite(grads):
            self._count("received")
            self._count("rejected_nonfinite")
            self._nonfinite.record(False, self._local_step, self.max_consecutive_nonfinite)
            self._busy(start)
            return "rejected_nonfinite"
        self._nonfinite.record(True, self._local_step, self.max_consecutive_nonfinite)
        self._pending.add(grads, samples)  # borrowed: applied before the caller touches its gradients again
        verdict = self._offer()
        self._busy(start)
        return verdict

    def _offer(self) -> str:
        assert self._read is not None, "submit() without begin_step()"
        policy = self.bound.policy
        if policy == "wait":
            reserved = self._wait_until(self._try_reserve, "apply an update")
        else:
            with self.lock.hold():
                reserved = self._try_reserve()
            if reserved is None and policy == "accumulate":
                self._count("deferred")
                self._pending.keep()  # kept past this step: the caller may zero its gradients
                return "deferred"
        self._count("received")
        if reserved is None:  # drop: too stale
            self._count("rejected_stale")
            self._pending.clear()
            self._release_read()
            return "rejected_stale"
        self._apply_reserved(reserved)
        return "applied"

    def _apply_reserved(self, reserved: int) -> None:
        """Write the admitted update (no lock held), then record it."""
        assert self._read is not None
        staleness = reserved - self._read
        try:
            self._apply(staleness)
        finally:
            with self.lock.hold():
                self._view("writing")[self.worker] = _IDLE
        self._count("applied")
        self._count("samples", self._pending.samples)
        self.hist[self.worker, min(staleness, self._bins - 1)] += 1
        self._pending.clear()
        self._read = None

    def _try_reserve(self) -> int | None:
        """Under the lock: admit this worker's update, or say no. Admission releases the read."""
        assert self._read is not None
        if self.ctrl[_H_PAUSED]:
            return None
        version = int(self.ctrl[_H_RESERVED])
        if not self.bound.may_apply(version, self._read, self._other_reads()):
            return None
        self.ctrl[_H_RESERVED] = version + 1
        self._view("writing")[self.worker] = version
        self._view("reads")[self.worker] = _IDLE
        blocks = self._view("block_versions")
        for i, g in enumerate(self._pending.grads or ()):
            if g is not None:
                blocks[i] += 1
        return version

    def _apply(self, staleness: int) -> None:
        pending = self._pending.update()
        saved = []
        with torch.no_grad():
            for q, s, g in zip(self.params, self.shared, pending):
                saved.append((q.data, q.grad))
                q.data = s
                q.grad = g
            try:
                if all(self._attached[i] or pending[i] is None for i in range(len(self.params))):
                    with nullcontext() if self.lock_free else self.write_lock.hold():
                        self._step(staleness)
                else:
                    with self.state_lock.hold():  # the first step of some parameter creates its state
                        self._attach_ready_state()
                        with nullcontext() if self.lock_free else self.write_lock.hold():
                            self._step(staleness)
                        self._export_state(i for i in range(len(self.params)) if not self._attached[i])
            finally:
                for q, (data, grad) in zip(self.params, saved):
                    q.data = data
                    q.grad = grad

    def _step(self, staleness: int) -> None:
        if is_async_optimizer(self.optimizer):
            self.optimizer.step(staleness=staleness)  # type: ignore[call-arg]
        else:
            self.optimizer.step()

    def _release_read(self) -> None:
        if self._read is not None:
            with self.lock.hold():
                self._view("reads")[self.worker] = _IDLE
            self._read = None

    def end_epoch(self, local_params: Sequence[torch.Tensor]) -> None:
        # before the epoch-end collectives (metric sync, checkpoints), which a dead peer would fail with a bare
        # "Connection closed by peer"; a short epoch can end between two liveness checks
        self._next_liveness_check = 0.0
        self.check_peers()
        if self._pending:
            start = time.perf_counter()
            reserved = self._wait_until(self._try_reserve, "apply the deferred update at the end of the epoch")
            self._count("received")
            self._apply_reserved(reserved)
            self._busy(start)
        self._release_read()
        self.refresh(local_params)

    def refresh(self, local_params: Sequence[torch.Tensor]) -> None:
        self._copy_shared_to(local_params)

    def _copy_shared_to(self, local_params: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for q, s in zip(local_params, self.shared):
                q.copy_(s)

    def _busy(self, start: float) -> None:
        self.timers[self.worker, self._t["busy_seconds"]] += time.perf_counter() - start

    # ------------------------------------------------------------------ bounded waiting
    def _wait_until(self, attempt: Any, what: str) -> int:
        """Retry ``attempt`` under the lock until it returns a value; bounded by ``timeout``."""
        with self.lock.hold():
            value = attempt()
        if value is not None:
            return value
        start = time.monotonic()
        delay, next_check = 5e-5, start + 1.0
        while True:
            time.sleep(delay)
            delay = min(delay * 2, 2e-3)
            with self.lock.hold():
                value = attempt()
            now = time.monotonic()
            if value is not None:
                self.timers[self.worker, self._t["wait_seconds"]] += now - start
                return value
            self.check_peers()
            if self.interrupt is not None:
                self.interrupt()
            if now >= next_check:
                self._set_timer("heartbeat", time.time())
                next_check = now + 1.0
            if now - start > self.timeout:
                raise WorkerTimeoutError(
                    f"worker {self.worker} waited {now - start:.1f}s to {what} (timeout={self.timeout}s); "
                    f"{self._blame()}. Raise the strategy's timeout if the peers are just slow, or raise "
                    "max_staleness."
                )

    def check_peers(self) -> None:
        """Raise if another worker stopped the run (:class:`RunAbortedError`) or died while training
        (:class:`WorkerDiedError`). The first is one read of shared memory; process liveness is checked at most
        every :data:`LIVENESS_INTERVAL` seconds."""
        culprit = int(self.ctrl[_H_ABORT]) - 1
        if culprit >= 0 and culprit != self.worker:
            raise RunAbortedError(
                f"worker {culprit} stopped the run ({self._abort_reason(culprit)}); worker {self.worker} stops too."
            )
        now = time.monotonic()
        if now < self._next_liveness_check:
            return
        self._next_liveness_check = now + LIVENESS_INTERVAL
        dead = self._dead_peer()
        if dead is not None:
            raise WorkerDiedError(
                f"{self._describe_death(dead)}; worker {self.worker} stops too. Resume with "
                "Trainer.fit(..., ckpt_path='last')."
            )

    def _dead_peer(self) -> int | None:
        pids, status = self._view("pid"), self._view("status")
        for w in range(self.num_workers):
            if w != self.worker and status[w] == _RUNNING and pids[w] > 0 and not pid_alive(int(pids[w])):
                return w
        return None

    def _describe_death(self, w: int) -> str:
        beat = float(self.timers[w, self._t["heartbeat"]])
        seen = f", last progress {time.time() - beat:.1f}s ago" if beat else ""
        gradients = int(self.counts[w, self._c["gradients"]])
        return f"worker {w} (pid {int(self._view('pid')[w])}) died after {gradients} gradients{seen}"

    def _abort_reason(self, w: int) -> str:
        try:
            return (self.directory / f"abort{w}.txt").read_text().strip() or "no reason recorded"
        except OSError:
            return "no reason recorded"

    def abort(self, reason: str) -> None:
        """Stop the run after a failure of this worker: each peer raises :class:`RunAbortedError` naming this worker
        and ``reason`` at its next step or wait. The first worker to abort is the one named. Idempotent."""
        with contextlib.suppress(OSError):  # the directory is gone (the run is over): nobody is left to tell
            write_private_text(self.directory / f"abort{self.worker}.txt", reason)
        with self.lock.hold():
            self._view("status")[self.worker] = _FAILED
            if self.ctrl[_H_ABORT] == 0:
                self.ctrl[_H_ABORT] = self.worker + 1

    def request_stop(self) -> None:
        """Ask every worker to stop training at the end of its current step (one worker's stopping condition)."""
        self.ctrl[_H_STOP] = 1

    def stop_requested(self) -> bool:
        """Whether some worker asked the run to stop (see :meth:`request_stop`)."""
        return bool(self.ctrl[_H_STOP])

    def leave(self) -> bool:
        """Mark this worker gone for good and remove the run's directory if no other worker process still uses it
        (whoever leaves last removes it, so it goes even when the coordinator was killed). ``True`` if removed."""
        with self.lock.hold():
            self._view("status")[self.worker] = _LEFT
            status, pids = self._view("status"), self._view("pid")
            last = all(
                w == self.worker or status[w] == _LEFT or not (pids[w] > 0 and pid_alive(int(pids[w])))
                for w in range(self.num_workers)
            )
        self.close()
        if last:
            shutil.rmtree(self.directory, ignore_errors=True)  # peers' mappings stay valid after the unlink
        return last

    def wait_for_workers(self, timeout: float, *, raise_on_failure: bool = True) -> bool:
        """Bounded wait until no other worker is still training; ``True`` if none is.

        With ``raise_on_failure`` (the end of a successful fit), a peer that failed or died instead of finishing
        raises as in :meth:`check_peers`; without it (cleaning up after a failure), a failed or dead peer counts as
        done.
        """
        deadline = time.monotonic() + timeout
        status, pids = self._view("status"), self._view("pid")
        while True:
            if raise_on_failure:
                self._next_liveness_check = 0.0
                self.check_peers()
            if all(
                w == self.worker or status[w] != _RUNNING or (pids[w] > 0 and not pid_alive(int(pids[w])))
                for w in range(self.num_workers)
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            if self.interrupt is not None:
                self.interrupt()
            time.sleep(0.01)

    def describe_peers(self) -> str:
        """One line per other worker: its status, when it last made progress, and the read it holds."""
        now, reads, status, pids = time.time(), self._view("reads"), self._view("status"), self._view("pid")
        lines = []
        for w in range(self.num_workers):
            if w == self.worker:
                continue
            if status[w] == _RUNNING and pids[w] > 0 and not pid_alive(int(pids[w])):
                lines.append(self._describe_death(w))
                continue
            if status[w] in (_FAILED, _LEFT) and (self.directory / f"abort{w}.txt").exists():
                lines.append(f"worker {w}: failed ({self._abort_reason(w)})")
                continue
            beat = self.timers[w, self._t["heartbeat"]]
            seen = f"last progress {now - beat:.1f}s ago" if beat else "no progress yet"
            read = f"holds read version {int(reads[w])}" if reads[w] != _IDLE else "holds no read"
            lines.append(f"worker {w}: {_STATUS_NAMES.get(int(status[w]), '?')}, {seen}, {read}")
        return "; ".join(lines)

    def _blame(self) -> str:
        reads = self._view("reads")
        now = time.time()
        held = [
            f"worker {w} holds read version {int(r)} (last seen {now - self.timers[w, self._t['heartbeat']]:.1f}s ago)"
            for w, r in enumerate(reads)
            if r != _IDLE and w != self.worker
        ]
        if self.ctrl[_H_PAUSED]:
            held.append("the engine is paused for a checkpoint")
        return "; ".join(held) or "no other worker holds a read"

    # ------------------------------------------------------------------ shared optimizer state
    def _state_meta_path(self, i: int) -> Path:
        return self.directory / f"state{i}.json"

    def _export_state(self, indices: Any) -> None:
        """Move the optimizer state of parameters ``indices`` into shared files and mark it ready."""
        ready = self._view("state_ready")
        for i in list(indices):
            q = self.params[i]
            state = self.optimizer.state.get(q)
            if not state:
                continue
            meta = {}
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    raise TypeError(
                        f"{type(self.optimizer).__name__} keeps non-tensor state {key!r}={value!r}; the "
                        "shared_memory engine shares optimizer state as tensors. Use a torch.optim or "
                        "lightning_async.optim optimizer, or store the value as a tensor."
                    )
                path = self.directory / f"state{i}_{_safe(key)}.bin"
                shared = map_tensor(path, tuple(value.shape), value.dtype, create=True)
                shared.copy_(value)
                state[key] = shared
                meta[key] = {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}
            self._state_meta_path(i).write_text(json.dumps(meta))
            ready[i] = 1
            self._attached[i] = True

    def _attach_ready_state(self) -> None:
        ready = self._view("state_ready")
        for i, q in enumerate(self.params):
            if self._attached[i] or not ready[i]:
                continue
            meta = json.loads(self._state_meta_path(i).read_text())
            state = self.optimizer.state[q]
            for key, spec in meta.items():
                path = self.directory / f"state{i}_{_safe(key)}.bin"
                state[key] = map_tensor(path, tuple(spec["shape"]), getattr(torch, spec["dtype"]))
            self._attached[i] = True

    def adopt_optimizer_state(self, is_creator: bool) -> None:
        """After the model's parameters and ``optimizer.load_state_dict`` were loaded: the creator writes its
        parameters and the loaded state to shared memory.

        Call on every worker, the creator first (separate the two with a barrier), then :meth:`attach_state`.
        """
        if is_creator:
            with torch.no_grad():
                for s, q in zip(self.shared, self.params):
                    s.copy_(q.detach())
            self._view("state_ready")[:] = 0
            self._attached = [False] * len(self.params)
            self._export_state(range(len(self.params)))

    def attach_state(self) -> None:
        """Point this worker's optimizer state at the shared tensors (after the creator exported them)."""
        self._attached = [False] * len(self.params)
        self._attach_ready_state()

    # ------------------------------------------------------------------ sampler support
    def next_batch(self, epoch: int, num_batches: int) -> int | None:
        """Hand out the next unclaimed batch index of ``epoch`` (each once over all workers), or ``None``."""
        slot = _H_CURSOR + 2 * (epoch % 2)
        tag = epoch + 1  # stored +1 so that a zeroed slot means "unused"
        with self.lock.hold():
            if self.ctrl[slot] > tag:  # a later epoch has taken this slot: ours is over
                return None
            if self.ctrl[slot] < tag:
                self.ctrl[slot] = tag
                self.ctrl[slot + 1] = 0
            index = int(self.ctrl[slot + 1])
            if index >= num_batches:
                return None
            self.ctrl[slot + 1] = index + 1
            return index

    # ------------------------------------------------------------------ snapshot / restore
    def snapshot(self) -> dict[str, Any]:
        """Pause admissions, wait for writes in flight, copy everything, resume."""
        with self.lock.hold():
            self.ctrl[_H_PAUSED] += 1
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                with self.lock.hold():
                    if all(w == _IDLE for w in self._view("writing")):
                        break
                if time.monotonic() > deadline:
                    raise WorkerTimeoutError(f"a write stayed in flight for over {self.timeout}s: {self._blame()}")
                time.sleep(1e-4)
            params = [s.detach().clone() for s in self.shared]
            optimizer_state = _clone_state_dict(self.optimizer.state_dict())
            engine_state = {
                "version": int(self.ctrl[_H_RESERVED]),
                "block_versions": self._view("block_versions").tolist(),
                "batch_cursor": self.ctrl[_H_CURSOR : _H_CURSOR + 4].tolist(),
                "counters": {name: int(self.counts[:, i].sum()) for i, name in enumerate(COUNTERS)},
                "staleness_histogram": self.hist.sum(axis=0).tolist(),
                "num_workers": self.num_workers,
                "max_staleness": self.bound.max_staleness,
                "bound_policy": self.bound.policy,
            }
        finally:
            with self.lock.hold():
                self.ctrl[_H_PAUSED] -= 1
        return {"params": params, "optimizer": optimizer_state, "engine": engine_state}

    def load_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Restore versions and counters (call in one worker; parameters and optimizer state load separately)."""
        engine = snapshot.get("engine", snapshot)
        with self.lock.hold():
            self.ctrl[_H_RESERVED] = int(engine["version"])
            blocks = engine.get("block_versions")
            if blocks is not None and len(blocks) == len(self.params):
                self._view("block_versions")[:] = blocks
            cursor = engine.get("batch_cursor")
            if cursor is not None:  # an epoch saved at its end must not hand out its batches again on resume
                self.ctrl[_H_CURSOR : _H_CURSOR + 4] = cursor
            self.counts[:] = 0
            self.hist[:] = 0
            for name, value in engine.get("counters", {}).items():
                if name in self._c:
                    self.counts[0, self._c[name]] = int(value)
            saved = list(engine.get("staleness_histogram", []))[: self._bins]
            self.hist[0, : len(saved)] = saved

    # ------------------------------------------------------------------ telemetry
    def telemetry(self) -> Telemetry:
        counters = {name: int(self.counts[:, i].sum()) for i, name in enumerate(COUNTERS)}
        per_worker = []
        now = time.time()
        for w in range(self.num_workers):
            row = {name: float(self.counts[w, i]) for i, name in enumerate(COUNTERS)}
            started = self.timers[w, self._t["started"]]
            elapsed = max(now - started, 1e-9) if started else 0.0
            wait = float(self.timers[w, self._t["wait_seconds"]])
            row["samples_per_s"] = row["samples"] / elapsed if elapsed else 0.0
            row["wait_seconds"] = wait
            row["wait_fraction"] = wait / elapsed if elapsed else 0.0
            per_worker.append(row)
        return Telemetry(
            counters=counters,
            per_worker=per_worker,
            staleness_histogram=self.hist.sum(axis=0).tolist(),
            max_staleness=self.bound.max_staleness,
            bound_policy=self.bound.policy,
            version=self.version,
            extra={"engine": "shared_memory"},
        )

    def close(self) -> None:
        self.lock.close()
        self.state_lock.close()
        self.write_lock.close()


def _safe(key: Any) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(key))


def _clone_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    def clone(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, dict):
            return {k: clone(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clone(v) for v in value]
        return value

    return clone(state_dict)
