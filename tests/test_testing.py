"""The test and benchmark callbacks of ``lightning_async.testing``, on a fake clock (no real sleeping)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lightning_async import testing
from lightning_async.testing import Slowdown


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(testing, "time", fake)
    return fake


def _steps(slowdown: Slowdown, clock: FakeClock, rank: int, n: int, gradient: float, update: float) -> None:
    """``n`` steps that take ``gradient`` seconds to compute and ``update`` seconds to apply (and fetch)."""
    trainer = SimpleNamespace(global_rank=rank)
    for i in range(n):
        slowdown.on_train_batch_start(trainer, None, None, i)
        clock.now += gradient
        slowdown.on_before_optimizer_step(trainer, None, None)
        clock.now += update
        slowdown.on_train_batch_end(trainer, None, None, None, i)


def test_only_the_gradient_computation_is_scaled_not_the_update_after_it(clock):
    slowdown = Slowdown(ranks=1, factor=4.0)
    # an engine whose update takes as long as the gradient: a k-times slower device still applies it as fast
    _steps(slowdown, clock, rank=1, n=10, gradient=0.010, update=0.010)
    assert slowdown.natural_step_seconds == pytest.approx(0.010)
    # four steps unslowed (three warm-up steps, then the first measured one), then 3 x the gradient time each
    assert clock.slept == [pytest.approx(3 * 0.010)] * 6


def test_warm_up_steps_are_not_slowed_and_other_ranks_never_are(clock):
    slowdown = Slowdown(ranks=1, factor=3.0, extra_seconds=0.002)
    _steps(slowdown, clock, rank=0, n=10, gradient=0.010, update=0.0)
    assert clock.slept == [] and slowdown.natural_step_seconds is None
    _steps(slowdown, clock, rank=1, n=5, gradient=0.010, update=0.0)
    # the first four steps (three warm-up steps, then the first measured one) sleep only the constant part
    assert clock.slept[:4] == [pytest.approx(0.002)] * 4
    assert clock.slept[4] == pytest.approx(2 * 0.010 + 0.002)
    assert slowdown.slept == pytest.approx(sum(clock.slept))


def test_the_natural_time_is_a_median_robust_to_a_hiccup(clock):
    slowdown = Slowdown(ranks=0, factor=2.0)
    _steps(slowdown, clock, rank=0, n=9, gradient=0.004, update=0.0)
    _steps(slowdown, clock, rank=0, n=1, gradient=0.500, update=0.0)  # one scheduling hiccup
    assert slowdown.natural_step_seconds == pytest.approx(0.004)


def test_with_gradient_accumulation_the_whole_window_is_the_gradient(clock):
    slowdown = Slowdown(ranks=0, factor=2.0)
    trainer = SimpleNamespace(global_rank=0)
    for step in range(8):
        for micro in range(2):  # two micro-batches of 5 ms each, then one optimizer step
            slowdown.on_train_batch_start(trainer, None, None, 2 * step + micro)
            clock.now += 0.005
            if micro == 1:
                slowdown.on_before_optimizer_step(trainer, None, None)
            slowdown.on_train_batch_end(trainer, None, None, None, 2 * step + micro)
    assert slowdown.natural_step_seconds == pytest.approx(0.010)


def test_the_strategys_read_as_the_step_starts_is_not_scaled(clock):
    """The strategy takes its reads (a wait for the parameters, a round trip with the parameter-server engine) in its
    own batch-start hook, after the callbacks': that wait is not gradient computation."""
    slowdown = Slowdown(ranks=1, factor=4.0)
    trainer = SimpleNamespace(global_rank=1, strategy=SimpleNamespace(read_seconds=0.0))
    for i in range(10):
        slowdown.on_train_batch_start(trainer, None, None, i)
        clock.now += 0.003  # the strategy's read
        trainer.strategy.read_seconds += 0.003
        clock.now += 0.010  # forward and backward
        slowdown.on_before_optimizer_step(trainer, None, None)
    assert slowdown.natural_step_seconds == pytest.approx(0.010)
    assert clock.slept[-1] == pytest.approx(3 * 0.010)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"factor": 0.5}, "factor must be >= 1"),
    ({"extra_seconds": -1.0}, "extra_seconds must be >= 0"),
    ({"ranks": -1}, "ranks must be non-negative integers"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Slowdown(**kwargs)
