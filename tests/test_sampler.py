"""The shared-cursor batch sampler: each batch once per epoch, and the running estimate of a worker's share."""

from __future__ import annotations

import itertools

from lightning_async._sampler import SharedCursorBatchSampler


class _Cursor:
    """An in-process stand-in for the engine's cursor: batches go out in order, to whoever asks first."""

    def __init__(self) -> None:
        self.next = 0

    def next_batch(self, epoch: int, num_batches: int) -> int | None:
        if self.next >= num_batches:
            return None
        self.next += 1
        return self.next - 1


def _samplers(workers: int) -> tuple[_Cursor, list[SharedCursorBatchSampler]]:
    cursor = _Cursor()
    samplers = [SharedCursorBatchSampler(120, 4, False, True, 0, cursor) for _ in range(workers)]
    for sampler in samplers:
        sampler.workers = workers
    return cursor, samplers


def test_before_the_first_batch_the_estimate_is_an_equal_share():
    _, samplers = _samplers(3)
    assert [s.estimated_length() for s in samplers] == [10, 10, 10]


def test_the_estimate_follows_a_worker_twice_as_fast_and_is_exact_at_the_end():
    _, (fast, slow) = _samplers(2)
    fast_it, slow_it = iter(fast), iter(slow)
    for _ in range(4):  # the fast worker takes two batches for each of the slow one's
        next(fast_it), next(fast_it), next(slow_it)
    # 2/3 and 1/3 of 30 batches, within the lag of each worker's last claim
    assert abs(fast.estimated_length() - 20) <= 2 and abs(slow.estimated_length() - 10) <= 1
    taken = {"fast": 8, "slow": 4}
    for name, it in itertools.cycle((("fast", fast_it), ("fast", fast_it), ("slow", slow_it))):
        if next(it, None) is None:
            break
        taken[name] += 1
    for rest in (fast_it, slow_it):
        taken["fast" if rest is fast_it else "slow"] += sum(1 for _ in rest)
    assert taken["fast"] + taken["slow"] == 30
    assert (fast.estimated_length(), slow.estimated_length()) == (taken["fast"], taken["slow"])
