"""The client side of a parameter-server rank: push-pull exchanges with the owners, pipelined (overlapped)
pushes and late replies, the adaptive overlap rule, and the pending (deferred) updates of ``"accumulate"``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lightning_async._engine import ps_wire as wire
from lightning_async._engine.base import all_finite
from lightning_async._engine.ps_common import (
    _CODE_V,
    _ERRORS,
)
from lightning_async._engine.ps_threads import (
    _Posted,
)
from lightning_async.errors import AsyncTrainingError, WorkerDiedError, WorkerTimeoutError

if TYPE_CHECKING:
    pass


class PushPullClient:
    """Mixin of :class:`~lightning_async._engine.parameter_server.ParameterServerEngine`: the worker's side."""

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
            pending = self._pending[owner]
            if pending.count == 1:
                # the pending update is one raw gradient, the caller's (it may have been zeroed in place since, and
                # keep() does nothing once owned): take it back from the frame that was sent, an exact copy
                sent = self._sent_blocks(posted.parts)
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
        parts = self._request(owner, wire.PUSH, blocks=[(b, base, g) for b, g in blocks], ints={
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
        accepted = finite and "rejected_nonfinite" not in verdicts.values()
        self._nonfinite.record(accepted, self._local_step, self.max_consecutive_nonfinite)
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
        self._read_many(local_params, [o], wire.RELEASE)
