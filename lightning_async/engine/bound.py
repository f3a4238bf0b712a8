"""The staleness bound: which reads and applies keep every update within ``max_staleness``.

Pure integer logic shared by every engine. Words as in the design: the *version* of a block is the number of
updates applied to it; the *staleness* of an update is the block's version when it is applied minus the version
its gradient was computed from (its *read version*); ``max_staleness`` (K) bounds it.

A set of in-flight reads ``r_0 <= r_1 <= ... <= r_{n-1}`` at current version ``v`` is *feasible* when applying
them oldest first keeps each within the bound::

    v + i - r_i <= K    for every i

If the set is feasible, the oldest in-flight update can always be applied and the set stays feasible, so a
policy that only admits reads and applies which keep feasibility can neither break the bound nor deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

BoundPolicy = Literal["accumulate", "wait", "drop"]
BOUND_POLICIES: tuple[str, ...] = ("accumulate", "wait", "drop")


def validate_max_staleness(max_staleness: int | None) -> int | None:
    """Return ``max_staleness`` or raise a ``ValueError`` that names it."""
    if max_staleness is None:
        return None
    if isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness < 0:
        raise ValueError(
            f"max_staleness must be a non-negative integer or None (unbounded), got {max_staleness!r}."
        )
    return max_staleness


def validate_bound_policy(bound_policy: str) -> str:
    """Return ``bound_policy`` or raise a ``ValueError`` listing the allowed values."""
    if bound_policy not in BOUND_POLICIES:
        raise ValueError(f"bound_policy must be one of {BOUND_POLICIES}, got {bound_policy!r}.")
    return bound_policy


def is_feasible(reads: Iterable[int], version: int, max_staleness: int | None) -> bool:
    """Whether every in-flight read can still be applied, oldest first, within ``max_staleness``."""
    if max_staleness is None:
        return True
    return all(version + i - read <= max_staleness for i, read in enumerate(sorted(reads)))


class StalenessBound:
    """Admission rules for reads and applies under one bound policy.

    * ``"wait"``: a read or an apply that would break feasibility waits (the caller blocks, with a timeout).
    * ``"accumulate"``: reads are gated as for ``"wait"``; an apply that would break feasibility is deferred and
      the worker keeps computing on the parameters it holds, summing gradients until it may apply. No work lost.
    * ``"drop"``: nothing is gated; an update whose staleness exceeds the bound is discarded and counted.

    Args:
        max_staleness: the bound K, or ``None`` for no bound.
        policy: one of ``"accumulate"``, ``"wait"``, ``"drop"``.
    """

    def __init__(self, max_staleness: int | None, policy: str = "accumulate") -> None:
        self.max_staleness = validate_max_staleness(max_staleness)
        self.policy = validate_bound_policy(policy)

    def staleness(self, version: int, read_version: int) -> int:
        return version - read_version

    def within_bound(self, staleness: int) -> bool:
        return self.max_staleness is None or staleness <= self.max_staleness

    def may_read(self, version: int, other_reads: Iterable[int]) -> bool:
        """Whether a worker may start computing on the parameters at ``version``."""
        if self.policy == "drop":
            return True
        return is_feasible([*other_reads, version], version, self.max_staleness)

    def may_apply(self, version: int, read_version: int, other_reads: Iterable[int]) -> bool:
        """Whether an update read at ``read_version`` may be applied now without breaking the bound.

        For ``"drop"`` only the update's own staleness counts (a ``False`` means: discard it). For the other
        policies the apply must also leave every other in-flight update able to meet the bound.
        """
        if not self.within_bound(version - read_version):
            return False
        if self.policy == "drop":
            return True
        return is_feasible(other_reads, version + 1, self.max_staleness)
