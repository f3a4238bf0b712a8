"""The client side of a parameter-server rank: push-pull exchanges with the owners, pipelined (overlapped)
pushes and late replies, the adaptive overlap rule, and the pending (deferred) updates of ``"accumulate"``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from lightning_async._engine import ps_wire as wire
from lightning_async._engine.base import NonFiniteStreak, all_finite
from lightning_async._engine.bound import StalenessBound
from lightning_async._engine.pending import PendingUpdate
from lightning_async._engine.ps_common import (
    _CODE_V,
    _ERRORS,
)
from lightning_async._engine.ps_overlap import OverlapRule
from lightning_async._engine.ps_owner import _Authority
from lightning_async._engine.ps_threads import _Posted, _ReplyWaiter
from lightning_async.errors import AsyncTrainingError, WorkerDiedError, WorkerTimeoutError


class PushPullClient:
    """A worker's side of the parameter-server engine: its reads and pushes at every owner.

    Holds, per owner, the read this worker computes on, its pending (deferred) update and the push in flight; sends
    requests on the channels to the remote owners and calls the local owner's authority directly.

    Args:
        rank: this worker's rank.
        num_workers: the world size.
        params: the worker's parameters, in the same order on every rank (the schema of every block).
        optimizer: the user's optimizer (only told that an update was made, for LR schedulers).
        ownership: owner rank -> the blocks it owns.
        channels: remote owner rank -> this worker's channel to it.
        authority: the local owner's authority, if this rank owns blocks.
        bound: the run's staleness bound.
        reply_timeout: seconds any reply may take.
        max_consecutive_nonfinite: raise after this many non-finite gradients in a row.
        overlap: whether pushes to remote owners may be pipelined (see :mod:`.ps_overlap`).
        overlap_from_start: pipeline from the first step (else only once the rule finds it pays).
    """

    def __init__(
        self,
        *,
        rank: int,
        num_workers: int,
        params: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        ownership: dict[int, list[int]],
        channels: dict[int, wire.Channel],
        authority: _Authority | None,
        bound: StalenessBound,
        reply_timeout: float,
        max_consecutive_nonfinite: int,
        overlap: bool,
        overlap_from_start: bool,
    ) -> None:
        self.worker = rank
        self.params = list(params)
        self.optimizer = optimizer
        self.ownership = ownership
        self.owner_ranks = sorted(ownership)
        self.authority = authority
        self.bound = bound
        self.reply_timeout = reply_timeout
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.channels = channels
        self.copier = wire.BlockCopier(self.params, {b: o for o, bs in ownership.items() for b in bs})
        # overlap: a thread per remote owner waits for the replies to pipelined pushes (gloo's works cannot be
        # polled: is_completed() stays False until wait() is called)
        self._waiters = {
            o: _ReplyWaiter(channel, reply_timeout, f"lasync-ps-reply-{o}") for o, channel in channels.items()
        } if overlap else {}
        self.rule = OverlapRule(self._waiters, num_workers)
        self._inflight: dict[int, _Posted] = {}
        self._spare = {o: False for o in self.owner_ranks}  # a second read of the version held (overlap's first step)
        self._overlap_deferred = {o: 0 for o in self.owner_ranks}
        # per remote owner: overlapping now? Automatic overlap starts off until the measured round trip shows it pays
        # (see OverlapRule): started on, a round trip between the rule's two thresholds kept it on for good, and on a
        # 10.7M-parameter transformer on one node it then cost 2.5-3% held-out loss for no measurable throughput
        self._piped = {o: overlap_from_start for o in self._waiters}
        # per remote owner: whether a reply with its parameters is sent in two pieces (see _post_late)
        sizes = [p.numel() * p.element_size() for p in self.params]
        self._reply_in_two = {
            o: wire.frame_size([sizes[b] for b in ownership[o]]) > channel.inline for o, channel in channels.items()
        }
        self._seq = 0
        self._reads: dict[int, int | None] = {o: None for o in self.owner_ranks}
        self._pending = {o: PendingUpdate() for o in self.owner_ranks}  # per owner: its blocks' part of the update
        #: per owner: the latest version seen there
        self.owner_versions = {o: 0 for o in self.owner_ranks}
        self._nonfinite = NonFiniteStreak(rank)
        self._local_step = 0
        #: this worker's progress, reported to the owners in every request: gradients computed, seconds waited for
        #: admission, seconds spent in the engine
        self.gradients = 0
        self.wait_seconds = 0.0
        self.busy_seconds = 0.0
        self._last_push: dict[int, list[torch.Tensor]] = {}

    @property
    def overlapping(self) -> dict[int, bool]:
        """Per remote owner: whether this worker pipelines its pushes there now."""
        return dict(self._piped)

    # ================================================================== client side
    def request(self, owner: int, kind: int, **pack_kwargs: Any) -> list[torch.Tensor]:
        self._seq += 1 if kind == wire.PUSH else 0
        ints = dict(pack_kwargs.pop("ints", {}))
        ints.update({wire.P_GRADIENTS: self.gradients, wire.P_WAIT_US: int(self.wait_seconds * 1e6),
                     wire.P_BUSY_US: int(self.busy_seconds * 1e6)})
        return wire.pack(kind, self.worker, self._seq, ints=ints, **pack_kwargs)

    def exchange(self, requests: dict[int, list[torch.Tensor]], local: Any = None) -> dict[int, wire.Message]:
        """Send ``requests`` (owner -> packed message) to remote owners at once, run ``local()`` meanwhile,
        and collect the replies. Raises the error an owner replied with, or one naming a dead/hung owner."""
        for owner in requests:
            self._settle(owner)  # a pipelined push's reply comes first on the channel
        posted = {}
        sent_at = time.perf_counter()
        for owner, parts in requests.items():
            channel = self.channels[owner]
            try:
                works = channel.post(parts)
                posted[owner] = (parts, works, channel.post_prelude())
            except wire.ChannelError as e:
                raise self._owner_error(owner, e) from e
        if local is not None:
            local()
        replies = {}
        for owner, (parts, works, prelude) in posted.items():
            channel = self.channels[owner]
            try:
                channel.complete(works, self.reply_timeout)
                replies[owner] = channel.receive(self.reply_timeout, prelude)
            except wire.ChannelError as e:
                raise self._owner_error(owner, e) from e
            if parts[0][wire.P_KIND] == wire.PUSH:
                self._last_push[owner] = parts
                self.rule.note_latency(owner, time.perf_counter() - sent_at)  # the round trip (and local() meanwhile)
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
        self.owner_versions[owner] = max(self.owner_versions[owner], version)
        self.rule.note_reply(owner, version, reply[wire.P_SAMPLES],
                             applied_own=push and _CODE_V.get(reply[wire.P_FLAGS]) == "applied")

    # ------------------------------------------------------------------ reads
    def begin_step(self, local_params: Sequence[torch.Tensor]) -> None:
        self.local_failed()
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
        if release and not self._inflight and not any(self._pending[o] for o in release):
            self.read_many(local_params, release, wire.RELEASE)
        else:
            for o in reversed(release):
                self._flush_owner(local_params, o)
        for o in self.owner_ranks:
            if o >= first and self._reads[o] is None:
                if o in self._inflight:
                    self._consume(o, local_params)
                if self._reads[o] is None:
                    self.read_many(local_params, [o], wire.READ_PAIR if self._piped.get(o) else wire.READ_WAIT)
        self.busy_seconds += time.perf_counter() - start

    def read_many(self, local_params: Sequence[torch.Tensor], owners: list[int], mode: int) -> None:
        result: dict[int, tuple[int, Any, int]] = {}
        copy_in = self.copier.local_copier(local_params)

        def local() -> None:
            if self.worker in owners:
                assert self.authority is not None
                result[self.worker] = self.authority.read(self.worker, mode, copy_in)

        requests = {o: self.request(o, wire.READ, ints={wire.P_FLAGS: mode}) for o in owners if o != self.worker}
        replies = self.exchange(requests, local)
        for o in owners:
            if o == self.worker:
                version, blocks, reads = result[o]
                if blocks is not None:
                    self.copier.copy_in(local_params, blocks)
            else:
                version, reads = replies[o][wire.P_EXTRA], replies[o][wire.P_READS]
                self.copier.copy_reply(local_params, replies[o], o)
            if mode in (wire.READ_WAIT, wire.READ_TRY, wire.READ_PAIR):
                self._reads[o] = version if version >= 0 else None
                self._spare[o] = version >= 0 and reads == 2  # READ_PAIR may grant one read only
            elif mode in (wire.RELEASE, wire.RELEASE_REFRESH):
                self._reads[o] = None  # every read this worker held there, a pipelined reply's included
                self._spare[o] = False
                self._inflight.pop(o, None)

    def end_epoch(self, local_params: Sequence[torch.Tensor]) -> None:
        """Apply what is deferred (waiting for admission), release every read, refresh ``local_params``."""
        self.local_failed()
        start = time.perf_counter()
        if self._inflight or any(self._pending[o] for o in self.owner_ranks):
            # owner by owner, highest first: each wait then happens while this worker holds reads at lower owners
            # only (as in begin_step)
            for o in reversed(self.owner_ranks):
                self._flush_owner(local_params, o)
        self.read_many(local_params, list(self.owner_ranks), wire.RELEASE_REFRESH)
        self.busy_seconds += time.perf_counter() - start
        self.rule.pause_step_clock()

    def refresh(self, local_params: Sequence[torch.Tensor]) -> None:
        """Copy the current authoritative parameters into ``local_params`` without taking a read."""
        self.local_failed()
        self.read_many(local_params, list(self.owner_ranks), wire.REFRESH)

    def say_bye(self) -> None:
        """Tell every owner (the local one directly) that this worker is done."""
        if self.authority is not None:
            self.authority.bye(self.worker)
        requests = {o: self.request(o, wire.BYE) for o in self.channels}
        if requests:
            self.exchange(requests)

    def close_channels(self) -> None:
        """Tell every remote owner to stop serving this worker (errors are ignored: the owner may be gone)."""
        for o in self.channels:
            with contextlib.suppress(AsyncTrainingError):
                self.exchange({o: self.request(o, wire.CLOSE)})

    def threads(self) -> list[threading.Thread]:
        """The reply-waiter threads (one per remote owner, with overlap)."""
        return [w.thread for w in self._waiters.values()]

    def stop_waiters(self, deadline: float) -> None:
        """Stop the reply-waiter threads, joining each until ``deadline`` (``time.monotonic()``) at most."""
        for waiter in self._waiters.values():
            waiter.stop()
        for waiter in self._waiters.values():
            waiter.thread.join(timeout=max(deadline - time.monotonic(), 0.0))

    # ------------------------------------------------------------------ overlap (pipelined pushes)
    def _post_pipelined(self, owner: int, parts: wire.Parts, waiter: bool = True) -> None:
        """Post the push and its reply's receive; ``waiter``: the owner's reply-waiter thread completes them (else
        :meth:`_await` does, in this thread)."""
        channel = self.channels[owner]
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

    def _resolve_late(self, owner: int, posted: _Posted) -> None:
        """Apply a late push's verdict to this worker's pending update and read (its parameters are copied by
        :meth:`_consume`)."""
        if posted.verdict in ("deferred", "rejected_nonfinite", "rejected_duplicate"):
            # as for a blocking push: the read stays held at the owner (and a deferred update stays pending: the
            # next gradient is summed into it)
            self._reads[owner] = posted.base
            pending = self._pending[owner]
            if pending.count == 1:
                # the pending update is one raw gradient, the caller's (it may have been zeroed in place since, and
                # keep() does nothing once owned): take it back from the frame that was sent, an exact copy
                sent = self.copier.sent_blocks(posted.parts)
                pending.keep([
                    None if g is None else sent[b] if g.numel() else g.detach().clone()
                    for b, g in zip(self.ownership[owner], pending.grads or ())
                ])
            return
        self._pending[owner].clear()  # applied, or rejected for good (as a blocking push's verdict)
        if posted.read < 0:
            self._reads[owner] = None

    def _await(self, owner: int) -> _Posted | None:
        """Wait (bounded) for the reply to the push in flight to ``owner``; raise what failed."""
        posted = self._inflight.get(owner)
        if posted is None or posted.checked:
            return posted
        if posted.inline and not posted.done.is_set():  # no waiter thread: complete it here (each wait bounded)
            channel = self.channels[owner]
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
        self.rule.note_latency(owner, posted.done_at - posted.posted_at, piped=not posted.late)
        if posted.late:
            self._resolve_late(owner, posted)
        return posted

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
            self.copier.copy_reply(local_params, posted.reply, owner)
            self._reads[owner] = posted.read
            if posted.pair:  # granted a pair: overlap (again) from this step
                self._spare[owner] = True
                self._piped[owner] = True
        elif not posted.late:  # (a late push's read was settled with its verdict)
            self._reads[owner] = None
        return posted.verdict

    def _defer_behind_inflight(self, owner: int, grads: list[torch.Tensor | None], samples: int) -> str:
        """Sum this gradient into the next push to ``owner`` (the one in flight has not come back)."""
        self._pending[owner].add(self._owner_part(owner, grads), samples, own=True)
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
        parts = self.request(owner, wire.PUSH, blocks=[(b, base, g) for b, g in blocks], ints={
            wire.P_VERSION: base, wire.P_SAMPLES: self._pending[owner].samples, wire.P_FLAGS: flags,
            wire.P_EXTRA: self._overlap_deferred[owner],
        })
        self._pending[owner].clear()
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

    def local_failed(self) -> None:
        auth = self.authority
        if auth is not None and auth.failed is not None:
            raise auth.failed

    # ------------------------------------------------------------------ updates
    def submit(self, local_params: Sequence[torch.Tensor], samples: int) -> str:
        self.local_failed()
        start = time.perf_counter()
        self.rule.note_submit(samples)
        self._local_step += 1
        self.gradients += 1
        grads = [q.grad for q in local_params]
        finite = all_finite(grads)
        verdicts = self._push_all(local_params, grads, samples, finite=finite, must_apply=False)
        accepted = finite and "rejected_nonfinite" not in verdicts.values()
        self._nonfinite.record(accepted, self._local_step, self.max_consecutive_nonfinite)
        if {"applied", "sent"} & set(verdicts.values()):
            # the user's optimizer never steps (its owners' copies do): tell an LR scheduler watching it that an
            # update was made, as torch's own step wrapper would (else it warns that the scheduler stepped first)
            self.optimizer._opt_called = True  # type: ignore[attr-defined]
        self.busy_seconds += time.perf_counter() - start
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
                last = self.rule.worthwhile(o) is False
                verdicts[o] = self._push_pipelined(o, local_params, grads, samples, last=last)
                if last and verdicts[o] == "sent":
                    self._piped[o] = False
            repipe = {o for o in owners if o in self._waiters and o not in piped and self.rule.worthwhile(o)}
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
                if grads is not None:  # non-finite: the raw gradient, alone
                    blocks = [(b, grads[b]) for b in self.ownership[o] if grads[b] is not None]
                    offers[o] = (self._reads[o], blocks, samples)  # type: ignore[assignment]
                    continue
                if not self._pending[o]:
                    continue
                blocks = self._offered(o)  # the mean of the summed gradients, as when offered at a step
            else:
                blocks = self._add_pending(o, grads, samples)
                checked[o] = self._pending[o].count == 1  # the raw gradient submit() found finite
            offers[o] = (self._reads[o], blocks, self._pending[o].samples if finite else samples)  # type: ignore
        if not offers:
            return verdicts
        flags = wire.F_MUST_APPLY if must_apply else wire.F_WANT_READ
        if not finite:
            flags |= wire.F_NONFINITE
        results: dict[int, tuple[str, int, Any]] = {}
        copy_in = self.copier.local_copier(local_params)

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
            parts = self.request(
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
        replies = self.exchange(requests, local)
        for o in offers:
            if o in self._inflight and self._inflight[o].late:
                continue  # its verdict comes with the reply, at the next begin_step
            if o == self.worker:
                verdict, version, blocks, _ = results[o]
                if blocks is not None:
                    self.copier.copy_in(local_params, blocks)
            else:
                reply = replies[o]
                verdict = _CODE_V.get(reply[wire.P_FLAGS], "rejected_schema")
                version = reply[wire.P_EXTRA]
                if version >= 0:
                    self.copier.copy_reply(local_params, reply, o)
            verdicts[o] = verdict
            if verdict == "deferred":
                # kept past this step: own the buffers now (submit may report another owner's verdict, and the caller
                # may then zero its gradients in place)
                self._pending[o].keep()
            if verdict == "deferred" or verdict == "rejected_nonfinite" or verdict == "rejected_duplicate":
                continue  # the read stays held (and a deferred update stays pending)
            self._pending[o].clear()
            self._reads[o] = version if version >= 0 else None
            if o in repipe and o != self.worker and version >= 0 and replies[o][wire.P_READS] == 2:
                # granted a pair: overlap again from the next step
                self._spare[o] = True
                self._piped[o] = True
        return verdicts

    def _add_pending(self, o: int, grads: list[torch.Tensor | None], samples: int) -> list[tuple[int, torch.Tensor]]:
        """Add this gradient's blocks of owner ``o`` to its pending update; return the blocks to offer."""
        self._pending[o].add(self._owner_part(o, grads), samples)
        return self._offered(o)

    def _owner_part(self, o: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The gradients of owner ``o``'s blocks, in its block order."""
        return [grads[b] for b in self.ownership[o]]

    def _offered(self, o: int) -> list[tuple[int, torch.Tensor]]:
        """The blocks of owner ``o``'s pending update to offer: the mean of the gradients it holds."""
        return [(b, g) for b, g in zip(self.ownership[o], self._pending[o].update()) if g is not None]

    def _flush_owner(self, local_params: Sequence[torch.Tensor], o: int) -> None:
        """Settle the pipelined push to owner ``o``, apply the update deferred there (waiting for its admission),
        and release every read this worker holds there."""
        self._settle(o)
        if self._pending[o]:
            self._push_all(local_params, None, 0, finite=True, must_apply=True, owners=[o])
        self.read_many(local_params, [o], wire.RELEASE)

    # ------------------------------------------------------------------ fault injection (tests)
    def debug_resend(self, owner: int) -> str:
        """Send the last PUSH to remote ``owner`` again, byte for byte (a duplicate); return its verdict."""
        self._settle(owner)  # a pipelined push in flight becomes the last one
        reply = self.exchange({owner: self._last_push[owner]})[owner]
        return _CODE_V.get(reply[wire.P_FLAGS], "?")

    def resend_last_push(self) -> dict[int, str]:
        """Fault injection: send this worker's last update to every remote owner again, byte for byte. Returns
        ``{owner rank: verdict}``; a correct owner answers ``"rejected_duplicate"`` and counts it."""
        self.local_failed()
        verdicts = {}
        for owner in self.channels:
            self._settle(owner)
            if owner in self._last_push:
                verdicts[owner] = self.debug_resend(owner)
        return verdicts

    def debug_push(self, owner: int, blocks: list[tuple[int, torch.Tensor]]) -> str:
        """Push arbitrary ``(block, tensor)`` pairs to remote ``owner`` on the read held there; return the
        verdict (the worker's bookkeeping follows it as for a real push)."""
        base = self._reads[owner]
        assert base is not None, "hold a read at the owner first"
        parts = self.request(owner, wire.PUSH, blocks=[(b, base, t) for b, t in blocks],
                              ints={wire.P_VERSION: base, wire.P_SAMPLES: 0, wire.P_FLAGS: 0})
        verdict = _CODE_V.get(self.exchange({owner: parts})[owner][wire.P_FLAGS], "?")
        if verdict not in ("deferred", "rejected_nonfinite", "rejected_duplicate"):
            self._pending[owner].clear()
            if self._spare[owner]:  # the owner released one of the pair: the other read of that version is held
                self._spare[owner] = False
            else:
                self._reads[owner] = None
        return verdict
