"""The adaptive overlap rule of a parameter-server worker: whether pipelining its pushes to one owner pays.

Overlap saves the round trip's wait but makes each update staler by one step: the worker's own previous update lands
between its read and its apply, and so do the others' updates of one more of its steps; and it holds two reads at the
owner, not one. :class:`OverlapRule` measures, per remote owner, what decides that trade from what a worker sees
anyway (its step time, the round trips, the versions and sample counts its replies carry) and answers
:meth:`OverlapRule.worthwhile`. It holds no channel and sends nothing: the client asks it and acts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

#: overlap stops once the round trip is below this share of the step: waiting then costs little, and on a
#: 10.7M-parameter transformer on one node (round trips far below this share) overlapping from the first step bought
#: no throughput and cost 2.5-3% held-out loss at equal samples (docs/benchmarks.md, "Overlap on a realistic model")
CHEAP_ROUND_TRIP = 1 / 6
#: overlap starts (again) only above this share: a gap to CHEAP_ROUND_TRIP so that a round trip near one threshold
#: does not switch overlap at every step
COSTLY_ROUND_TRIP = 1 / 3
#: overlap stops when the others apply fewer updates than this per update of this worker: its own updates then mostly
#: follow each other undisturbed, and overlap would make most of them stale instead of fresh (a fast worker beside a
#: straggler)
FEW_INTERLEAVED = 1 / 2
#: overlap starts only when the others apply at least this many updates per update of this worker (theirs already
#: interleave with its own, so one more version costs relatively little)
MANY_INTERLEAVED = 2 / 3
#: overlap stops when each other worker processes more than this many samples per sample of this worker: one more of
#: its long steps lets many of their updates in, and its two old reads make a bounded owner defer the fast workers'
#: updates (a straggler beside fast workers)
MUCH_FASTER_OTHERS = 1.75
#: overlap starts only when the others process at most this many samples each per sample of this worker
COMPARABLE_OTHERS = 1.25
#: the rule decides nothing before this many submits (the averages need a few steps)
MIN_SUBMITS = 8


class OverlapRule:
    """Per remote owner: the measurements behind the overlap decision, and the decision.

    Args:
        owners: the remote owner ranks this worker may overlap with.
        num_workers: the world size (the others' samples are compared per other worker).
    """

    def __init__(self, owners: Iterable[int], num_workers: int) -> None:
        owners = list(owners)
        self.num_workers = num_workers
        # moving averages of the round trip, seconds, measured without overlap (a late or blocking push's: what a
        # step waits without it) and with it (a pipelined push's: up to its reply's arrival)
        self.latency = {o: 0.0 for o in owners}
        self.latency_piped = {o: 0.0 for o in owners}
        # moving average of the updates the *other* workers apply there per update of this one (from the versions its
        # replies carry), and what was seen of both since the average last moved. Per update, not per step: with
        # overlap, "accumulate" sums a gradient ready before the last reply came back into the next push, which
        # halved every worker's updates per step, and equal workers flapped in and out of overlap
        self.others: dict[int, float | None] = {o: None for o in owners}
        self.others_new = {o: 0 for o in owners}
        self.own_new = {o: 0 for o in owners}
        self.reply_version: dict[int, int | None] = {o: None for o in owners}
        # the samples the others' updates applied there carried (as of the last reply), and decaying sums of those
        # seen since and of this worker's own: their ratio is how much faster the others are
        self.reply_samples: dict[int, int | None] = {o: None for o in owners}
        self.others_samples = {o: 0.0 for o in owners}
        self.own_samples = {o: 0.0 for o in owners}
        self.step_interval = 0.0  # moving average of the time between two submits
        self.last_submit = 0.0
        self.submits = 0

    def note_submit(self, samples: int) -> None:
        """A step ends (called at each submit with the samples of its gradient)."""
        now = time.perf_counter()
        if self.last_submit:
            interval = now - self.last_submit
            self.step_interval = interval if not self.step_interval else 0.8 * self.step_interval + 0.2 * interval
        self.last_submit = now
        self.submits += 1
        for o, seen in self.others_new.items():  # the others' updates seen per update of this worker's
            if self.reply_version[o] is None or not self.own_new[o]:
                continue  # no reply yet to count from, or none of this worker's updates applied since
            ratio = seen / self.own_new[o]
            old = self.others[o]
            self.others[o] = ratio if old is None else 0.9 * old + 0.1 * ratio  # over about ten updates
            self.others_new[o] = 0
            self.own_new[o] = 0
        for o in self.own_samples:  # decaying sums over about ten steps (summed gradients count in full)
            if self.reply_samples[o] is not None:
                self.others_samples[o] *= 0.9
                self.own_samples[o] = 0.9 * self.own_samples[o] + samples

    def pause_step_clock(self) -> None:
        """The time to the next submit is no step (an epoch end: validation, a new data loader). Counted, it made the
        average step several times longer on a short epoch, and the rule wrong."""
        self.last_submit = 0.0

    def note_reply(self, owner: int, version: int, samples: int, applied_own: bool) -> None:
        """A reply from ``owner`` with its version and the samples of every worker's applied updates there;
        ``applied_own``: it answers a push of this worker that was applied."""
        if owner not in self.reply_version:
            return
        previous = self.reply_version[owner]
        self.reply_version[owner] = version
        before = self.reply_samples[owner]
        self.reply_samples[owner] = samples
        if before is not None:
            self.others_samples[owner] += max(0, samples - before)
        if previous is not None:  # the owner's version moved by this worker's applied update and the others'
            mine = int(applied_own)
            self.others_new[owner] += max(0, version - previous - mine)
            self.own_new[owner] += mine

    def note_latency(self, owner: int, seconds: float, piped: bool = False) -> None:
        """A measured round trip to ``owner`` (``piped``: of a pipelined push, up to its reply's arrival)."""
        table = self.latency_piped if piped else self.latency
        if owner in table:
            old = table[owner]
            table[owner] = seconds if old == 0.0 else 0.7 * old + 0.3 * seconds

    def others_faster(self, owner: int) -> float:
        """Samples the other workers processed per sample of this worker's, at ``owner``, lately."""
        return self.others_samples[owner] / max(self.own_samples[owner], 1.0)

    def worthwhile(self, owner: int) -> bool | None:
        """Whether overlapping the pushes to ``owner`` pays (``None``: no change, or not enough steps seen yet).

        ``False`` once the round trip is below :data:`CHEAP_ROUND_TRIP` of the step, or the others apply fewer than
        :data:`FEW_INTERLEAVED` updates per update of this worker, or each processes more than
        :data:`MUCH_FASTER_OTHERS` samples per sample of this worker. ``True`` once the round trip is over
        :data:`COSTLY_ROUND_TRIP` of the step, the others apply at least :data:`MANY_INTERLEAVED` updates per update
        of this one, and each processes at most :data:`COMPARABLE_OTHERS` samples per sample of this one.
        """
        others = self.others.get(owner)
        if self.submits < MIN_SUBMITS or self.step_interval <= 0.0 or others is None:
            return None
        # what waiting would cost: the round trip measured without overlap, once there is one (measuring it as it
        # is while overlapping, up to the reply's arrival only, made equal workers flap in and out of overlap)
        share = (self.latency[owner] or self.latency_piped[owner]) / self.step_interval
        # how much faster the others are, in samples (gradients a worker sums into one update count in full)
        faster = self.others_faster(owner) / max(self.num_workers - 1, 1)
        if share < CHEAP_ROUND_TRIP or others < FEW_INTERLEAVED or faster > MUCH_FASTER_OTHERS:
            return False
        if share > COSTLY_ROUND_TRIP and others >= MANY_INTERLEAVED and faster <= COMPARABLE_OTHERS:
            return True
        return None
