"""The staleness bound's integer logic, as tables: feasibility, admission per policy, the default bound, the warning."""

from __future__ import annotations

import pytest

from lightning_async._engine.bound import (
    AUTO,
    StalenessBound,
    auto_max_staleness,
    idle_warning,
    is_feasible,
    resolve_max_staleness,
    validate_bound_policy,
    validate_max_staleness,
)


@pytest.mark.parametrize(
    ("reads", "version", "k", "feasible"),
    [
        ([], 0, 0, True),
        ([0], 0, 0, True),
        ([0, 0], 0, 0, False),  # the second read would be applied one version stale
        ([0, 0], 0, 1, True),
        ([0, 0, 0], 0, 1, False),
        ([0, 0, 0], 0, 2, True),
        ([3, 5], 5, 2, True),  # 5 + 0 - 3 = 2, 5 + 1 - 5 = 1
        ([3, 5], 5, 1, False),
        ([5, 3], 5, 2, True),  # order of the input does not matter: applied oldest first
        ([0] * 9, 0, 8, True),  # K + 1 reads of one version is the most the bound admits
        ([0] * 10, 0, 8, False),
        ([0, 0, 0], 0, None, True),  # unbounded
    ],
)
def test_feasibility(reads, version, k, feasible):
    assert is_feasible(reads, version, k) is feasible


@pytest.mark.parametrize(
    ("policy", "version", "others", "k", "may"),
    [
        ("accumulate", 0, [0] * 4, 4, True),  # the fifth read of version 0 at K = 4
        ("accumulate", 0, [0] * 5, 4, False),  # the sixth: waits its turn
        ("wait", 0, [0] * 5, 4, False),
        ("drop", 0, [0] * 5, 4, True),  # drop gates no read
        ("accumulate", 3, [1], 1, False),  # 3 + 0 - 1 = 2 > 1
        ("accumulate", 3, [2], 1, True),
    ],
)
def test_may_read(policy, version, others, k, may):
    assert StalenessBound(k, policy).may_read(version, others) is may


@pytest.mark.parametrize(
    ("policy", "version", "read", "others", "k", "may"),
    [
        ("accumulate", 3, 3, [2], 1, True),  # the committed parameters are the admitted ones
        ("accumulate", 3, 2, [2], 1, False),  # two admitted updates still being written: 3 + 1 - 2 = 2 > 1
        ("wait", 3, 2, [], 1, True),  # alone, one behind: staleness 1 <= 1
        ("wait", 3, 1, [], 1, False),
        ("drop", 3, 0, [0], 1, True),
    ],
)
def test_may_read_behind_the_admitted_version(policy, version, read, others, k, may):
    """The shared-memory engine reads the committed parameters while admitted updates may still be written."""
    assert StalenessBound(k, policy).may_read(version, others, read_version=read) is may


@pytest.mark.parametrize(
    ("policy", "version", "read", "others", "k", "may"),
    [
        ("accumulate", 2, 0, [], 2, True),  # staleness 2 <= 2
        ("accumulate", 3, 0, [], 2, False),  # staleness 3 > 2: deferred
        ("wait", 3, 0, [], 2, False),
        ("drop", 3, 0, [], 2, False),  # discarded
        ("drop", 2, 0, [0, 0, 0], 2, True),  # drop checks only this update's own staleness
        ("accumulate", 2, 2, [0], 2, False),  # applying would push the older read over the bound
        ("accumulate", 1, 1, [0], 2, True),
        ("wait", 5, 1, [], None, True),  # unbounded
    ],
)
def test_may_apply(policy, version, read, others, k, may):
    assert StalenessBound(k, policy).may_apply(version, read, others) is may


def test_the_oldest_read_can_always_apply_from_a_feasible_set():
    # the invariant that makes the policies deadlock-free: from every feasible set of reads, the oldest may apply,
    # and the set left after it is feasible again
    for k in range(0, 5):
        bound = StalenessBound(k, "wait")
        for version in range(0, 6):
            for reads in _read_sets(version, k + 2):
                if not reads or not is_feasible(reads, version, k):
                    continue
                oldest, *rest = sorted(reads)
                assert bound.may_apply(version, oldest, rest), (k, version, reads)
                assert is_feasible(rest, version + 1, k)


def _read_sets(version: int, size: int) -> list[list[int]]:
    sets: list[list[int]] = [[]]
    for _ in range(size):
        sets = [s + [r] for s in sets for r in range(max(version - 4, 0), version + 1) if not s or r >= s[-1]]
    return sets


@pytest.mark.parametrize(
    ("workers", "overlap", "k"),
    [(1, False, 0), (2, False, 2), (4, False, 6), (8, False, 14), (16, False, 30),
     (1, True, 0), (2, True, 4), (4, True, 8), (8, True, 16)],
)
def test_auto_is_twice_the_steady_state_staleness(workers, overlap, k):
    assert auto_max_staleness(workers, overlap) == k
    assert resolve_max_staleness(AUTO, workers, overlap) == k


@pytest.mark.parametrize("value", [0, 3, None])
def test_explicit_bounds_are_kept(value):
    assert resolve_max_staleness(value, 8) == value


@pytest.mark.parametrize("value", [-1, 1.5, True, "four", "AUTO"])
def test_bad_max_staleness_names_the_parameter_and_the_choices(value):
    with pytest.raises(ValueError, match=r"max_staleness must be .*'auto'.*got"):
        validate_max_staleness(value, allow_auto=True)


def test_auto_is_refused_where_no_worker_count_is_known():
    with pytest.raises(ValueError, match="max_staleness must be a non-negative integer or None"):
        validate_max_staleness(AUTO)


def test_bad_bound_policy_lists_the_choices():
    with pytest.raises(ValueError, match=r"bound_policy must be one of \('accumulate', 'wait', 'drop'\)"):
        validate_bound_policy("sometimes")


@pytest.mark.parametrize(
    ("k", "workers", "policy", "warns"),
    [(4, 8, "accumulate", True), (4, 8, "wait", True), (4, 8, "drop", False), (7, 8, "accumulate", False),
     (0, 2, "wait", True), (0, 1, "wait", False), (None, 16, "wait", False), (14, 8, "accumulate", False)],
)
def test_idle_warning(k, workers, policy, warns):
    message = idle_warning(k, workers, policy)
    assert (message is not None) is warns
    if warns:
        assert f"max_staleness={k} with {workers} workers" in message
        assert f"at most {k + 1} workers can compute at once" in message
        assert f"'auto' ({auto_max_staleness(workers)} here)" in message
