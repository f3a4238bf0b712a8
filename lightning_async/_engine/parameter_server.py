"""The ``parameter_server`` engine: any number of nodes, blocks owned by ranks, c10d point-to-point over gloo.

The design (ownership, versions and admission, the wire, overlap, failures, checks, network exposure) is in
``docs/parameter_server.md``. The engine is assembled from components, each built with explicit arguments:
:class:`~.ps_owner._Authority` (an owner's blocks: versions, admission, apply; its settings in an
:class:`~.ps_owner.OwnerContext`), :class:`~.ps_serving.OwnerServer` (the threads serving an owner's clients),
:class:`~.ps_client.PushPullClient` (this worker's reads and pushes, pipelining and pending updates), with
:class:`~.ps_overlap.OverlapRule` (whether pipelining pays) and :class:`~.ps_wire.BlockCopier`, and
:class:`~.ps_serving.OwnersView` (snapshots, restores and telemetry gathered from every owner). Block placement and the
pair groups are in :mod:`.ps_placement`, the wire in :mod:`.ps_wire`. This module holds the life cycle: set-up, the
batch cursor, stop requests and eviction, shutdown, and the :class:`~.base.Engine` interface over the components.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from lightning_async._engine import ps_wire as wire
from lightning_async._engine.base import Engine, Telemetry
from lightning_async._engine.bound import StalenessBound
from lightning_async._engine.ps_client import PushPullClient
from lightning_async._engine.ps_common import (
    _DEAD,
    _EVICTED,
    _UNBOUNDED_BINS,
    ON_WORKER_FAILURE,
    OWNER_COUNTERS,
    GuardedStore,
    _padded,
)
from lightning_async._engine.ps_owner import OwnerContext, _Authority
from lightning_async._engine.ps_placement import (
    assign_blocks,
    pair_groups,
)
from lightning_async._engine.ps_serving import OwnerServer, OwnersView, check_schema
from lightning_async._engine.ps_threads import (
    _Background,
)
from lightning_async.errors import AsyncTrainingError, WorkerDiedError

__all__ = ["ON_WORKER_FAILURE", "OWNER_COUNTERS", "ParameterServerEngine", "assign_blocks", "pair_groups"]


#: seconds between two looks of a pure worker, under ``on_worker_failure="continue"``, for its own eviction
EVICTION_POLL_SECONDS = 1.0
#: seconds between two looks in the store for another worker's stop request (0: at every step, one store round
#: trip; a worker that finishes its epoch before it sees the request would validate once more than the others)
STOP_CHECK_SECONDS = 0.0
#: exit code of a pure worker that ends itself after the owners dropped it
EVICTED_EXIT_CODE = 3


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
            ``bound_policy="wait"``. ``True``: overlap from the first step, stopping per owner where the rule finds
            it does not pay. Default (``None``): the same rule, starting without overlap (turned on per owner once
            the measured round trip is over a third of the step), unless the policy is ``"wait"`` or
            ``max_staleness`` is below 2 (then never).
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
        overlap_from_start = overlap is True
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
        self._store = (
            GuardedStore(dist.PrefixStore(namespace.rstrip("/") + "/", store), worker) if store is not None else None
        )
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
        self._eviction_stop = threading.Event()
        self._stop_seen = False
        self._next_stop_check = 0.0
        self._eviction_watch = threading.Thread(
            target=self._watch_for_eviction, name="lightning_async-eviction-watch", daemon=True
        )
        if self._store is not None:
            check_schema(self._store, worker, self.params, self.timeout)
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
        self.authority = _Authority(
            OwnerContext(
                rank=worker, num_workers=num_workers, owner_ranks=owners, bound=self.bound, timeout=self.timeout,
                hang_timeout=self.hang_timeout, on_worker_failure=on_worker_failure, histogram_bins=self._bins,
                mark_gone=self._mark_gone, own_wait=self._count_wait, interrupt=self._interrupt_own_wait,
            ),
            self.ownership[worker], self.params, optimizer,
        ) if worker in owners else None
        self.client = PushPullClient(
            rank=worker, num_workers=num_workers, params=self.params, optimizer=optimizer, ownership=self.ownership,
            channels=self._client, authority=self.authority, bound=self.bound, reply_timeout=self.reply_timeout,
            max_consecutive_nonfinite=max_consecutive_nonfinite, overlap=overlap,
            overlap_from_start=overlap_from_start,
        )
        self._started = 0.0
        self._finished = False
        self._closed = False
        self.server = (
            OwnerServer(self.authority, worker, self._server, self.hang_timeout, self.reply_timeout)
            if self.authority is not None else None
        )
        self.owners = OwnersView(
            client=self.client, authority=self.authority, rank=worker, num_workers=num_workers, params=self.params,
            optimizer=optimizer, ownership=self.ownership, bound=self.bound, histogram_bins=self._bins,
            batch_cursor=self._cursor_slots, restore_cursor=self._restore_cursor, started=lambda: self._started,
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Mark this worker running (called once training starts in this process)."""
        self.client.local_failed()
        if not self._started:
            self._started = time.time()
        if self.authority is not None:
            with self.authority.cond:
                self.authority.touch(self.worker)
                self.authority.reported[self.worker, 3] = self._started
        if self.on_worker_failure == "continue" and self.authority is None and self._store is not None:
            self._eviction_watch.start()

    def _watch_for_eviction(self) -> None:
        """A pure worker the owners dropped as hung (``on_worker_failure="continue"``) ends its own process: the
        run goes on without it, and a real deadlock would otherwise keep it alive, holding its memory and device,
        forever. A daemon thread, so that a hang of the main thread in Python or in a blocking call does not stop
        it."""
        assert self._store is not None
        key = f"gone/{self.worker}"
        while not self._eviction_stop.wait(EVICTION_POLL_SECONDS):
            try:
                if not self._store.check([key]):
                    continue
                by = self._store.get(key).decode()
            except Exception:  # noqa: BLE001 - the store is gone: so is the run, and the main thread will say so
                return
            if self._eviction_stop.is_set():
                return
            print(
                f"lightning_async: worker {self.worker} was dropped from the run by owner rank {by} (it stopped "
                "answering within timeout); the others carry on, and this process exits.",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EVICTED_EXIT_CODE)

    def request_stop(self) -> None:
        """Ask every worker to stop training at the end of its current step (one worker's stopping condition)."""
        self._stop_seen = True
        if self._store is not None:
            self._store.set("stop", "1")

    def stop_requested(self) -> bool:
        """Whether some worker asked the run to stop (a look in the store, see :data:`STOP_CHECK_SECONDS`)."""
        if self._stop_seen or self._store is None:
            return self._stop_seen
        now = time.monotonic()
        if now >= self._next_stop_check:
            self._next_stop_check = now + STOP_CHECK_SECONDS
            self._stop_seen = bool(self._store.check(["stop"]))
        return self._stop_seen

    def _stop_eviction_watch(self) -> None:
        self._eviction_stop.set()

    @property
    def version(self) -> int:
        versions = self.client.owner_versions
        if self.authority is not None:
            versions[self.worker] = self.authority.version
        return max(versions.values())

    # ------------------------------------------------------------------ reads and updates
    def begin_step(self, local_params: Sequence[torch.Tensor]) -> None:
        self.client.begin_step(local_params)

    def submit(self, local_params: Sequence[torch.Tensor], samples: int) -> str:
        return self.client.submit(local_params, samples)

    def end_epoch(self, local_params: Sequence[torch.Tensor]) -> None:
        """Apply what is deferred (waiting for admission), release every read, refresh ``local_params``."""
        self.client.end_epoch(local_params)

    def refresh(self, local_params: Sequence[torch.Tensor]) -> None:
        """Copy the current authoritative parameters into ``local_params`` without taking a read."""
        self.client.refresh(local_params)

    def finish(self, local_params: Sequence[torch.Tensor]) -> None:
        """Flush, release the reads, tell every owner this worker is done (end of fit in this process)."""
        if self._finished:
            return
        self.end_epoch(local_params)
        self._stop_eviction_watch()  # done: from now on a closed connection is this worker leaving, not a hang
        self._say_bye()
        if self._store is not None:
            self._store.add("finished", 1)

    def _say_bye(self) -> None:
        self._finished = True
        self.client.say_bye()

    def wait_for_workers(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> bool:
        """Bounded wait until every worker called :meth:`finish` (or was evicted/died); ``True`` if all did.
        ``raise_on_failure``: raise the failure of this rank's owner side (a peer's failure reaches this worker as
        its owner's error at its next exchange, or as evicted or dead here)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if raise_on_failure:
                self.client.local_failed()
            done = self._store.add("finished", 0) if self._store is not None else int(self._finished)
            gone = 0
            if self.authority is not None:
                with self.authority.cond:
                    gone = sum(1 for s in self.authority.status if s in (_EVICTED, _DEAD))
            if done + gone >= self.num_workers:
                return True
            if time.monotonic() > deadline:
                return False
            if self.interrupt is not None:
                self.interrupt()
            time.sleep(0.01)

    def _count_wait(self, seconds: float) -> None:
        self.client.wait_seconds += seconds

    def _interrupt_own_wait(self) -> None:
        if self.interrupt is not None:
            self.interrupt()

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

    def _cursor_slots(self) -> list[int]:
        """The batch cursor as four slots (``epoch + 1, index`` of the last two epochs claimed, by parity)."""
        slots = [0, 0, 0, 0]
        for epoch in sorted(self._cursor_epochs)[-2:]:
            slots[2 * (epoch % 2)] = epoch + 1
            slots[2 * (epoch % 2) + 1] = self._cursor(epoch)
        return slots

    def _restore_cursor(self, slots: list[int]) -> None:
        for slot in (0, 2):
            if slots[slot] > 0:
                self._set_cursor(slots[slot] - 1, slots[slot + 1])

    # ------------------------------------------------------------------ run-wide state (asks every owner)
    def snapshot(self) -> dict[str, Any]:
        """Gather, on the calling rank, every owner's parameters, optimizer state, versions and counters.

        Each owner's part is taken under its lock, at one version of its block group (owners are independent
        authorities, so their parts need no common instant). Only the calling rank takes part (the owners' server
        threads answer), so it may be called from rank 0 alone.
        """
        return self.owners.snapshot()

    def load_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Restore versions, counters and the batch cursor on every owner (call on one rank, e.g. rank 0).

        Parameters and optimizer state are restored by :meth:`adopt_optimizer_state` on every rank. A snapshot
        of another ownership layout (or of the shared-memory engine) restores each owner's version as the largest
        saved version of its blocks and puts the saved counters on the first owner.
        """
        self.owners.load_snapshot(snapshot)

    def adopt_optimizer_state(self, is_creator: bool = False) -> None:
        """After ``optimizer.load_state_dict`` and the model's parameters were loaded on every rank: each owner
        takes its blocks' parameters and optimizer state from this rank's objects (call on every rank; no
        communication). The user's optimizer then drops its copy of the state: the owners hold it."""
        self.owners.adopt_optimizer_state(is_creator)

    def attach_state(self) -> None:
        """After another rank ran :meth:`load_snapshot`: learn every owner's restored version (one round trip per
        owner), so that :attr:`version` (global progress, e.g. for an LR schedule) is right before the first step."""
        self.owners.attach_state()

    def telemetry(self) -> Telemetry:
        """Counters and staleness histogram summed over owners (asks every owner; any rank may call it).

        Counters: ``received``, ``applied``, ``rejected_stale``, ``rejected_nonfinite``, ``rejected_schema``,
        ``rejected_duplicate``, ``rejected_version`` (``rejected`` is their sum), ``deferred``, ``samples``
        (counted by the first owner), ``lost`` (in-flight updates of evicted or dead workers), ``overlapped``
        (applied updates that were pipelined, see ``overlap``), ``gradients``.
        """
        return self.owners.telemetry()

    def describe_peers(self) -> str:
        """One line per other worker as this rank's owner sees it (status, last message, read held)."""
        return self.owners.describe_peers()

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Say goodbye if :meth:`finish` was not called, release the owners' server threads serving this worker,
        and serve the other workers until they closed too (bounded: a client silent for ``hang_timeout +
        reply_timeout`` is abandoned). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_eviction_watch()
        if not self._finished:
            with contextlib.suppress(AsyncTrainingError):
                self._say_bye()
        self.client.close_channels()
        self._claimer.stop()
        self._stop_waiters(time.monotonic() + self.timeout)
        auth = self.authority
        limit = self.hang_timeout + self.reply_timeout
        for c, thread in (self.server.threads.items() if self.server is not None else ()):
            while thread.is_alive():
                thread.join(timeout=0.05)
                if auth is not None and time.time() - auth.last_seen[c] > limit:
                    break
        if self.worker == 0 and self._store is not None:
            # every client has closed (its server thread ended): nobody claims batches any more. The store outlives
            # a fit when the process goes on (another fit, a notebook): leave nothing of this run in it
            for epoch in self._cursor_epochs:
                with contextlib.suppress(AsyncTrainingError, RuntimeError):
                    self._store.delete_key(f"cursor/{epoch}")

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
        self._stop_eviction_watch()
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
        for thread in (self.server.threads.values() if self.server is not None else ()):
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))

    def _stop_waiters(self, deadline: float) -> None:
        self.client.stop_waiters(deadline)
        self._claimer.thread.join(timeout=max(deadline - time.monotonic(), 0.0))

    # ------------------------------------------------------------------ fault injection (tests)
    def resend_last_push(self) -> dict[int, str]:
        """Fault injection: send this worker's last update to every remote owner again, byte for byte. Returns
        ``{owner rank: verdict}``; a correct owner answers ``"rejected_duplicate"`` and counts it."""
        return self.client.resend_last_push()

    def threads_alive(self) -> list[str]:
        """Names of this engine's threads (servers, reply waiters) still running (for teardown checks)."""
        threads = [*(self.server.threads.values() if self.server is not None else ()), *self.client.threads(),
                   self._claimer.thread]
        return [t.name for t in threads if t.is_alive()]
