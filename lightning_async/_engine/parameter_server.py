"""The ``parameter_server`` engine: any number of nodes, blocks owned by ranks, c10d point-to-point over gloo.

Words as in the design (version, staleness, max_staleness, bound policy, block). Decisions, and why:

**Ownership.** A block is a parameter tensor. Blocks go to the *owner ranks* (default: every rank) by greedy
size balancing: largest tensor first, each to the owner with the fewest bytes so far (ties: lowest rank), so the
apply work and the bytes each owner serves are balanced. The owners are configurable (``owner_ranks``): a rank
that owns nothing is a pure worker, and only such a rank can die without stopping the run (the death of an owner
loses authoritative state: the run stops with an error that names it, R6).

**One authority per block (invariant 1).** An owner applies the updates for its blocks with the user's optimizer
rule restricted to those blocks: a shallow copy of the user's optimizer object whose param groups hold the owner's
private copies of its blocks (same class, same hyper-parameters, copied from the user's param groups before every
step so LR schedulers keep working) and whose state holds only those blocks' state. The user's own optimizer
object never steps and keeps no state.

**Versions, staleness, admission.** Each owner is an independent authority over its *block group*: it keeps a
version (updates applied to its blocks; every block version of the group moves with it), the reads in flight
(a worker's read is registered when it pulls the group's parameters), and admits reads and applies with the same
:class:`~lightning_async._engine.bound.StalenessBound` as the shared-memory engine. One *update* is therefore one
worker's gradient for one owner's block group: with one owner this is exactly the shared-memory engine's update,
with several each gradient makes one update per owner, checked and counted on its own ("versions per block,
staleness per update"). Counters and the staleness histogram are summed over owners; ``samples`` is counted by
the first owner only, so each sample counts once. ``version`` is the largest owner version this worker knows.

Reads are taken in ascending owner order; before a worker blocks on an owner's read gate it releases the fresh
reads it holds at higher owners (they are re-taken in order), so two workers can never each hold a read the other
waits for (with ``max_staleness=0`` and several owners this cycle is otherwise reachable). Reads held for a
deferred update (``"accumulate"``) cannot be released; with three or more workers, several owners and
``"accumulate"``, a cycle through deferred reads is conceivable and would end in :class:`WorkerTimeoutError`
after ``timeout`` (bounded, never silent).

**Wire, channels and overlap.** No any-source receive: each (client, owner) pair has its own 2-rank gloo group
(made by its two ranks alone, so a rank's set-up and connections grow linearly with the ranks: see
:func:`pair_groups`), used in one direction, and the owner runs one server thread per
remote client that receives that client's requests in order. Messages are raw tensors behind an int64 header
(:mod:`lightning_async._engine.ps_wire`), nothing is pickled, and a message is one send. A step costs one round trip
per owner: the push of a gradient returns the owner's fresh parameters with a new read already registered (push-pull),
and the pushes to all owners are posted at once and run concurrently, while the worker applies the blocks it
owns itself in its own thread (no wire, no message, no clone: the fresh blocks are copied straight into its
parameters under the owner's lock; a remote reply is packed from the owner's blocks under the lock, also without an
intermediate clone). Owners apply the other workers' updates in their server threads while their own worker keeps
computing: that is where communication and application overlap compute.

**Overlap (pipelined pushes).** With ``overlap`` (default unless ``bound_policy="wait"`` or ``max_staleness < 2``)
a worker does not wait for its push-pull round trip either: it posts the push to each remote owner and computes its
next gradient on the parameters it holds, while a reply-waiter thread (gloo works cannot be polled) waits for the
answer; the reply's fresh parameters and read become the worker's at its next step. So a worker holds up to two
reads at an owner (the one its gradient is computed on, and the one its in-flight push will bring back), its
updates arrive in the order of its reads, and the owner admits both with the same feasibility rule (every read in
flight, the worker's own included). Each overlapped update is one version staler: its own previous update lands in
between. The first step after a blocking read takes a *pair* of reads of one version (``READ_PAIR``) so that the
pipeline can start. Overlap is adaptive per owner (:meth:`ParameterServerEngine._worthwhile`): a worker whose round
trip (a moving average) takes less than a sixth of its step, or with whose updates the others barely interleave
(fewer than one of theirs per two of its own: the fast worker beside a straggler, whose updates overlap would make
stale), or whose peers process more than 1.75 samples each per sample of its own (the straggler: one more of its
long steps lets many of their updates in, and its two old reads make the owner defer theirs), stops overlapping
(its last pipelined push asks for no read; a slow worker then holds one read, not two, so the fast ones defer
less). It starts again from a pair of reads granted with a push (``F_WANT_PAIR``; an owner whose
bound admits one read only grants one, and the worker asks again). Without overlap a push still returns at once and
its reply is taken at the next :meth:`begin_step` (*late replies*): the round trip overlaps the end of the step,
and the next gradient includes the update. Under ``"accumulate"`` a pipelined push is applied by the owner as soon
as the bound admits it (the owner's server thread waits, not the worker), and a gradient ready before the previous
reply came back is summed into the next push (``deferred``, reported with it). A non-finite gradient takes the
blocking path. Without overlap (``max_staleness=0`` in particular) a worker's next gradient is computed on
parameters that include its last update, which keeps ``max_staleness=0`` exact. ``"wait"`` is not overlapped: a
worker waiting for admission while holding the read of its next gradient could wait for a peer that waits for it.

**Failures.** Every wait is bounded by ``Work.wait(timeout)``. A dead peer closes its pair's connection, which
fails only that pair's channels (gloo pairs are per group): an owner notices a client's death at once, a client
notices an owner's death at its next exchange. A hung client is noticed by its owners when it holds a read and
sends nothing for ``hang_timeout`` (default ``2 * timeout``; it must exceed a step), or when a request waits
``timeout`` on the read it holds. ``on_worker_failure="stop"``: the owner fails, every later request to it
answers with an error naming the rank (:class:`WorkerDiedError` / :class:`WorkerTimeoutError`), so the whole run
stops within about one step plus the timeout. ``"continue"``: the owner evicts the worker (its read is released,
its in-flight update is counted in ``lost``, nothing else changes) and the others carry on. A hung or dead owner:
clients raise :class:`WorkerDiedError` / :class:`WorkerTimeoutError` naming the owner rank and its blocks.

**Checks.** Every update is checked by its owner before it touches state, and each rejection counted by reason:
``rejected_duplicate`` (a ``seq`` not above the worker's last), ``rejected_schema`` (unknown or repeated block,
dtype, shape, numel, payload bounds), ``rejected_version`` (base version not the read the worker holds, or above
the owner's version), ``rejected_nonfinite``, ``rejected_stale`` (``"drop"``). ``applied + rejected == received``.

**Network exposure.** This engine opens no listener of its own: it uses the process groups and the store made by
``init_process_group``. Gloo binds its pair sockets to the address it resolves for ``MASTER_ADDR`` (Lightning's
default ``127.0.0.1``), but c10d's TCPStore listens on all interfaces whatever the host (pytorch#173909): on a
shared machine, launch with a ``file://`` init method or firewall the port; across nodes, set ``MASTER_ADDR`` and
``GLOO_SOCKET_IFNAME`` to a private interface. See ``docs/multinode.md``.

**GPU.** CUDA tensors are staged through page-locked (pinned) host memory and sent over gloo; the NCCL
point-to-point path is not implemented, and the GPU path is untested here (no GPU; its test skips with a reason).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import datetime
import json
import math
import queue
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lightning_async._engine import ps_wire as wire
from lightning_async._engine.base import COUNTERS, Engine, Telemetry, all_finite, is_async_optimizer
from lightning_async._engine.bound import StalenessBound
from lightning_async.errors import AsyncTrainingError, NonFiniteGradientError, WorkerDiedError, WorkerTimeoutError

#: counters kept by each owner, per worker
OWNER_COUNTERS: tuple[str, ...] = (
    "received", "applied", "rejected_stale", "rejected_nonfinite", "rejected_schema", "rejected_duplicate",
    "rejected_version", "deferred", "samples", "lost", "overlapped",
)
REJECTIONS: tuple[str, ...] = tuple(c for c in OWNER_COUNTERS if c.startswith("rejected_"))
#: values each worker reports with its requests (progress, for telemetry)
_REPORTED = ("gradients", "wait_seconds", "busy_seconds", "started", "heartbeat")
_UNBOUNDED_BINS = 64
_RUNNING, _FINISHED, _EVICTED, _DEAD = 1, 2, 3, 4
_STATUS = {0: "not started", _RUNNING: "running", _FINISHED: "finished", _EVICTED: "evicted", _DEAD: "dead"}
_VERDICTS = ("applied", "deferred", "rejected_stale", "rejected_nonfinite", "rejected_schema", "rejected_duplicate",
             "rejected_version")
_V_CODE = {v: i + 1 for i, v in enumerate(_VERDICTS)}
_CODE_V = {i + 1: v for i, v in enumerate(_VERDICTS)}
_ERRORS = {cls.__name__: cls for cls in (WorkerDiedError, WorkerTimeoutError, NonFiniteGradientError,
                                         AsyncTrainingError)}
ON_WORKER_FAILURE = ("stop", "continue")
_IDLE_TIMEOUT = 7 * 24 * 3600.0


def assign_blocks(sizes: Sequence[int], owners: Sequence[int]) -> dict[int, list[int]]:
    """Greedy size balancing: largest block first, to the owner with the fewest bytes so far (ties: lowest rank).

    Returns ``{owner rank: sorted block indices}`` (every owner present, possibly with no block).
    """
    load = {o: 0 for o in owners}
    owned: dict[int, list[int]] = {o: [] for o in owners}
    for block in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owner = min(owners, key=lambda o: (load[o], o))
        owned[owner].append(block)
        load[owner] += sizes[block]
    return {o: sorted(b) for o, b in owned.items()}


def pair_groups(
    rank: int, world_size: int, owners: Sequence[int], store: Any, namespace: str
) -> dict[tuple[int, int], Any]:
    """This rank's 2-rank gloo groups, one per (client, owner) direction it takes part in.

    Each group is made by its two ranks alone (a ``ProcessGroupGloo`` over its own prefix of ``store``), so a rank
    makes at most ``2 (N - 1)`` groups with one connection each, and no rank takes part in the others' set-up
    (``dist.new_group`` needs every rank to enter every group's creation: ``N (N - 1)`` calls on each rank). A
    group's creation waits for its peer, so every rank makes its groups in one global order, the pairs
    ``(min, max)`` in lexicographic order: the first unmade pair always has both its ranks at it, so the set-up
    cannot deadlock. A group per pair keeps a peer's failure to that pair (gloo tears a group down on error).

    Returns:
        ``{(client, owner): group}``; the group rank of each side is its order in the pair (lower rank first).
    """
    timeout = datetime.timedelta(seconds=_IDLE_TIMEOUT)  # every wait on a channel passes its own bound
    groups: dict[tuple[int, int], Any] = {}
    owner_set = set(owners)
    for peer in range(world_size):
        if peer == rank:
            continue
        low, high = min(rank, peer), max(rank, peer)
        for client, owner in ((low, high), (high, low)):
            if owner not in owner_set:
                continue
            prefix = dist.PrefixStore(f"{namespace.rstrip('/')}/pair/{client}-{owner}/", store)
            groups[(client, owner)] = dist.ProcessGroupGloo(prefix, int(rank == high), 2, timeout)
    return groups


@dataclass(eq=False)
class _Posted:
    """A pipelined push on its way to a remote owner, and (once ``done``) the owner's reply."""

    parts: wire.Parts
    works: list[Any]
    prelude: tuple[torch.Tensor, Any]
    done: threading.Event = field(default_factory=threading.Event)
    reply: wire.Message | None = None
    error: wire.ChannelError | None = None
    checked: bool = False
    detached: bool = False
    verdict: str = ""
    read: int = -1
    posted_at: float = field(default_factory=time.perf_counter)
    done_at: float = 0.0
    late: bool = False  # a blocking push whose reply is taken at the next begin_step (see _post_late)
    inline: bool = False  # late, and completed by the worker's own thread (no reply-waiter thread)
    base: int = -1  # late: the read the update was computed on (still held if the owner defers it)
    repipe: bool = False  # the push asked for a pair of reads (overlap starts again from its reply)
    pair: bool = False  # the reply granted that pair


class _ReplyWaiter:
    """Waits, off the training thread, for the replies to one remote owner's pipelined pushes.

    The training thread posts the send and the receive itself (so the bytes move as soon as the owner answers);
    this thread only calls the bounded ``wait``s that gloo needs before a work counts as done, and sets
    ``done``. The training thread never touches the channel while a push is in flight.
    """

    def __init__(self, channel: wire.Channel, timeout: float, name: str) -> None:
        self.channel = channel
        self.timeout = timeout
        self.jobs: queue.SimpleQueue[_Posted | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self.channel.complete(job.works, self.timeout)
                job.reply = self.channel.receive(self.timeout, job.prelude)
            except wire.ChannelError as e:
                job.error = e
            except Exception as e:  # noqa: BLE001 - never leave the training thread waiting on a dead waiter
                job.error = wire.ChannelError(f"{type(e).__name__}: {e}")
            finally:
                job.done_at = time.perf_counter()
                job.done.set()

    def stop(self) -> None:
        self.jobs.put(None)


class _Background:
    """One daemon thread that runs submitted calls in order (a daemon, unlike ``ThreadPoolExecutor``'s workers, so
    a call stuck on a dead peer cannot hold up the interpreter's exit)."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[tuple[Any, tuple[Any, ...], concurrent.futures.Future[Any]] | None] = \
            queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.jobs.put((fn, args, future))
        return future

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            fn, args, future = job
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

    def stop(self) -> None:
        self.jobs.put(None)


class _Authority:
    """What one owner rank holds for its block group, shared by its server threads and its own worker."""

    def __init__(self, engine: ParameterServerEngine, blocks: list[int]) -> None:
        self.e = engine
        self.blocks = blocks
        self.cond = threading.Condition()
        self.shadows = {b: torch.nn.Parameter(engine.params[b].detach().clone(), requires_grad=True) for b in blocks}
        self.optimizer, self._group_of = _restricted_optimizer(engine.optimizer, engine.params, self.shadows)
        self.version = 0
        self.block_versions = {b: 0 for b in blocks}
        self.reads: dict[int, list[int]] = {}  # worker -> read versions it holds, oldest first (two with overlap)
        self.read_queue: list[int] = []  # workers waiting for a read, first come first served
        self.last_seq: dict[int, int] = {}
        p = engine.num_workers
        self.applied_samples = [0] * p  # per worker: the samples its applied updates carried
        self.counts = np.zeros((p, len(OWNER_COUNTERS)), dtype=np.int64)
        self.hist = np.zeros((p, engine._bins), dtype=np.int64)
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
                f"worker {w} was evicted by owner rank {self.e.worker} (it was unresponsive for longer than the "
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
        deadline = start + self.e.timeout
        while True:
            self.check(w)
            if predicate():
                waited = time.monotonic() - start
                if waited > 0 and w == self.e.worker:
                    self.e._wait_seconds += waited
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holders = self._blame(w)
                message = (
                    f"worker {w} waited {self.e.timeout:.1f}s at owner rank {self.e.worker} to {what}; "
                    f"{self._describe(holders)}"
                )
                if self.e.on_worker_failure == "continue":
                    silent = [h for h in holders if time.time() - self.last_seen[h] >= self.e.timeout]
                    if silent:
                        for h in silent:
                            self._evict(h, _EVICTED)
                        deadline = time.monotonic() + self.e.timeout
                        continue
                error = WorkerTimeoutError(
                    message + ". Raise the timeout if the peers are just slow, or raise max_staleness."
                )
                if holders and self.e.on_worker_failure == "stop":
                    self.failed = error
                    self.cond.notify_all()
                raise error
            self.cond.wait(min(remaining, 0.5))

    def _evict(self, w: int, status: int) -> None:
        if self.status[w] in (_EVICTED, _DEAD, _FINISHED):
            self.status[w] = max(self.status[w], status) if self.status[w] != _FINISHED else _FINISHED
            return
        self.status[w] = status
        lost = self._drop_all(w)
        if lost:
            self.count(w, "lost", lost)  # the updates it was computing (or sending) will never arrive
        self.cond.notify_all()
        self.e._mark_gone(w)

    def worker_failed(self, w: int, error: wire.ChannelError) -> None:
        with self.cond:
            if self.status[w] == _FINISHED:
                return
            if self.e.on_worker_failure == "continue":
                print(
                    f"lightning_async: owner rank {self.e.worker}: worker {w} "
                    f"{'is hung' if error.timed_out else 'is gone (its connection closed)'}; its in-flight update is "
                    "lost and the others carry on (on_worker_failure='continue').",
                    file=sys.stderr, flush=True,
                )
                self._evict(w, _EVICTED if error.timed_out else _DEAD)
                return
            if self.failed is None:
                if error.timed_out:
                    self.failed = WorkerTimeoutError(
                        f"worker {w} held a read at owner rank {self.e.worker} and sent nothing for "
                        f"{self.e.hang_timeout:.1f}s: it is hung; the run stops (on_worker_failure='stop'). "
                        "Resume with Trainer.fit(..., ckpt_path='last')."
                    )
                else:
                    self.failed = WorkerDiedError(
                        f"worker {w} is no longer running (its connection to owner rank {self.e.worker} closed); "
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
        return self.e.bound.may_read(self.version, [*held, self.version] if pair else held)

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
                raise AsyncTrainingError(f"worker {w} asked owner rank {self.e.worker} for a second read")
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
            if flags & wire.F_NONFINITE or not (finite or all_finite([g for _, g in grads])):
                return self._reject(w, "rejected_nonfinite", release=pipelined), -1, None, 0
            others = lambda: self._in_flight(w, skip_oldest=True)  # noqa: E731
            policy = self.e.bound.policy
            if policy == "wait" or (flags & wire.F_MUST_APPLY and policy == "accumulate"):
                self.wait_for(w, lambda: self.e.bound.may_apply(self.version, base, others()), "apply an update")
            elif not self.e.bound.may_apply(self.version, base, others()):
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
            if self.e.owner_ranks[0] == self.e.worker:
                self.count(w, "samples", samples)
            self.hist[w, min(staleness, self.e._bins - 1)] += 1
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
        user_groups = self.e.optimizer.param_groups
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
                "rank": self.e.worker,
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
        with self.cond:
            self.version = int(meta["version"])
            for b, v in zip(self.blocks, meta["block_versions"]):
                self.block_versions[b] = int(v)
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
                "rank": self.e.worker,
                "version": self.version,
                "counts": self.counts.tolist(),
                "hist": self.hist.tolist(),
                "reported": self.reported.tolist(),
                "status": list(self.status),
                "last_seen": list(self.last_seen),
                "reads": {str(k): list(v) for k, v in self.reads.items()},
            }

    def adopt(self, engine: ParameterServerEngine) -> None:
        """Take this owner's blocks' parameters and optimizer state from the worker's (just loaded) objects."""
        with self.cond, torch.no_grad():
            self.optimizer.state.clear()
            for b in self.blocks:
                local = engine.params[b]
                self.shadows[b].copy_(local.detach())
                state = engine.optimizer.state.get(local)
                if state:
                    self.optimizer.state[self.shadows[b]] = {
                        k: (v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                        for k, v in state.items()
                    }


class ParameterServerEngine(Engine):
    """Authoritative parameters and optimizer state split in blocks over owner ranks; workers push and pull.

    Construct it on every rank at the same point (it creates process groups collectively), after
    ``init_process_group`` (gloo, or any backend: the engine makes its own gloo groups). With one worker no
    process group is needed.

    Args:
        worker: this rank (``dist.get_rank()``).
        num_workers: the world size.
        params: the worker's parameters (the model's ``nn.Parameter`` objects), in the same order on every rank.
        optimizer: the user's optimizer over ``params``; its rule (class, hyper-parameters, LR schedule) runs on
            the owners, restricted to their blocks. It must keep tensor or number state only.
        max_staleness: the bound K (``None``: unbounded).
        bound_policy: ``"accumulate"``, ``"wait"`` or ``"drop"``.
        timeout: seconds any single wait may last (admission waits at an owner; a reply takes at most
            ``2 * timeout + 1``).
        max_consecutive_nonfinite: raise :class:`NonFiniteGradientError` after this many non-finite gradients
            in a row from this worker.
        on_worker_failure: ``"stop"`` (a dead or hung worker stops the run with an error naming it) or
            ``"continue"`` (its in-flight update is counted as lost and the others carry on). The failure of an
            owner rank always stops the run.
        owner_ranks: the ranks that own blocks (default: all). Only a rank outside it can fail under
            ``"continue"``.
        hang_timeout: seconds a worker holding a read may stay silent before its owners call it hung
            (default ``2 * timeout``). It must exceed the longest step.
        overlap: pipeline the pushes to remote owners: a worker sends its update and computes its next gradient
            while the update travels and is applied, instead of waiting for the round trip (adaptive: only while
            the round trip is a large share of the worker's step). Its updates to a remote
            owner are then at least one version stale (its own previous update lands in between; all but the first
            after a read), so it needs ``max_staleness >= 1``, and it does not combine with
            ``bound_policy="wait"``. Default (``None``): on unless the policy is ``"wait"`` or ``max_staleness`` is
            below 2.
        namespace: prefix of this engine's keys in the default store (make it unique per engine and attempt).
        store: the store for the batch cursor and finish marks (default: the default process group's store).
    """

    def __init__(
        self,
        worker: int,
        num_workers: int,
        params: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        *,
        max_staleness: int | None,
        bound_policy: str,
        timeout: float,
        max_consecutive_nonfinite: int = 5,
        on_worker_failure: str = "stop",
        owner_ranks: Sequence[int] | None = None,
        hang_timeout: float | None = None,
        overlap: bool | None = None,
        namespace: str = "lightning_async/ps",
        store: Any | None = None,
    ) -> None:
        if on_worker_failure not in ON_WORKER_FAILURE:
            raise ValueError(f"on_worker_failure must be one of {ON_WORKER_FAILURE}, got {on_worker_failure!r}.")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        if not (isinstance(max_consecutive_nonfinite, int) and max_consecutive_nonfinite >= 1):
            raise ValueError(f"max_consecutive_nonfinite must be an int >= 1, got {max_consecutive_nonfinite!r}.")
        owners = sorted(set(range(num_workers) if owner_ranks is None else owner_ranks))
        if not owners or any(not (0 <= o < num_workers) for o in owners):
            raise ValueError(f"owner_ranks must be a non-empty subset of range({num_workers}), got {owner_ranks!r}.")
        self.hang_timeout = float(hang_timeout) if hang_timeout is not None else 2.0 * timeout
        if self.hang_timeout < timeout:
            raise ValueError(f"hang_timeout ({hang_timeout}) must be at least timeout ({timeout}).")
        self.worker = worker
        self.num_workers = num_workers
        self.params = list(params)
        self.optimizer = optimizer
        self.bound = StalenessBound(max_staleness, bound_policy)
        if overlap is None:
            overlap = bound_policy != "wait" and (max_staleness is None or max_staleness >= 2)
        elif not isinstance(overlap, bool):
            raise ValueError(f"overlap must be True, False or None (automatic), got {overlap!r}.")
        elif overlap and bound_policy == "wait":
            raise ValueError(
                "overlap=True does not combine with bound_policy='wait': a waiting worker would hold the read for "
                "its next gradient while it waits, and two such workers can wait for each other. Use "
                "bound_policy='accumulate' (the default: it never idles a worker) or overlap=False."
            )
        elif overlap and max_staleness is not None and max_staleness < 1:
            raise ValueError(
                f"overlap=True needs max_staleness >= 1, got max_staleness={max_staleness}: with overlap a worker "
                "computes its next gradient while its last update travels, so each of its updates is at least one "
                "version stale. Set overlap=False (or None) for max_staleness=0."
            )
        self.overlap = overlap
        self.timeout = float(timeout)
        self.reply_timeout = 2.0 * self.timeout + 1.0
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.on_worker_failure = on_worker_failure
        self.owner_ranks = owners
        self._bins = (max_staleness if max_staleness is not None else _UNBOUNDED_BINS) + 2
        cuda = any(p.is_cuda for p in self.params)
        if cuda and not torch.cuda.is_available():  # pragma: no cover
            raise ValueError("CUDA parameters without CUDA")
        sizes = [p.numel() * p.element_size() for p in self.params]
        self.ownership = assign_blocks(sizes, owners)
        self.owner_of = {b: o for o, bs in self.ownership.items() for b in bs}
        self._max_payload = 2 * sum(_padded(s) for s in sizes) + (1 << 20)
        inline = wire.inline_size(sizes)
        distributed = num_workers > 1
        if distributed and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ParameterServerEngine with num_workers > 1 needs torch.distributed initialized first.")
        if distributed and dist.get_rank() != worker:
            raise ValueError(f"worker={worker} but dist.get_rank()={dist.get_rank()}.")
        # ---- store (batch cursor, finish marks, schema check)
        if store is None and distributed:
            store = dist.distributed_c10d._get_default_store()
        self._store = dist.PrefixStore(namespace.rstrip("/") + "/", store) if store is not None else None
        self._local_cursor: dict[int, int] = {}
        self._gone: set[int] = set()
        self._claimer = _Background("lasync-ps-cursor")
        self._claim_ahead: tuple[int, concurrent.futures.Future[list[int]]] | None = None
        self._claimed: list[int] = []  # batch indices claimed and not yet handed out (of _claimed_epoch)
        self._claimed_epoch = -1
        self._last_claimed = -1
        self._last_chunk = 1
        self._slow = False  # the others claim much faster than this worker: it claims nothing ahead
        self._cursor_epochs: set[int] = set()
        if self._store is not None:
            self._check_schema()
        # ---- channels: one 2-rank gloo group per (client, owner) direction, made by its two ranks only
        self._client: dict[int, wire.Channel] = {}  # owner -> channel (this rank as client)
        self._server: dict[int, wire.Channel] = {}  # client -> channel (this rank as owner)
        if distributed:
            assert store is not None
            for (c, o), group in pair_groups(worker, num_workers, owners, store, namespace).items():
                if worker == c:
                    self._client[o] = wire.Channel(group, o, self._max_payload, inline, pinned=cuda,
                                                   peer_in_group=int(o > c))
                else:
                    self._server[c] = wire.Channel(group, c, self._max_payload, inline, pinned=cuda,
                                                   peer_in_group=int(c > o))
        self.authority = _Authority(self, self.ownership[worker]) if worker in owners else None
        # ---- overlap: a thread per remote owner waits for the replies to pipelined pushes (gloo's works cannot
        # be polled: is_completed() stays False until wait() is called)
        self._waiters = {
            o: _ReplyWaiter(channel, self.reply_timeout, f"lasync-ps-reply-{o}")
            for o, channel in self._client.items()
        } if self.overlap else {}
        self._inflight: dict[int, _Posted] = {}
        self._spare = {o: False for o in owners}  # a second read of the version held (overlap's first step)
        self._overlap_deferred = {o: 0 for o in owners}
        # per remote owner: overlapping now? (only while the round trip is a large share of the step, see _worthwhile)
        self._piped = {o: True for o in self._waiters}
        # per remote owner: moving averages of the round trip, seconds, measured without overlap (a late or blocking
        # push's: what a step waits without it) and with it (a pipelined push's: up to its reply's arrival)
        self._latency = {o: 0.0 for o in self._waiters}
        self._latency_piped = {o: 0.0 for o in self._waiters}
        # per remote owner: moving average of the updates the *other* workers apply there per update of this one
        # (from the versions its replies carry), and what was seen of both since the average last moved. Per update,
        # not per step: with overlap, "accumulate" sums a gradient ready before the last reply came back into the
        # next push, which halved every worker's updates per step, and equal workers flapped in and out of overlap
        self._others: dict[int, float | None] = {o: None for o in self._waiters}
        self._others_new = {o: 0 for o in self._waiters}
        self._own_new = {o: 0 for o in self._waiters}
        self._reply_version: dict[int, int | None] = {o: None for o in self._waiters}
        # per remote owner: the samples the others' updates applied there carried (as of the last reply), and decaying
        # sums of those seen since and of this worker's own: their ratio is how much faster the others are
        self._reply_samples: dict[int, int | None] = {o: None for o in self._waiters}
        self._others_samples = {o: 0.0 for o in self._waiters}
        self._own_samples = {o: 0.0 for o in self._waiters}
        # per remote owner: whether a reply with its parameters is sent in two pieces (see _post_late)
        self._reply_in_two = {
            o: wire.frame_size([sizes[b] for b in self.ownership[o]]) > channel.inline
            for o, channel in self._client.items()
        }
        # per remote owner: the layout of its replies' parameter rows, once checked (see _copy_reply)
        self._reply_layouts: dict[int, tuple[np.ndarray, int, list[tuple[int, int, int]]]] = {}
        self._step_interval = 0.0  # moving average of the time between two submits
        self._last_submit = 0.0
        self._submits = 0
        self._owned_pending: set[int] = set()
        # ---- worker-side state, per owner
        self._seq = 0
        self._reads: dict[int, int | None] = {o: None for o in owners}
        self._pending: dict[int, list[torch.Tensor | None] | None] = {o: None for o in owners}
        self._pending_count = {o: 0 for o in owners}
        self._pending_samples = {o: 0 for o in owners}
        self._owner_versions = {o: 0 for o in owners}
        self._nonfinite_streak = 0
        self._local_step = 0
        self._gradients = 0
        self._wait_seconds = 0.0
        self._busy_seconds = 0.0
        self._started = 0.0
        self._finished = False
        self._closed = False
        self._last_push: dict[int, list[torch.Tensor]] = {}
        self._threads: list[threading.Thread] = []
        for c, channel in self._server.items():
            thread = threading.Thread(target=self._serve, args=(c, channel), name=f"lasync-ps-serve-{c}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _check_schema(self) -> None:
        """Every rank must hold the same parameter shapes and dtypes (a mismatch is named at construction)."""
        assert self._store is not None
        mine = [[list(p.shape), str(p.dtype)] for p in self.params]
        self._store.set(f"schema/{self.worker}", json.dumps(mine))
        if self.worker == 0:
            return
        try:
            self._store.wait(["schema/0"], datetime.timedelta(seconds=self.timeout))
        except RuntimeError as e:
            raise WorkerTimeoutError(f"worker {self.worker} waited {self.timeout}s for rank 0's parameter "
                                     f"schema: {e}") from e
        theirs = json.loads(self._store.get("schema/0").decode())
        if len(theirs) != len(mine):
            raise RuntimeError(f"rank 0 has {len(theirs)} parameters, rank {self.worker} has {len(mine)}: every "
                               "worker must build the same model.")
        for i, (a, b) in enumerate(zip(theirs, mine)):
            if a != b:
                raise RuntimeError(f"parameter {i} differs: rank 0 has shape {a[0]} {a[1]}, rank {self.worker} "
                                   f"has shape {b[0]} {b[1]}: every worker must build the same model.")

    # ================================================================== server side
    def _serve(self, c: int, channel: wire.Channel) -> None:
        auth = self.authority
        assert auth is not None
        while True:
            with auth.cond:
                holds = c in auth.reads
            try:
                message = channel.receive(self.hang_timeout if holds else _IDLE_TIMEOUT)
            except wire.ChannelError as e:
                auth.worker_failed(c, e)
                return
            kind = message[wire.P_KIND]
            with auth.cond:
                auth.touch(c, message.header if kind in (wire.READ, wire.PUSH) else None)
            if message[wire.P_WORKER] != c:
                reply = _error_reply(AsyncTrainingError(f"message on worker {c}'s channel claims worker "
                                                        f"{message[wire.P_WORKER]}"))
            else:
                try:
                    reply = self._handle(c, kind, message)
                except AsyncTrainingError as e:
                    reply = _error_reply(e)
                except (ValueError, TypeError, KeyError, IndexError) as e:  # a malformed control message
                    reply = _error_reply(AsyncTrainingError(f"bad request from worker {c}: {e}"))
            try:
                channel.send(reply, self.reply_timeout)
            except wire.ChannelError as e:
                auth.worker_failed(c, e)
                return
            if kind == wire.CLOSE:
                return

    def _handle(self, c: int, kind: int, m: wire.Message) -> list[torch.Tensor]:
        auth = self.authority
        assert auth is not None
        seq = m[wire.P_SEQ]

        def out(blocks: list[tuple[int, int, torch.Tensor]]) -> wire.Parts:  # packed under the owner's lock
            return wire.pack(wire.RESPONSE, self.worker, seq, blocks=blocks)

        if kind == wire.READ:
            version, reply, reads = auth.read(c, m[wire.P_FLAGS], out)
            reply = reply if reply is not None else wire.pack(wire.RESPONSE, self.worker, seq)
            reply[0][wire.P_VERSION], reply[0][wire.P_EXTRA] = auth.version, version
            reply[0][wire.P_READS], reply[0][wire.P_SAMPLES] = reads, auth.others_samples(c)
            return reply
        if kind == wire.PUSH:
            grads, schema_error = self._decode_push(m)
            verdict, version, reply, reads = auth.push(
                c, seq, m[wire.P_VERSION], grads, m[wire.P_SAMPLES], m[wire.P_FLAGS], schema_error, out,
                deferred=max(0, m[wire.P_EXTRA]),
            )
            reply = reply if reply is not None else wire.pack(wire.RESPONSE, self.worker, seq)
            reply[0][wire.P_VERSION], reply[0][wire.P_EXTRA] = auth.version, version
            reply[0][wire.P_READS], reply[0][wire.P_SAMPLES] = reads, auth.others_samples(c)
            reply[0][wire.P_FLAGS] = _V_CODE[verdict]
            return reply
        if kind in (wire.BYE, wire.CLOSE):
            auth.bye(c)
            return wire.pack(wire.RESPONSE, self.worker, m[wire.P_SEQ])
        if kind == wire.SNAPSHOT:
            meta, tensors = auth.snapshot()
            return wire.pack(wire.RESPONSE, self.worker, m[wire.P_SEQ], blocks=tensors, meta=meta)
        if kind == wire.LOAD:
            auth.load(m.meta)
            return wire.pack(wire.RESPONSE, self.worker, m[wire.P_SEQ], ints={wire.P_VERSION: auth.version})
        if kind == wire.TELEMETRY:
            return wire.pack(wire.RESPONSE, self.worker, m[wire.P_SEQ], meta=auth.telemetry())
        raise AsyncTrainingError(f"unknown request kind {kind}")

    def _decode_push(self, m: wire.Message) -> tuple[list[tuple[int, torch.Tensor]], str | None]:
        """Decode a PUSH's gradient blocks, or say why its schema is wrong (nothing is applied then)."""
        auth = self.authority
        assert auth is not None
        grads, seen = [], set()
        version = m[wire.P_VERSION]
        for i, row in enumerate(m.rows.tolist()):
            block = row[wire.R_BLOCK]
            if block not in auth.shadows:
                return [], f"block {block} is not owned by rank {self.worker}"
            if block in seen:
                return [], f"block {block} appears twice"
            seen.add(block)
            if row[wire.R_VERSION] != version:
                return [], f"block {block}: base version {row[wire.R_VERSION]} != {version}"
            reason = wire.row_matches(row, auth.shadows[block])
            if reason is not None:
                return [], f"block {block}: {reason}"
            if not wire.payload_fits(m, i):
                return [], f"block {block}: payload out of bounds"
            grad = wire.decode_block(m, i, auth.shadows[block])
            grads.append((block, grad.to(auth.shadows[block].device) if auth.shadows[block].is_cuda else grad))
        return grads, None

    # ================================================================== client side
    def _request(self, owner: int, kind: int, **pack_kwargs: Any) -> list[torch.Tensor]:
        self._seq += 1 if kind == wire.PUSH else 0
        ints = dict(pack_kwargs.pop("ints", {}))
        ints.update({wire.P_GRADIENTS: self._gradients, wire.P_WAIT_US: int(self._wait_seconds * 1e6),
                     wire.P_BUSY_US: int(self._busy_seconds * 1e6)})
        return wire.pack(kind, self.worker, self._seq, ints=ints, **pack_kwargs)

    def _exchange(self, requests: dict[int, list[torch.Tensor]], local: Any = None) -> dict[int, wire.Message]:
        """Send ``requests`` (owner -> packed message) to remote owners at once, run ``local()`` meanwhile,
        and collect the replies. Raises the error an owner replied with, or one naming a dead/hung owner."""
        for owner in requests:
            self._settle(owner)  # a pipelined push's reply comes first on the channel
        posted = {}
        sent_at = time.perf_counter()
        for owner, parts in requests.items():
            channel = self._client[owner]
            try:
                works = channel.post(parts)
                posted[owner] = (parts, works, channel.post_prelude())
            except wire.ChannelError as e:
                raise self._owner_error(owner, e) from e
        if local is not None:
            local()
        replies = {}
        for owner, (parts, works, prelude) in posted.items():
            channel = self._client[owner]
            try:
                channel.complete(works, self.reply_timeout)
                replies[owner] = channel.receive(self.reply_timeout, prelude)
            except wire.ChannelError as e:
                raise self._owner_error(owner, e) from e
            if parts[0][wire.P_KIND] == wire.PUSH:
                self._last_push[owner] = parts
                self._note_latency(owner, time.perf_counter() - sent_at)  # the round trip (and local() meanwhile)
        for owner, reply in replies.items():
            kind = posted[owner][0][0][wire.P_KIND]
            self._check_reply(owner, reply, push=kind == wire.PUSH, versioned=kind in (wire.READ, wire.PUSH))
        return replies

    def _check_reply(self, owner: int, reply: wire.Message, push: bool, versioned: bool = True) -> None:
        """Raise the error an owner replied with; track its version (``versioned``: the reply carries it, as those
        to reads and pushes do)."""
        if reply[wire.P_STATUS] != wire.OK:
            cls = _ERRORS.get(str(reply.meta.get("error")), AsyncTrainingError)
            raise cls(f"{reply.meta.get('message', 'error')} (reported by owner rank {owner} to worker "
                      f"{self.worker})")
        if not versioned:
            return
        version = reply[wire.P_VERSION]
        self._owner_versions[owner] = max(self._owner_versions[owner], version)
        previous = self._reply_version.get(owner)
        if owner in self._reply_version:
            self._reply_version[owner] = version
            seen, before = reply[wire.P_SAMPLES], self._reply_samples[owner]
            self._reply_samples[owner] = seen
            if before is not None:
                self._others_samples[owner] += max(0, seen - before)
        if previous is not None:  # the owner's version moved by this worker's applied update and the others'
            mine = 1 if push and _CODE_V.get(reply[wire.P_FLAGS]) == "applied" else 0
            self._others_new[owner] += max(0, version - previous - mine)
            self._own_new[owner] += mine

    # ------------------------------------------------------------------ overlap (pipelined pushes)
    def _post_pipelined(self, owner: int, parts: wire.Parts, waiter: bool = True) -> None:
        """Post the push and its reply's receive; ``waiter``: the owner's reply-waiter thread completes them (else
        :meth:`_await` does, in this thread)."""
        channel = self._client[owner]
        try:
            posted = _Posted(parts, channel.post(parts), channel.post_prelude())
        except wire.ChannelError as e:
            raise self._owner_error(owner, e) from e
        self._inflight[owner] = posted
        if waiter:
            self._waiters[owner].jobs.put(posted)

    def _post_late(self, owner: int, parts: wire.Parts, base: int, repipe: bool) -> None:
        """Send a blocking push and take its reply at the next :meth:`begin_step` instead of waiting for it now:
        the round trip then overlaps the end of this step (the framework's bookkeeping, fetching the next batch),
        and the next gradient is still computed on parameters that include this update (no staleness added). The
        owner answers it without waiting (its read is granted only if the bound admits it at once), so taking the
        reply first in :meth:`begin_step` cannot wait on another worker. Until then this worker holds no read at
        ``owner`` (the reply brings the next one; if the owner defers the update, the read it was computed on stays
        held and the update stays pending). Its reply is completed by :meth:`_await`, in this thread: the worker
        waits for it anyway, and a hand-off through the waiter thread would only add a wake-up. Except for a reply
        too large for one piece: its second piece's receive is posted only once the first arrived, and the owner's
        send would wait for it until the next step (the waiter thread posts it at once)."""
        self._post_pipelined(owner, parts, waiter=self._reply_in_two[owner])
        posted = self._inflight[owner]
        posted.late, posted.base, posted.repipe = True, base, repipe
        posted.inline = not self._reply_in_two[owner]
        self._reads[owner] = None

    def _sent_blocks(self, parts: wire.Parts) -> dict[int, torch.Tensor]:
        """Copies of the blocks a sent push carries, each on its block's device."""
        if len(parts) < 3:  # no rows, or no payload (only empty blocks)
            return {}
        sent = wire.Message(prelude=parts[0], rows=parts[1], payload=parts[-1])
        return {
            row[wire.R_BLOCK]: wire.decode_block(sent, i, self.params[row[wire.R_BLOCK]])
            .to(self.params[row[wire.R_BLOCK]].device, copy=True)
            for i, row in enumerate(sent.rows.tolist())
        }

    def _resolve_late(self, owner: int, posted: _Posted) -> None:
        """Apply a late push's verdict to this worker's pending update and read (its parameters are copied by
        :meth:`_consume`)."""
        if posted.verdict in ("deferred", "rejected_nonfinite", "rejected_duplicate"):
            # as for a blocking push: the read stays held at the owner (and a deferred update stays pending: the
            # next gradient is summed into it)
            self._reads[owner] = posted.base
            if owner not in self._owned_pending and self._pending[owner] is not None:
                # the pending sum is one raw gradient, the caller's (it may have been zeroed in place since): take
                # it back from the frame that was sent, which holds an exact copy
                sent = self._sent_blocks(posted.parts)
                self._pending[owner] = [
                    None if g is None else sent[b] if g.numel() else g.detach().clone()
                    for b, g in zip(self.ownership[owner], self._pending[owner])
                ]
                self._owned_pending.add(owner)
            return
        self._clear_pending(owner)  # applied, or rejected for good (as a blocking push's verdict)
        if posted.read < 0:
            self._reads[owner] = None

    def _await(self, owner: int) -> _Posted | None:
        """Wait (bounded) for the reply to the push in flight to ``owner``; raise what failed."""
        posted = self._inflight.get(owner)
        if posted is None or posted.checked:
            return posted
        if posted.inline and not posted.done.is_set():  # no waiter thread: complete it here (each wait bounded)
            channel = self._client[owner]
            try:
                channel.complete(posted.works, self.reply_timeout)
                posted.reply = channel.receive(self.reply_timeout, posted.prelude)
            except wire.ChannelError as e:
                posted.error = e
            finally:
                posted.done_at = time.perf_counter()
                posted.done.set()
        if not posted.done.wait(2 * self.reply_timeout + 1.0):  # the waiter's two waits are each bounded
            self._inflight.pop(owner, None)  # given up: close() must not wait for it again
            raise self._owner_error(owner, wire.ChannelError("no reply", timed_out=True))
        if posted.error is not None or posted.reply is None:
            self._inflight.pop(owner, None)
            raise self._owner_error(owner, posted.error or wire.ChannelError("no reply"))
        reply = posted.reply
        self._last_push[owner] = posted.parts
        try:
            self._check_reply(owner, reply, push=True)
        except AsyncTrainingError:
            self._inflight.pop(owner, None)
            raise
        posted.verdict = _CODE_V.get(reply[wire.P_FLAGS], "rejected_schema")
        posted.read = reply[wire.P_EXTRA]
        posted.pair = posted.repipe and posted.read >= 0 and reply[wire.P_READS] == 2
        posted.checked = True
        # a late push's, from the push to the next step's taking it: the time a step would spend waiting without
        # overlap, the end of the step included (measuring only what late replies leave exposed made equal workers
        # drop out of overlap for good: 0.89x DDP's throughput instead of 0.92-1.00); a pipelined push's, up to its
        # reply's arrival (used by _worthwhile only until a late one is measured)
        self._note_latency(owner, posted.done_at - posted.posted_at, piped=not posted.late)
        if posted.late:
            self._resolve_late(owner, posted)
        return posted

    def _note_latency(self, owner: int, seconds: float, piped: bool = False) -> None:
        table = self._latency_piped if piped else self._latency
        if owner in table:
            old = table[owner]
            table[owner] = seconds if old == 0.0 else 0.7 * old + 0.3 * seconds

    def _worthwhile(self, owner: int) -> bool | None:
        """Whether overlapping the pushes to ``owner`` pays (``None``: no change, or not enough steps seen yet).

        Overlap saves the round trip's wait but makes each update staler by one step: this worker's own previous
        update lands between its read and its apply, and so do the others' updates of one more of its steps; and it
        holds two reads at the owner, not one. ``False`` once:

        * the round trip takes less than a sixth of this worker's step (waiting then costs little);
        * the other workers apply fewer than one update for every two of this one: its own updates then mostly
          follow each other undisturbed, and overlap would turn most of them from fresh into stale (the fast worker
          beside a straggler);
        * the others process more than 1.75 samples each for every sample of this worker's: one more of its long
          steps lets many of their updates in, and its two old reads make a bounded owner defer or hold the fast
          workers' updates (the straggler beside fast workers).

        ``True`` again once the round trip takes more than a third of the step, the others apply at least two
        updates for every three of its own (their updates already interleave with this worker's, so one more
        version costs relatively little), and they process at most 1.25 samples each for every one of its own.
        """
        others = self._others.get(owner)
        if self._submits < 8 or self._step_interval <= 0.0 or others is None:
            return None
        # what waiting would cost: the round trip measured without overlap, once there is one (measuring it as it
        # is while overlapping, up to the reply's arrival only, made equal workers flap in and out of overlap)
        share = (self._latency[owner] or self._latency_piped[owner]) / self._step_interval
        # how much faster the others are, in samples (gradients a worker sums into one update count in full)
        faster = self._others_samples[owner] / max(self._own_samples[owner], 1.0) / max(self.num_workers - 1, 1)
        if share < 1 / 6 or others < 1 / 2 or faster > 1.75:
            return False
        return True if share > 1 / 3 and others >= 2 / 3 and faster <= 1.25 else None

    def _settle(self, owner: int) -> None:
        """Before another request to ``owner``: take the in-flight push's reply off the channel (its parameters are
        copied out of the channel's buffer, which the next receive reuses; they are used at the next step)."""
        posted = self._await(owner)
        if posted is not None and posted.read < 0:  # no read, no parameters: nothing left to consume
            self._inflight.pop(owner, None)
        elif posted is not None and not posted.detached and posted.reply is not None \
                and posted.reply.payload is not None:
            posted.reply.payload = posted.reply.payload.clone()
            posted.detached = True

    def _consume(self, owner: int, local_params: Sequence[torch.Tensor]) -> str | None:
        """Make the in-flight push's reply current: its fresh parameters and read (if granted) become this
        worker's for ``owner``'s blocks. Returns that push's verdict (``None`` if nothing was in flight)."""
        posted = self._await(owner)
        if posted is None:
            return None
        del self._inflight[owner]
        if posted.read >= 0:
            assert posted.reply is not None
            self._copy_reply(local_params, posted.reply, owner)
            self._reads[owner] = posted.read
            if posted.pair:  # granted a pair: overlap (again) from this step
                self._spare[owner] = True
                self._piped[owner] = True
        elif not posted.late:  # (a late push's read was settled with its verdict)
            self._reads[owner] = None
        return posted.verdict

    def _defer_behind_inflight(self, owner: int, grads: list[torch.Tensor | None], samples: int) -> str:
        """Sum this gradient into the next push to ``owner`` (the one in flight has not come back)."""
        self._add_pending(owner, grads, samples, own=True)
        self._overlap_deferred[owner] += 1
        return "deferred"

    def _push_pipelined(self, owner: int, local_params: Sequence[torch.Tensor], grads: list[torch.Tensor | None],
                        samples: int, last: bool = False) -> str:
        """Send this (finite) gradient to remote ``owner`` and return at once (``"sent"``); the reply, with the
        parameters for the step after next, is taken at the next step. If the previous push's reply has not come
        back and the policy is ``"accumulate"``, the gradient is summed into the next push instead
        (``"deferred"``). ``last``: the pipeline ends here (the push asks for no read; the worker's next gradient
        is computed on the parameters it holds, and its next push waits for its reply)."""
        base = self._reads[owner]
        if base is None:
            raise AsyncTrainingError(f"worker {self.worker}: submit() without a read at owner rank {owner}; call "
                                     "begin_step() first")
        previous = self._inflight.get(owner)
        policy = self.bound.policy
        if previous is not None and not previous.done.is_set() and policy == "accumulate":
            return self._defer_behind_inflight(owner, grads, samples)
        blocks = self._add_pending(owner, grads, samples)
        if previous is not None:
            self._consume(owner, local_params)  # the parameters (and read) for the next gradient
        elif self._spare[owner]:
            self._spare[owner] = False  # the next gradient is computed on these parameters again
        else:
            self._reads[owner] = None
        # no read for the next gradient (the previous reply brought none, or the pipeline had stopped): the next
        # step waits for this push's reply, so ask it for a pair of reads, to overlap again from there
        repipe = not last and self._reads[owner] is None
        flags = (0 if last else wire.F_WANT_READ) | wire.F_PIPELINED | (wire.F_WANT_PAIR if repipe else 0)
        flags |= wire.F_MUST_APPLY if policy == "accumulate" else 0
        parts = self._request(owner, wire.PUSH, blocks=[(b, base, g) for b, g in blocks], ints={
            wire.P_VERSION: base, wire.P_SAMPLES: self._pending_samples[owner], wire.P_FLAGS: flags,
            wire.P_EXTRA: self._overlap_deferred[owner],
        })
        self._clear_pending(owner)
        self._overlap_deferred[owner] = 0
        self._post_pipelined(owner, parts)
        self._inflight[owner].repipe = repipe
        return "sent"

    def _owner_error(self, owner: int, e: wire.ChannelError) -> AsyncTrainingError:
        blocks = self.ownership[owner]
        what = f"owner rank {owner} (blocks {blocks[:8]}{'...' if len(blocks) > 8 else ''})"
        if e.timed_out:
            return WorkerTimeoutError(
                f"{what} did not answer worker {self.worker} within {self.reply_timeout:.1f}s: it is hung or "
                "overloaded; the run stops (owners hold authoritative state). Resume with "
                "Trainer.fit(..., ckpt_path='last')."
            )
        return WorkerDiedError(
            f"{what} is no longer reachable from worker {self.worker} ({e}); the run stops, because the state "
            "it owned is lost. Resume with Trainer.fit(..., ckpt_path='last')."
        )

    def _local_failed(self) -> None:
        auth = self.authority
        if auth is not None and auth.failed is not None:
            raise auth.failed

    def _copy_in(self, local_params: Sequence[torch.Tensor], blocks: Any) -> None:
        with torch.no_grad():
            for b, _, t in blocks:
                local_params[b].copy_(t)

    def _local_copier(self, local_params: Sequence[torch.Tensor]) -> Any:
        """``out`` for the local owner: copy its blocks straight into ``local_params`` under its lock (one copy,
        no clone); the result ``()`` leaves nothing more to copy."""

        def copy_in(blocks: list[tuple[int, int, torch.Tensor]]) -> tuple[()]:
            self._copy_in(local_params, blocks)
            return ()

        return copy_in

    def _copy_reply(self, local_params: Sequence[torch.Tensor], reply: wire.Message, owner: int) -> None:
        """Copy a reply's parameter blocks into ``local_params``, each row checked (block, dtype, shape, bounds).
        An owner's replies carry the same layout every time (only the versions change): a layout checked once is
        then recognised by one comparison instead of checked row by row again."""
        layout = np.delete(reply.rows.numpy(), wire.R_VERSION, axis=1)
        size = 0 if reply.payload is None else reply.payload.numel()
        known = self._reply_layouts.get(owner)
        with torch.no_grad():
            if known is not None and known[1] == size and np.array_equal(known[0], layout):
                assert reply.payload is not None
                for b, start, nbytes in known[2]:
                    local_params[b].copy_(reply.payload[start : start + nbytes].view(self.params[b].dtype)
                                          .view(self.params[b].shape))
                return
            views = []
            for i, row in enumerate(reply.rows.tolist()):
                b = row[wire.R_BLOCK]
                if self.owner_of.get(b) != owner or wire.row_matches(row, self.params[b]) is not None \
                        or not wire.payload_fits(reply, i):
                    raise AsyncTrainingError(f"owner rank {owner} sent a malformed parameter block {b}")
                local_params[b].copy_(wire.decode_block(reply, i, self.params[b]))
                views.append((b, row[wire.R_OFFSET], self.params[b].numel() * self.params[b].element_size()))
            if views:  # (a reply without parameters, e.g. to a release, has no layout worth keeping)
                self._reply_layouts[owner] = (layout, size, views)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Mark this worker running (called once training starts in this process)."""
        self._local_failed()
        if not self._started:
            self._started = time.time()
        if self.authority is not None:
            with self.authority.cond:
                self.authority.touch(self.worker)
                self.authority.reported[self.worker, 3] = self._started

    @property
    def version(self) -> int:
        if self.authority is not None:
            self._owner_versions[self.worker] = self.authority.version
        return max(self._owner_versions.values())

    # ------------------------------------------------------------------ reads
    def begin_step(self, local_params: Sequence[torch.Tensor]) -> None:
        self._local_failed()
        for o in [o for o, posted in self._inflight.items() if posted.late]:
            self._consume(o, local_params)  # never waits on another worker (see _post_late): no ordering needed
        missing = [o for o in self.owner_ranks if self._reads[o] is None]
        if not missing:
            return  # holding reads everywhere: keep computing on the same parameters
        start = time.perf_counter()
        # ordered acquisition: this worker waits at an owner only while it holds reads at lower owners alone. So
        # first give up every read above the first missing one, highest first: those it computes on, those an
        # update deferred there keeps (it is applied first: a wait there) and those a pipelined push's reply brings
        # (settling it is a wait there). A read kept above while waiting lower down can be what a peer waiting at
        # that owner needs, and that peer what this worker waits for (three workers deadlocked so under
        # "accumulate"). Then take the missing reads in ascending order (from an in-flight reply if it brings one,
        # else by a read that waits at the owner's gate)
        first = missing[0]
        release = [o for o in self.owner_ranks
                   if o > first and (self._reads[o] is not None or o in self._inflight)]
        if release and not self._inflight and all(self._pending[o] is None for o in release):
            self._read_many(local_params, release, wire.RELEASE)
        else:
            for o in reversed(release):
                self._flush_owner(local_params, o)
        for o in self.owner_ranks:
            if o >= first and self._reads[o] is None:
                if o in self._inflight:
                    self._consume(o, local_params)
                if self._reads[o] is None:
                    self._read_many(local_params, [o], wire.READ_PAIR if self._piped.get(o) else wire.READ_WAIT)
        self._busy_seconds += time.perf_counter() - start

    def _read_many(self, local_params: Sequence[torch.Tensor], owners: list[int], mode: int) -> None:
        result: dict[int, tuple[int, Any, int]] = {}
        copy_in = self._local_copier(local_params)

        def local() -> None:
            if self.worker in owners:
                assert self.authority is not None
                result[self.worker] = self.authority.read(self.worker, mode, copy_in)

        requests = {o: self._request(o, wire.READ, ints={wire.P_FLAGS: mode}) for o in owners if o != self.worker}
        replies = self._exchange(requests, local)
        for o in owners:
            if o == self.worker:
                version, blocks, reads = result[o]
                if blocks is not None:
                    self._copy_in(local_params, blocks)
            else:
                version, reads = replies[o][wire.P_EXTRA], replies[o][wire.P_READS]
                self._copy_reply(local_params, replies[o], o)
            if mode in (wire.READ_WAIT, wire.READ_TRY, wire.READ_PAIR):
                self._reads[o] = version if version >= 0 else None
                self._spare[o] = version >= 0 and reads == 2  # READ_PAIR may grant one read only
            elif mode in (wire.RELEASE, wire.RELEASE_REFRESH):
                self._reads[o] = None  # every read this worker held there, a pipelined reply's included
                self._spare[o] = False
                self._inflight.pop(o, None)

    # ------------------------------------------------------------------ updates
    def submit(self, local_params: Sequence[torch.Tensor], samples: int) -> str:
        self._local_failed()
        start = time.perf_counter()
        if self._last_submit:
            interval = start - self._last_submit
            self._step_interval = interval if not self._step_interval else 0.8 * self._step_interval + 0.2 * interval
        self._last_submit = start
        self._submits += 1
        for o, seen in self._others_new.items():  # the others' updates seen per update of this worker's
            if self._reply_version[o] is None or not self._own_new[o]:
                continue  # no reply yet to count from, or none of this worker's updates applied since
            ratio = seen / self._own_new[o]
            old = self._others[o]
            self._others[o] = ratio if old is None else 0.9 * old + 0.1 * ratio  # over about ten updates
            self._others_new[o] = 0
            self._own_new[o] = 0
        for o in self._own_samples:  # decaying sums over about ten steps (summed gradients count in full)
            if self._reply_samples[o] is not None:
                self._others_samples[o] *= 0.9
                self._own_samples[o] = 0.9 * self._own_samples[o] + samples
        self._local_step += 1
        self._gradients += 1
        grads = [q.grad for q in local_params]
        finite = all_finite(grads)
        verdicts = self._push_all(local_params, grads, samples, finite=finite, must_apply=False)
        if not finite or "rejected_nonfinite" in verdicts.values():
            self._nonfinite_streak += 1
            if self._nonfinite_streak >= self.max_consecutive_nonfinite:
                raise NonFiniteGradientError(
                    f"worker {self.worker} produced non-finite gradients {self._nonfinite_streak} times in a row "
                    f"(last at its step {self._local_step}); none reached the optimizer state. Lower the learning "
                    "rate, clip gradients (Trainer(gradient_clip_val=...)), or check the data, or raise "
                    "max_consecutive_nonfinite."
                )
        else:
            self._nonfinite_streak = 0
        if {"applied", "sent"} & set(verdicts.values()):
            # the user's optimizer never steps (its owners' copies do): tell an LR scheduler watching it that an
            # update was made, as torch's own step wrapper would (else it warns that the scheduler stepped first)
            self.optimizer._opt_called = True  # type: ignore[attr-defined]
        self._busy_seconds += time.perf_counter() - start
        values = set(verdicts.values())
        if len(values) == 1:
            return values.pop()
        for verdict in ("rejected_nonfinite", "applied", "sent", "deferred", "rejected_stale"):
            if verdict in values:
                return verdict
        return sorted(values)[0]

    def _push_all(
        self, local_params: Sequence[torch.Tensor], grads: list[torch.Tensor | None] | None, samples: int, *,
        finite: bool, must_apply: bool, owners: Sequence[int] | None = None,
    ) -> dict[int, str]:
        """Offer this worker's update to every owner (or ``owners``): pushes run concurrently, the local owner's
        part is applied in this thread meanwhile. A non-finite gradient is sent on its own (never summed into a
        deferred update) so that its owner rejects and counts it."""
        owners = list(self.owner_ranks if owners is None else owners)
        verdicts: dict[int, str] = {}
        repipe: set[int] = set()  # owners whose pipeline (re)starts with this push's reply
        if grads is not None and finite and self._waiters:  # overlap: sent first, so they travel meanwhile
            piped = [o for o in owners if self._piped.get(o)]
            for o in piped:
                last = self._worthwhile(o) is False
                verdicts[o] = self._push_pipelined(o, local_params, grads, samples, last=last)
                if last and verdicts[o] == "sent":
                    self._piped[o] = False
            repipe = {o for o in owners if o in self._waiters and o not in piped and self._worthwhile(o)}
            owners = [o for o in owners if o not in piped]
            if self.bound.policy == "accumulate" and not must_apply:
                # the last pipelined push (overlap just stopped) still waits for its admission: sum this gradient
                # into the next push rather than wait for it here, holding reads at the other owners (a wait out of
                # order: it deadlocked three workers)
                for o in [o for o in owners if o in self._inflight and not self._inflight[o].done.is_set()]:
                    verdicts[o] = self._defer_behind_inflight(o, grads, samples)
                    owners.remove(o)
        offers: dict[int, tuple[int, list[tuple[int, torch.Tensor]], int]] = {}
        checked: dict[int, bool] = {}
        for o in owners:
            if self._reads[o] is None:
                raise AsyncTrainingError(f"worker {self.worker}: submit() without a read at owner rank {o}; call "
                                         "begin_step() first")
            if grads is None or not finite:
                pend = self._pending[o]
                if grads is not None:  # non-finite: the raw gradient, alone
                    blocks = [(b, grads[b]) for b in self.ownership[o] if grads[b] is not None]
                    offers[o] = (self._reads[o], blocks, samples)  # type: ignore[assignment]
                    continue
                if pend is None:
                    continue
                n = self._pending_count[o]  # the mean of the summed gradients, as when offered at a step
                blocks = [(b, g.div(n) if n > 1 else g) for b, g in zip(self.ownership[o], pend) if g is not None]
            else:
                blocks = self._add_pending(o, grads, samples)
                checked[o] = self._pending_count[o] == 1  # the raw gradient submit() found finite
            offers[o] = (self._reads[o], blocks, self._pending_samples[o] if finite else samples)  # type: ignore
        if not offers:
            return verdicts
        flags = wire.F_MUST_APPLY if must_apply else wire.F_WANT_READ
        if not finite:
            flags |= wire.F_NONFINITE
        results: dict[int, tuple[str, int, Any]] = {}
        copy_in = self._local_copier(local_params)

        def local() -> None:
            if self.worker in offers:
                assert self.authority is not None
                base, blocks, n = offers[self.worker]
                self._seq += 1
                results[self.worker] = self.authority.push(self.worker, self._seq, base, blocks, n, flags, None,
                                                           copy_in, checked.get(self.worker, False))

        requests = {}
        late = grads is not None and finite and not must_apply  # a step's update: its replies may come late
        for o, (base, blocks, n) in offers.items():
            if o == self.worker:
                continue
            pair = wire.F_WANT_PAIR if o in repipe and flags & wire.F_WANT_READ else 0
            parts = self._request(
                o, wire.PUSH, blocks=[(b, base, g) for b, g in blocks],
                ints={wire.P_VERSION: base, wire.P_SAMPLES: n, wire.P_FLAGS: flags | pair,
                      wire.P_EXTRA: self._overlap_deferred[o]},  # gradients summed while a pipelined push flew
            )
            self._overlap_deferred[o] = 0
            if late and o in self._waiters:
                self._settle(o)  # the last pipelined push's reply comes first on the channel
                if o not in self._inflight:
                    self._post_late(o, parts, base, repipe=bool(pair))
                    verdicts[o] = "sent"
                    continue
            requests[o] = parts
        replies = self._exchange(requests, local)
        for o in offers:
            if o in self._inflight and self._inflight[o].late:
                continue  # its verdict comes with the reply, at the next begin_step
            if o == self.worker:
                verdict, version, blocks, _ = results[o]
                if blocks is not None:
                    self._copy_in(local_params, blocks)
            else:
                reply = replies[o]
                verdict = _CODE_V.get(reply[wire.P_FLAGS], "rejected_schema")
                version = reply[wire.P_EXTRA]
                if version >= 0:
                    self._copy_reply(local_params, reply, o)
            verdicts[o] = verdict
            if verdict == "deferred" and o not in self._owned_pending and self._pending[o] is not None:
                # kept past this step: own the buffers now (submit may report another owner's verdict, and the caller
                # may then zero its gradients in place)
                self._pending[o] = [None if g is None else g.detach().clone() for g in self._pending[o]]
                self._owned_pending.add(o)
            if verdict == "deferred" or verdict == "rejected_nonfinite" or verdict == "rejected_duplicate":
                continue  # the read stays held (and a deferred update stays pending)
            self._clear_pending(o)
            self._reads[o] = version if version >= 0 else None
            if o in repipe and o != self.worker and version >= 0 and replies[o][wire.P_READS] == 2:
                # granted a pair: overlap again from the next step
                self._spare[o] = True
                self._piped[o] = True
        return verdicts

    def _add_pending(
        self, o: int, grads: list[torch.Tensor | None], samples: int, own: bool = False
    ) -> list[tuple[int, torch.Tensor]]:
        """Add this gradient's blocks of owner ``o`` to its pending update; return the blocks to offer (mean).
        ``own``: copy the gradients now (the caller is told ``"deferred"`` and may zero them)."""
        mine = [grads[b] for b in self.ownership[o]]
        pend = self._pending[o]
        if pend is None:
            self._pending[o] = [None if g is None else g.detach().clone() for g in mine] if own else list(mine)
            if own:
                self._owned_pending.add(o)
        else:
            if self._pending_count[o] == 1 and o not in self._owned_pending:  # first deferral: own the buffers
                pend = [None if g is None else g.detach().clone() for g in pend]
                self._pending[o] = pend
                self._owned_pending.add(o)
            for i, g in enumerate(mine):
                if g is None:
                    continue
                if pend[i] is None:
                    pend[i] = g.detach().clone()
                else:
                    pend[i].add_(g)  # type: ignore[union-attr]
        self._pending_count[o] += 1
        self._pending_samples[o] += samples
        count = self._pending_count[o]
        out = []
        for b, g in zip(self.ownership[o], self._pending[o] or ()):
            if g is not None:
                out.append((b, g.div(count) if count > 1 else g))
        return out

    def _clear_pending(self, o: int) -> None:
        self._owned_pending.discard(o)
        self._pending[o] = None
        self._pending_count[o] = 0
        self._pending_samples[o] = 0

    def _flush_owner(self, local_params: Sequence[torch.Tensor], o: int) -> None:
        """Settle the pipelined push to owner ``o``, apply the update deferred there (waiting for its admission),
        and release every read this worker holds there."""
        self._settle(o)
        if self._pending[o] is not None:
            self._push_all(local_params, None, 0, finite=True, must_apply=True, owners=[o])
        self._read_many(local_params, [o], wire.RELEASE)

    def end_epoch(self, local_params: Sequence[torch.Tensor]) -> None:
        """Apply what is deferred (waiting for admission), release every read, refresh ``local_params``."""
        self._local_failed()
        start = time.perf_counter()
        if self._inflight or any(self._pending[o] is not None for o in self.owner_ranks):
            # owner by owner, highest first: each wait then happens while this worker holds reads at lower owners
            # only (as in begin_step)
            for o in reversed(self.owner_ranks):
                self._flush_owner(local_params, o)
        self._read_many(local_params, list(self.owner_ranks), wire.RELEASE_REFRESH)
        self._busy_seconds += time.perf_counter() - start
        # the time to the next epoch's first submit (validation, a new data loader) is no step: counted, it made
        # the average step several times longer on a short epoch, and the overlap rule wrong (see _worthwhile)
        self._last_submit = 0.0

    def refresh(self, local_params: Sequence[torch.Tensor]) -> None:
        """Copy the current authoritative parameters into ``local_params`` without taking a read."""
        self._local_failed()
        self._read_many(local_params, list(self.owner_ranks), wire.REFRESH)

    def finish(self, local_params: Sequence[torch.Tensor]) -> None:
        """Flush, release the reads, tell every owner this worker is done (end of fit in this process)."""
        if self._finished:
            return
        self.end_epoch(local_params)
        self._say_bye()
        if self._store is not None:
            self._store.add("finished", 1)

    def _say_bye(self) -> None:
        self._finished = True
        if self.authority is not None:
            self.authority.bye(self.worker)
        requests = {o: self._request(o, wire.BYE) for o in self._client}
        if requests:
            self._exchange(requests)

    def wait_for_workers(self, timeout: float | None = None) -> bool:
        """Bounded wait until every worker called :meth:`finish` (or was evicted/died); ``True`` if all did."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            done = self._store.add("finished", 0) if self._store is not None else int(self._finished)
            gone = 0
            if self.authority is not None:
                with self.authority.cond:
                    gone = sum(1 for s in self.authority.status if s in (_EVICTED, _DEAD))
            if done + gone >= self.num_workers:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    # ------------------------------------------------------------------ failed workers
    def _mark_gone(self, w: int) -> None:
        """Record in the store that worker ``w`` is dead or evicted (``on_worker_failure="continue"``), so that the
        survivors' collectives stop waiting for it (see :mod:`lightning_async._live_collectives`)."""
        self._gone.add(w)
        if self._store is not None:
            with contextlib.suppress(Exception):  # the store is rank 0's: if it is gone, so is the run
                self._store.set(f"gone/{w}", str(self.worker))

    def is_gone(self, rank: int) -> bool:
        """Whether an owner declared ``rank`` dead or evicted (``on_worker_failure="continue"``)."""
        if rank in self._gone:
            return True
        if self._store is not None and self._store.check([f"gone/{rank}"]):
            self._gone.add(rank)
            return True
        return False

    # ------------------------------------------------------------------ sampler support
    def next_batch(self, epoch: int, num_batches: int) -> int | None:
        """Hand out the next unclaimed batch index of ``epoch`` (each once over all workers), or ``None``.

        The cursor lives in the store (a round trip to rank 0's TCPStore). A worker claims a few consecutive batches
        at once (at most 4, and few enough that every worker gets at least 8 claims per epoch, so the balance between
        fast and slow workers stays fine-grained), and claims its next ones in the background while the current
        ones train: the round trip leaves the step's critical path. A worker that finds the others claiming much
        faster than it does (more than 1.5 batches each per batch of its own) and every worker near the end of the
        epoch claim one batch at a time and nothing ahead: a slow worker holding batches would make the others wait
        for it at the epoch's end. Claims are made ahead only within an epoch, and an epoch's last claim finds the
        cursor past the end, so no batch is claimed and left unused (unless fit stops mid-epoch)."""
        self._cursor_epochs.add(epoch)
        if self._store is None:
            index = self._local_cursor.get(epoch, 0)
            self._local_cursor[epoch] = index + 1
            return index if index < num_batches else None
        if self._claimed_epoch != epoch:
            self._claimed, self._claimed_epoch, self._last_claimed = [], epoch, -1
        chunk = max(1, min(4, num_batches // (8 * self.num_workers)))
        steady = not self._slow and self._last_claimed + 2 * self.num_workers * chunk < num_batches
        if not self._claimed:
            ahead, self._claim_ahead = self._claim_ahead, None
            if ahead is not None and ahead[0] == epoch:
                claimed = ahead[1].result(timeout=self.timeout)
            else:
                claimed = self._claim(epoch, chunk if steady else 1)
            if self._last_claimed >= 0:  # the others' claims since this worker's previous claim, per batch of its own
                others = claimed[0] - self._last_claimed - 1
                self._slow = others > 1.5 * (self.num_workers - 1) * self._last_chunk
            self._claimed, self._last_claimed, self._last_chunk = claimed, claimed[-1], len(claimed)
        index, self._claimed = self._claimed[0], self._claimed[1:]
        steady = not self._slow and self._last_claimed + 2 * self.num_workers * chunk < num_batches
        if not self._claimed and steady:
            self._claim_ahead = (epoch, self._claimer.submit(self._claim, epoch, chunk))
        return index if index < num_batches else None

    def _claim(self, epoch: int, n: int) -> list[int]:
        assert self._store is not None
        end = int(self._store.add(f"cursor/{epoch}", n))
        return list(range(end - n, end))

    def _cursor(self, epoch: int) -> int:
        if self._store is None:
            return self._local_cursor.get(epoch, 0)
        return int(self._store.add(f"cursor/{epoch}", 0))

    def _set_cursor(self, epoch: int, value: int) -> None:
        if self._store is None:
            self._local_cursor[epoch] = value
        else:
            current = int(self._store.add(f"cursor/{epoch}", 0))
            self._store.add(f"cursor/{epoch}", value - current)
        self._cursor_epochs.add(epoch)

    # ------------------------------------------------------------------ snapshot / restore
    def _gather(self, kind: int, meta: dict[int, dict[str, Any]] | None = None) -> dict[int, wire.Message | Any]:
        """Ask every owner (the local one directly) for its snapshot or telemetry."""
        out: dict[int, Any] = {}

        def local() -> None:
            auth = self.authority
            if auth is None:
                return
            if kind == wire.SNAPSHOT:
                out[self.worker] = auth.snapshot()
            elif kind == wire.TELEMETRY:
                out[self.worker] = auth.telemetry()
            elif kind == wire.LOAD:
                auth.load((meta or {})[self.worker])

        requests = {o: self._request(o, kind, meta=(meta or {}).get(o)) for o in self._client}
        replies = self._exchange(requests, local)
        for o, reply in replies.items():
            if kind == wire.SNAPSHOT:
                tensors = [(int(reply.rows[i, wire.R_BLOCK]), int(reply.rows[i, wire.R_VERSION]),
                            _decode_any(reply, i)) for i in range(reply.rows.shape[0])]
                out[o] = (reply.meta, tensors)
            elif kind == wire.TELEMETRY:
                out[o] = reply.meta
        return out

    def snapshot(self) -> dict[str, Any]:
        """Gather, on the calling rank, every owner's parameters, optimizer state, versions and counters.

        Each owner's part is taken under its lock, at one version of its block group (owners are independent
        authorities, so their parts need no common instant). Only the calling rank takes part (the owners' server
        threads answer), so it may be called from rank 0 alone.
        """
        self._local_failed()
        parts = self._gather(wire.SNAPSHOT)
        params: list[torch.Tensor | None] = [None] * len(self.params)
        index = _optimizer_index(self.optimizer, self.params)
        state: dict[int, dict[str, Any]] = {}
        owners_meta = []
        block_versions = [0] * len(self.params)
        for o in self.owner_ranks:
            meta, tensors = parts[o]
            for b, v, t in tensors[: len(meta["blocks"])]:
                params[b] = t.clone()
                block_versions[b] = v
            for b, key, row in meta["state"]:
                state.setdefault(index[b], {})[key] = tensors[row][2].clone()
            for b, key, value in meta["scalars"]:
                state.setdefault(index[b], {})[key] = value
            owners_meta.append({k: meta[k] for k in ("rank", "blocks", "version", "block_versions", "counts",
                                                     "hist")})
        user_state = self.optimizer.state_dict()
        optimizer_state = {"state": dict(sorted(state.items())), "param_groups": user_state["param_groups"]}
        tele = self._combine([{**m, "reported": parts[m["rank"]][0]["reported"]} for m in owners_meta])
        slots = [0, 0, 0, 0]
        for epoch in sorted(self._cursor_epochs)[-2:]:
            slots[2 * (epoch % 2)] = epoch + 1
            slots[2 * (epoch % 2) + 1] = self._cursor(epoch)
        engine_state = {
            "kind": "parameter_server",
            "version": max(m["version"] for m in owners_meta),
            "block_versions": block_versions,
            "batch_cursor": slots,
            "counters": tele.counters,
            "staleness_histogram": tele.staleness_histogram,
            "num_workers": self.num_workers,
            "max_staleness": self.bound.max_staleness,
            "bound_policy": self.bound.policy,
            "owners": owners_meta,
        }
        return {"params": params, "optimizer": optimizer_state, "engine": engine_state}

    def load_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Restore versions, counters and the batch cursor on every owner (call on one rank, e.g. rank 0).

        Parameters and optimizer state are restored by :meth:`adopt_optimizer_state` on every rank. A snapshot
        of another ownership layout (or of the shared-memory engine) restores each owner's version as the largest
        saved version of its blocks and puts the saved counters on the first owner.
        """
        self._local_failed()
        engine = snapshot["engine"] if isinstance(snapshot.get("engine"), dict) else snapshot
        saved = {int(m["rank"]): m for m in engine.get("owners", [])}
        same = all(o in saved and list(saved[o]["blocks"]) == self.ownership[o] for o in self.owner_ranks) and \
            len(saved) == len(self.owner_ranks) and int(engine.get("num_workers", -1)) == self.num_workers
        block_versions = list(engine.get("block_versions") or [])
        if len(block_versions) != len(self.params):
            block_versions = [int(engine.get("version", 0))] * len(self.params)
        metas: dict[int, dict[str, Any]] = {}
        for i, o in enumerate(self.owner_ranks):
            if same:
                m = saved[o]
                metas[o] = {k: m[k] for k in ("version", "block_versions", "counts", "hist")}
                continue
            bv = [int(block_versions[b]) for b in self.ownership[o]]
            meta: dict[str, Any] = {"version": max(bv, default=int(engine.get("version", 0))), "block_versions": bv}
            if i == 0:
                counts = np.zeros((self.num_workers, len(OWNER_COUNTERS)), dtype=np.int64)
                for name, value in engine.get("counters", {}).items():
                    if name in OWNER_COUNTERS:
                        counts[0, OWNER_COUNTERS.index(name)] = int(value)
                meta["counts"] = counts.tolist()
                meta["hist"] = [list(engine.get("staleness_histogram", []))]
            metas[o] = meta
        self._gather(wire.LOAD, metas)
        for o in self.owner_ranks:
            self._owner_versions[o] = int(metas[o]["version"])
        cursor = engine.get("batch_cursor")
        if cursor is not None and len(cursor) == 4:
            for slot in (0, 2):
                if int(cursor[slot]) > 0:
                    self._set_cursor(int(cursor[slot]) - 1, int(cursor[slot + 1]))

    def adopt_optimizer_state(self, is_creator: bool = False) -> None:
        """After ``optimizer.load_state_dict`` and the model's parameters were loaded on every rank: each owner
        takes its blocks' parameters and optimizer state from this rank's objects (call on every rank; no
        communication). The user's optimizer then drops its copy of the state: the owners hold it."""
        del is_creator  # every owner adopts its own blocks
        if self.authority is not None:
            self.authority.adopt(self)
        self.optimizer.state.clear()

    def attach_state(self) -> None:
        """After another rank ran :meth:`load_snapshot`: learn every owner's restored version (one round trip per
        owner), so that :attr:`version` (global progress, e.g. for an LR schedule) is right before the first step.
        The state itself was already placed on its owners by :meth:`adopt_optimizer_state`."""
        self._local_failed()
        parts = self._gather(wire.TELEMETRY)
        for o in self.owner_ranks:
            if o in parts:
                self._owner_versions[o] = int(parts[o]["version"])

    # ------------------------------------------------------------------ telemetry
    def _combine(self, parts: list[dict[str, Any]]) -> Telemetry:
        p = self.num_workers
        counts = np.zeros((p, len(OWNER_COUNTERS)), dtype=np.int64)
        hist = np.zeros(self._bins, dtype=np.int64)
        reported = np.zeros((p, len(_REPORTED)), dtype=np.float64)
        samples_col = OWNER_COUNTERS.index("samples")
        for part in parts:
            c = np.asarray(part["counts"], dtype=np.int64).reshape(p, len(OWNER_COUNTERS))
            counts += c
            h = np.asarray(part["hist"], dtype=np.int64).sum(axis=0) if len(part["hist"]) else np.zeros(0)
            n = min(len(h), self._bins)
            hist[:n] += h[:n]
            r = np.asarray(part.get("reported", np.zeros_like(reported)), dtype=np.float64).reshape(reported.shape)
            newer = r[:, 0] >= reported[:, 0]
            reported[newer] = r[newer]
        if self._started:
            reported[self.worker] = [self._gradients, self._wait_seconds, self._busy_seconds, self._started,
                                     time.time()]
        del samples_col
        names = list(COUNTERS) + [c for c in OWNER_COUNTERS if c not in COUNTERS]
        counters = {}
        for name in names:
            if name == "gradients":
                counters[name] = int(reported[:, 0].sum())
            elif name in OWNER_COUNTERS:
                counters[name] = int(counts[:, OWNER_COUNTERS.index(name)].sum())
        counters["rejected"] = sum(counters[r] for r in REJECTIONS)
        per_worker = []
        now = time.time()
        for w in range(p):
            row = {name: float(counts[w, i]) for i, name in enumerate(OWNER_COUNTERS)}
            row["gradients"] = float(reported[w, 0])
            started = reported[w, 3]
            elapsed = max(now - started, 1e-9) if started else 0.0
            wait = float(reported[w, 1])
            row["samples_per_s"] = row["samples"] / elapsed if elapsed else 0.0
            row["wait_seconds"] = wait
            row["wait_fraction"] = wait / elapsed if elapsed else 0.0
            row["heartbeat"] = float(reported[w, 4])
            per_worker.append(row)
        return Telemetry(
            counters=counters,
            per_worker=per_worker,
            staleness_histogram=hist.tolist(),
            max_staleness=self.bound.max_staleness,
            bound_policy=self.bound.policy,
            version=max(int(part.get("version", 0)) for part in parts) if parts else 0,
            extra={"engine": "parameter_server", "owners": list(self.owner_ranks),
                   "ownership": {str(o): b for o, b in self.ownership.items()}},
        )

    def telemetry(self) -> Telemetry:
        """Counters and staleness histogram summed over owners (asks every owner; any rank may call it).

        Counters: ``received``, ``applied``, ``rejected_stale``, ``rejected_nonfinite``, ``rejected_schema``,
        ``rejected_duplicate``, ``rejected_version`` (``rejected`` is their sum), ``deferred``, ``samples``
        (counted by the first owner), ``lost`` (in-flight updates of evicted or dead workers), ``overlapped``
        (applied updates that were pipelined, see ``overlap``), ``gradients``.
        """
        self._local_failed()
        parts = self._gather(wire.TELEMETRY)
        return self._combine([parts[o] for o in self.owner_ranks])

    def describe_peers(self) -> str:
        """One line per other worker as this rank's owner sees it (status, last message, read held)."""
        auth = self.authority
        if auth is None:
            return f"(rank {self.worker} owns no blocks; ask an owner rank: {self.owner_ranks})"
        now, lines = time.time(), []
        with auth.cond:
            for w in range(self.num_workers):
                if w == self.worker:
                    continue
                read = f"holds read version {_versions(auth.reads[w])}" if w in auth.reads else "holds no read"
                lines.append(f"worker {w}: {_STATUS[auth.status[w]]}, last message {now - auth.last_seen[w]:.1f}s "
                             f"ago, {read}")
        return "; ".join(lines)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Say goodbye if :meth:`finish` was not called, release the owners' server threads serving this worker,
        and serve the other workers until they closed too (bounded: a client silent for ``hang_timeout +
        reply_timeout`` is abandoned). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._finished:
            with contextlib.suppress(AsyncTrainingError):
                self._say_bye()
        for o in self._client:
            with contextlib.suppress(AsyncTrainingError):
                self._exchange({o: self._request(o, wire.CLOSE)})
        self._claimer.stop()
        self._stop_waiters(time.monotonic() + self.timeout)
        auth = self.authority
        limit = self.hang_timeout + self.reply_timeout
        for thread, c in zip(self._threads, self._server):
            while thread.is_alive():
                thread.join(timeout=0.05)
                if auth is not None and time.time() - auth.last_seen[c] > limit:
                    break

    def abort(self, reason: str) -> None:
        """Stop at once after a failure of this process (no goodbye, no serving peers until they close).

        The owner's blocks are marked failed, so a peer's request still being served answers with a
        :class:`WorkerDiedError` naming this rank and ``reason``; once the process exits, its connections close and
        every peer's next exchange with it fails naming it. Then waits (at most ``min(timeout, 10)`` seconds) for
        the server threads to end: a thread serving a dead peer ends at once, one serving a live peer when that peer,
        told of the failure at its next exchange, goes away. A server thread still inside a gloo wait when the
        interpreter exits can abort the process (SIGABRT, "terminate called without an active exception") instead
        of letting it exit with its error. Idempotent; :meth:`close` afterwards does nothing."""
        if self._closed:
            return
        self._closed = True
        auth = self.authority
        if auth is not None:
            with auth.cond:
                if auth.failed is None:
                    auth.failed = WorkerDiedError(
                        f"owner rank {self.worker} stopped ({reason}); the run stops, because the state it owned is "
                        "lost. Resume with Trainer.fit(..., ckpt_path='last')."
                    )
                auth.cond.notify_all()
        deadline = time.monotonic() + min(self.timeout, 10.0)
        self._claimer.stop()
        self._stop_waiters(deadline)
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))

    def _stop_waiters(self, deadline: float) -> None:
        for waiter in self._waiters.values():
            waiter.stop()
        for thread in [self._claimer.thread, *(w.thread for w in self._waiters.values())]:
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))

    # ------------------------------------------------------------------ fault injection (tests)
    def _debug_resend(self, owner: int) -> str:
        """Send the last PUSH to remote ``owner`` again, byte for byte (a duplicate); return its verdict."""
        self._settle(owner)  # a pipelined push in flight becomes the last one
        reply = self._exchange({owner: self._last_push[owner]})[owner]
        return _CODE_V.get(reply[wire.P_FLAGS], "?")

    def resend_last_push(self) -> dict[int, str]:
        """Fault injection: send this worker's last update to every remote owner again, byte for byte. Returns
        ``{owner rank: verdict}``; a correct owner answers ``"rejected_duplicate"`` and counts it."""
        self._local_failed()
        verdicts = {}
        for owner in self._client:
            self._settle(owner)
            if owner in self._last_push:
                verdicts[owner] = self._debug_resend(owner)
        return verdicts

    def _debug_push(self, owner: int, blocks: list[tuple[int, torch.Tensor]]) -> str:
        """Push arbitrary ``(block, tensor)`` pairs to remote ``owner`` on the read held there; return the
        verdict (the worker's bookkeeping follows it as for a real push)."""
        base = self._reads[owner]
        assert base is not None, "hold a read at the owner first"
        parts = self._request(owner, wire.PUSH, blocks=[(b, base, t) for b, t in blocks],
                              ints={wire.P_VERSION: base, wire.P_SAMPLES: 0, wire.P_FLAGS: 0})
        verdict = _CODE_V.get(self._exchange({owner: parts})[owner][wire.P_FLAGS], "?")
        if verdict not in ("deferred", "rejected_nonfinite", "rejected_duplicate"):
            self._clear_pending(owner)
            if self._spare[owner]:  # the owner released one of the pair: the other read of that version is held
                self._spare[owner] = False
            else:
                self._reads[owner] = None
        return verdict

    def threads_alive(self) -> list[str]:
        """Names of this engine's threads (servers, reply waiters) still running (for teardown checks)."""
        threads = [*self._threads, *(w.thread for w in self._waiters.values()), self._claimer.thread]
        return [t.name for t in threads if t.is_alive()]


# ---------------------------------------------------------------------- helpers
def _versions(reads: list[int]) -> str:
    return str(reads[0]) if len(reads) == 1 else str(reads)


def _error_reply(error: BaseException) -> list[torch.Tensor]:
    return wire.pack(wire.RESPONSE, -1, 0, status=wire.ERROR,
                     meta={"error": type(error).__name__, "message": str(error)})


def _decode_any(message: wire.Message, i: int) -> torch.Tensor:
    row = message.rows[i]
    dtype = wire.CODE_DTYPE[int(row[wire.R_DTYPE])]
    ndim = int(row[wire.R_NDIM])
    shape = tuple(int(v) for v in row[wire.R_DIMS : wire.R_DIMS + ndim])
    if not wire.payload_fits(message, i) or math.prod(shape) != int(row[wire.R_NUMEL]):
        raise AsyncTrainingError("malformed snapshot block")
    return message.block_bytes(i).view(dtype).view(shape).clone()


def _padded(n: int) -> int:
    return (n + 15) // 16 * 16


def _optimizer_index(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[int]:
    """For each of ``params``, its index in ``optimizer.state_dict()`` (the order of the param groups)."""
    order: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            order.setdefault(id(p), len(order))
    missing = [i for i, p in enumerate(params) if id(p) not in order]
    if missing:
        raise ValueError(f"parameters {missing} are not in the optimizer's param groups")
    return [order[id(p)] for p in params]


def _restricted_optimizer(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], shadows: dict[int, torch.nn.Parameter]
) -> tuple[torch.optim.Optimizer, list[int]]:
    """A shallow copy of ``optimizer`` whose param groups hold only ``shadows`` (owned blocks) and whose state is
    its own. Returns it and, for each of its groups, the index of the user's group it mirrors."""
    block_of = {id(p): i for i, p in enumerate(params)}
    restricted = object.__new__(type(optimizer))
    # instance attributes that override a method are wrappers bound to the user's object (an LR scheduler patches
    # ``optimizer.step`` with one that calls the *user's* step through a weakref): copying them would make every
    # owner step the user's optimizer, i.e. the worker's live local parameters, instead of the owned blocks
    cls = type(optimizer)
    restricted.__dict__.update(
        {k: v for k, v in optimizer.__dict__.items() if not (callable(v) and callable(getattr(cls, k, None)))}
    )
    restricted.state = defaultdict(dict)
    groups, group_of = [], []
    for gi, group in enumerate(optimizer.param_groups):
        owned = [shadows[block_of[id(p)]] for p in group["params"] if block_of.get(id(p)) in shadows]
        if owned:
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": owned})
            group_of.append(gi)
    restricted.param_groups = groups
    return restricted, group_of


__all__ = ["ON_WORKER_FAILURE", "OWNER_COUNTERS", "ParameterServerEngine", "assign_blocks"]
