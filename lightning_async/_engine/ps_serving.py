"""The serving side of a parameter-server rank: :class:`OwnerServer` (the threads that answer each client's
requests) and :class:`OwnersView` (the run-wide state built from every owner: snapshots for checkpoints, restores,
telemetry, peers' status).
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lightning_async._engine import ps_wire as wire
from lightning_async._engine.base import COUNTERS, Telemetry
from lightning_async._engine.bound import StalenessBound
from lightning_async._engine.ps_client import PushPullClient
from lightning_async._engine.ps_common import (
    _IDLE_TIMEOUT,
    _REPORTED,
    _STATUS,
    _V_CODE,
    OWNER_COUNTERS,
    REJECTIONS,
    _decode_any,
    _error_reply,
    _versions,
)
from lightning_async._engine.ps_owner import _Authority
from lightning_async._engine.ps_placement import (
    _optimizer_index,
)
from lightning_async.errors import AsyncTrainingError, WorkerTimeoutError


def check_schema(store: Any, rank: int, params: Sequence[torch.Tensor], timeout: float) -> None:
    """Every rank must hold the same parameter shapes and dtypes (a mismatch is named at construction)."""
    mine = [[list(p.shape), str(p.dtype)] for p in params]
    store.set(f"schema/{rank}", json.dumps(mine))
    if rank == 0:
        return
    try:
        store.wait(["schema/0"], datetime.timedelta(seconds=timeout))
    except RuntimeError as e:
        raise WorkerTimeoutError(f"worker {rank} waited {timeout}s for rank 0's parameter "
                                 f"schema: {e}") from e
    theirs = json.loads(store.get("schema/0").decode())
    if len(theirs) != len(mine):
        raise RuntimeError(f"rank 0 has {len(theirs)} parameters, rank {rank} has {len(mine)}: every "
                           "worker must build the same model.")
    for i, (a, b) in enumerate(zip(theirs, mine)):
        if a != b:
            raise RuntimeError(f"parameter {i} differs: rank 0 has shape {a[0]} {a[1]}, rank {rank} "
                               f"has shape {b[0]} {b[1]}: every worker must build the same model.")


class OwnerServer:
    """The threads of an owner rank that serve its clients, one per client, each on its own channel.

    Args:
        authority: the owner's authority (its blocks' parameters, state, versions and admission).
        rank: the owner rank.
        channels: client rank -> the channel its requests arrive on.
        hang_timeout: seconds a client holding a read may stay silent before it is called hung.
        reply_timeout: seconds a reply's send may take.
    """

    def __init__(self, authority: _Authority, rank: int, channels: dict[int, wire.Channel], hang_timeout: float,
                 reply_timeout: float) -> None:
        self.authority = authority
        self.worker = rank
        self.hang_timeout = hang_timeout
        self.reply_timeout = reply_timeout
        self.threads: dict[int, threading.Thread] = {}
        for c, channel in channels.items():
            thread = threading.Thread(target=self._serve, args=(c, channel), name=f"lasync-ps-serve-{c}",
                                      daemon=True)
            thread.start()
            self.threads[c] = thread

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
                except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as e:  # a malformed message
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


class OwnersView:
    """The run-wide state of a parameter-server run as one rank sees it, built from every owner's part.

    Any rank may ask (the owners' server threads answer): snapshots for checkpoints, restores, telemetry.

    Args:
        client: this rank's client (its requests reach the remote owners).
        authority: the local owner's authority, if this rank owns blocks.
        rank: this rank.
        num_workers: the world size.
        params: the worker's parameters (the layout of snapshots).
        optimizer: the user's optimizer (its parameter groups go into snapshots; it adopts restored state).
        ownership: owner rank -> its blocks.
        bound: the run's staleness bound.
        histogram_bins: bins of the staleness histogram.
        batch_cursor: returns the batch cursor's four slots (saved with snapshots).
        restore_cursor: sets the batch cursor from four saved slots.
        started: returns when this worker started training (epoch seconds, 0 before).
    """

    def __init__(
        self, *, client: PushPullClient, authority: _Authority | None, rank: int, num_workers: int,
        params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, ownership: dict[int, list[int]],
        bound: StalenessBound, histogram_bins: int, batch_cursor: Callable[[], list[int]],
        restore_cursor: Callable[[list[int]], None], started: Callable[[], float],
    ) -> None:
        self.client = client
        self.authority = authority
        self.worker = rank
        self.num_workers = num_workers
        self.params = list(params)
        self.optimizer = optimizer
        self.ownership = ownership
        self.owner_ranks = sorted(ownership)
        self.bound = bound
        self.histogram_bins = histogram_bins
        self.batch_cursor = batch_cursor
        self.restore_cursor = restore_cursor
        self.started = started

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

        requests = {o: self.client.request(o, kind, meta=(meta or {}).get(o)) for o in self.client.channels}
        replies = self.client.exchange(requests, local)
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
        self.client.local_failed()
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
        slots = self.batch_cursor()
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
        self.client.local_failed()
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
            self.client.owner_versions[o] = int(metas[o]["version"])
        cursor = engine.get("batch_cursor")
        if cursor is not None and len(cursor) == 4:
            self.restore_cursor([int(c) for c in cursor])

    def adopt_optimizer_state(self, is_creator: bool = False) -> None:
        """After ``optimizer.load_state_dict`` and the model's parameters were loaded on every rank: each owner
        takes its blocks' parameters and optimizer state from this rank's objects (call on every rank; no
        communication). The user's optimizer then drops its copy of the state: the owners hold it."""
        del is_creator  # every owner adopts its own blocks
        if self.authority is not None:
            self.authority.adopt(self.params, self.optimizer)
        self.optimizer.state.clear()

    def attach_state(self) -> None:
        """After another rank ran :meth:`load_snapshot`: learn every owner's restored version (one round trip per
        owner), so that :attr:`version` (global progress, e.g. for an LR schedule) is right before the first step.
        The state itself was already placed on its owners by :meth:`adopt_optimizer_state`."""
        self.client.local_failed()
        parts = self._gather(wire.TELEMETRY)
        for o in self.owner_ranks:
            if o in parts:
                self.client.owner_versions[o] = int(parts[o]["version"])

    # ------------------------------------------------------------------ telemetry
    def _combine(self, parts: list[dict[str, Any]]) -> Telemetry:
        p = self.num_workers
        counts = np.zeros((p, len(OWNER_COUNTERS)), dtype=np.int64)
        hist = np.zeros(self.histogram_bins, dtype=np.int64)
        reported = np.zeros((p, len(_REPORTED)), dtype=np.float64)
        samples_col = OWNER_COUNTERS.index("samples")
        for part in parts:
            c = np.asarray(part["counts"], dtype=np.int64).reshape(p, len(OWNER_COUNTERS))
            counts += c
            h = np.asarray(part["hist"], dtype=np.int64).sum(axis=0) if len(part["hist"]) else np.zeros(0)
            n = min(len(h), self.histogram_bins)
            hist[:n] += h[:n]
            r = np.asarray(part.get("reported", np.zeros_like(reported)), dtype=np.float64).reshape(reported.shape)
            newer = r[:, 0] >= reported[:, 0]
            reported[newer] = r[newer]
        started = self.started()
        if started:
            c = self.client
            reported[self.worker] = [c.gradients, c.wait_seconds, c.busy_seconds, started, time.time()]
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
        self.client.local_failed()
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
