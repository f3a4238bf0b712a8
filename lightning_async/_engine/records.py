"""Per-update records and counters shared by the engines.

Words as in the design: every update an engine *receives* is either *applied* or *rejected* (for a reason such as
``"stale"`` under the ``"drop"`` bound policy, or ``"non_finite"``), so that ``applied + rejected == received``
always holds. The *staleness* of every applied update is counted in a histogram, whose total is therefore the
applied count.

Nothing here knows about processes or virtual time; an engine decides what one "update" is (the simulated engine
counts one per push of a virtual worker, and writes one :class:`UpdateRecord` per block of that push).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

APPLIED: Final = "applied"
"""Verdict of an update that reached the optimizer."""
REJECTED_STALE: Final = "stale"
"""Verdict (and rejection reason) of an update discarded because its staleness exceeded ``max_staleness``."""
REJECTED_NON_FINITE: Final = "non_finite"
"""Verdict (and rejection reason) of an update whose gradient held a NaN or an infinity."""


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """What happened to one update of one block.

    Attributes:
        worker: index of the worker that computed the update.
        block: index of the block the update is for.
        base_version: the block's version when the worker read the parameters the gradient was computed from.
        staleness: the block's version when the verdict was taken minus ``base_version``.
        verdict: ``"applied"`` or a rejection reason (``"stale"``, ``"non_finite"``, ...).
        samples: number of samples behind the gradient (summed over accumulated gradients).
    """

    worker: int
    block: int
    base_version: int
    staleness: int
    verdict: str
    samples: int

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dictionary."""
        return {
            "worker": self.worker,
            "block": self.block,
            "base_version": self.base_version,
            "staleness": self.staleness,
            "verdict": self.verdict,
            "samples": self.samples,
        }


@dataclass
class UpdateCounters:
    """Counts of received, applied and rejected updates, and the staleness histogram of the applied ones.

    Invariants (checked by :meth:`check`): ``applied + sum(rejected.values()) == received`` and
    ``sum(staleness_histogram.values()) == applied``.

    Attributes:
        received: updates the engine received.
        applied: updates that reached the optimizer.
        rejected: rejected updates by reason.
        staleness_histogram: number of applied updates by staleness.
        samples_applied: samples behind the applied updates.
    """

    received: int = 0
    applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    staleness_histogram: dict[int, int] = field(default_factory=dict)
    samples_applied: int = 0

    def count(self, verdict: str, staleness: int, samples: int = 0) -> None:
        """Count one received update with its verdict.

        Args:
            verdict: ``"applied"`` or a rejection reason.
            staleness: the update's staleness (counted in the histogram only if applied).
            samples: samples behind the update.
        """
        self.received += 1
        if verdict == APPLIED:
            self.applied += 1
            self.samples_applied += samples
            self.staleness_histogram[staleness] = self.staleness_histogram.get(staleness, 0) + 1
        else:
            self.rejected[verdict] = self.rejected.get(verdict, 0) + 1

    @property
    def rejected_total(self) -> int:
        """All rejected updates, whatever the reason."""
        return sum(self.rejected.values())

    @property
    def max_staleness_seen(self) -> int | None:
        """Largest staleness of an applied update, or ``None`` if none was applied."""
        return max(self.staleness_histogram) if self.staleness_histogram else None

    @property
    def mean_staleness(self) -> float | None:
        """Mean staleness of the applied updates, or ``None`` if none was applied."""
        if not self.applied:
            return None
        return sum(s * n for s, n in self.staleness_histogram.items()) / self.applied

    def check(self) -> None:
        """Raise ``AssertionError`` if the counters are inconsistent (an engine bug, never a user error)."""
        if self.applied + self.rejected_total != self.received:
            raise AssertionError(f"applied {self.applied} + rejected {self.rejected} != received {self.received}")
        if sum(self.staleness_histogram.values()) != self.applied:
            raise AssertionError(f"staleness histogram sums to {sum(self.staleness_histogram.values())}, "
                                 f"applied is {self.applied}")

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as a JSON-ready dictionary (histogram keys become strings, sorted by staleness)."""
        return {
            "received": self.received,
            "applied": self.applied,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected_total,
            "samples_applied": self.samples_applied,
            "staleness_histogram": {str(s): self.staleness_histogram[s] for s in sorted(self.staleness_histogram)},
            "max_staleness_seen": self.max_staleness_seen,
            "mean_staleness": self.mean_staleness,
        }
