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
from typing import Final, Literal

BoundPolicy = Literal["accumulate", "wait", "drop"]
BOUND_POLICIES: tuple[str, ...] = ("accumulate", "wait", "drop")


#: the value of ``max_staleness`` that picks the bound from the worker count (see :func:`auto_max_staleness`)
AUTO: Final = "auto"


def validate_max_staleness(max_staleness: int | str | None, allow_auto: bool = False) -> int | str | None:
    """Return ``max_staleness`` or raise a ``ValueError`` that names it."""
    if max_staleness is None or (allow_auto and max_staleness == AUTO):
        return max_staleness
    if isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness < 0:
        allowed = "a non-negative integer, 'auto' (from the worker count)" if allow_auto else "a non-negative integer"
        raise ValueError(f"max_staleness must be {allowed} or None (unbounded), got {max_staleness!r}.")
    return max_staleness


def auto_max_staleness(num_workers: int, overlap: bool = False) -> int:
    """The default bound for ``num_workers`` workers: twice the steady-state staleness.

    .. math:: K = 2 (N - 1) \\quad\\text{or, with overlapped pushes,}\\quad K = 2 N

    With N equally fast workers an update's staleness is about N - 1 (each other worker applies once while it is
    computed), so K >= N - 1 is needed for no worker to wait; per-step jitter then still pushes some updates over
    N - 1, and ``"accumulate"`` folds those into the worker's next update (fewer, larger updates; more than half of
    the gradients at K = N - 1). Twice the steady-state staleness absorbs the jitter: in the simulator study
    (``benchmarks/bound_default.py``) no worker idles and at least 92% of gradients are applied on their own at
    N = 2 to 16, while K = N - 1 folds 55-88% of them and a fixed K = 4 idles 37% of the time at N = 8. With
    ``overlap`` (the parameter-server engine's pipelined pushes) a worker's own previous update lands between its
    read and its next update, so the steady-state staleness is N and the bound 2 N (measured with 4 processes:
    K = 6 deferred 40% of the pushes, K = 8 10%).
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}.")
    if num_workers == 1:
        return 0
    return 2 * num_workers if overlap else 2 * (num_workers - 1)


def resolve_max_staleness(max_staleness: int | str | None, num_workers: int, overlap: bool = False) -> int | None:
    """The bound to enforce: ``max_staleness`` itself, or :func:`auto_max_staleness` for ``"auto"``."""
    validate_max_staleness(max_staleness, allow_auto=True)
    if max_staleness == AUTO:
        return auto_max_staleness(num_workers, overlap)
    return max_staleness  # type: ignore[return-value]


def idle_warning(max_staleness: int | None, num_workers: int, bound_policy: str, overlap: bool = False) -> str | None:
    """A message when the bound must keep some of ``num_workers`` equally fast workers idle, else ``None``.

    At most ``K + 1`` reads can be in flight at once (a read is never newer than the version, so the i-th oldest is
    at least i versions stale when it is applied), so with ``N > K + 1`` the others wait their turn at
    every step (``"drop"`` gates nothing and never idles a worker).
    """
    if max_staleness is None or bound_policy == "drop" or num_workers <= max_staleness + 1:
        return None
    idle = num_workers - (max_staleness + 1)
    return (
        f"max_staleness={max_staleness} with {num_workers} workers: at most {max_staleness + 1} workers can compute "
        f"at once (each holds a read the bound must honour), so about {idle} of {num_workers} wait for the bound at "
        f"every step (up to {100 * idle / num_workers:.0f}% of the run's compute). Use max_staleness='auto' "
        f"({auto_max_staleness(num_workers, overlap)} here) or at least {num_workers - 1}, unless you want fresher "
        "updates at the cost of throughput."
    )


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

    def may_read(self, version: int, other_reads: Iterable[int], read_version: int | None = None) -> bool:
        """Whether a worker may start computing on the parameters of ``read_version`` (default ``version``) while
        ``version`` updates are admitted: a read of the committed parameters is behind the admitted ones while
        admitted updates are still being written."""
        if self.policy == "drop":
            return True
        read = version if read_version is None else read_version
        return is_feasible([*other_reads, read], version, self.max_staleness)

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
