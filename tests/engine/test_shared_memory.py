"""The shared-memory engine, driven in one process by two engine objects on the same shared directory.

Interleavings are written out step by step, so every assertion is about counters and versions, never timing.
"""

from __future__ import annotations

import secrets
import shutil

import pytest
import torch

from lightning_async._engine.shared_memory import SharedMemoryEngine
from lightning_async._engine.shm import run_directory
from lightning_async.errors import NonFiniteGradientError, WorkerTimeoutError


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


@pytest.fixture
def directory():
    path = run_directory(secrets.randbits(62))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _pair(directory, policy="accumulate", max_staleness=1, timeout=5.0, make_opt=None, workers=2):
    make_opt = make_opt or (lambda ps: torch.optim.SGD(ps, lr=0.1))
    engines, models = [], []
    for w in range(workers):
        model = _model()
        params = list(model.parameters())
        engine = SharedMemoryEngine(
            directory, w, workers, params, make_opt(params), create=(w == 0),
            max_staleness=max_staleness, bound_policy=policy, timeout=timeout, max_consecutive_nonfinite=3,
        )
        engines.append(engine)
        models.append(model)
    for engine in engines[1:]:
        engine.attach_state()
    for engine in engines:
        engine.start()
    return engines, models


def _grad_step(engine, model, x, samples=2):
    engine.begin_step(list(model.parameters()))
    model.zero_grad()
    model(x).pow(2).mean().backward()
    return engine.submit(list(model.parameters()), samples)


def _counters(engine):
    return engine.telemetry().counters


def test_one_worker_equals_the_plain_optimizer_loop(directory):
    x = torch.randn(5, 3, dtype=torch.float64)
    (engine,), (model,) = _pair(directory, max_staleness=0, workers=1,
                                make_opt=lambda ps: torch.optim.Adam(ps, lr=0.05))
    reference = _model()
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    for _ in range(20):
        assert _grad_step(engine, model, x) == "applied"
        ref_opt.zero_grad()
        reference(x).pow(2).mean().backward()
        ref_opt.step()
    engine.refresh(list(model.parameters()))
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), reference.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(engine.optimizer.state[p][key], ref_opt.state[q][key])
    assert engine.telemetry().staleness_histogram[0] == 20


def test_accumulate_defers_the_fast_worker_and_loses_no_gradient(directory):
    (e0, e1), (m0, m1) = _pair(directory, "accumulate", max_staleness=1)
    x = torch.randn(4, 3, dtype=torch.float64)
    e1.begin_step(list(m1.parameters()))  # the slow worker reads version 0 and keeps computing
    assert _grad_step(e0, m0, x) == "applied"  # version 1: the slow update would now have staleness 1
    assert _grad_step(e0, m0, x) == "deferred"  # version 2 would make it 2 > K
    assert _grad_step(e0, m0, x) == "deferred"
    m1.zero_grad()
    m1(x).pow(2).mean().backward()
    assert e1.submit(list(m1.parameters()), 2) == "applied"  # staleness 1
    assert _grad_step(e0, m0, x) == "applied"  # the three deferred gradients go in as one update
    c = _counters(e0)
    assert c["gradients"] == 5 and c["applied"] == 3 and c["deferred"] == 2 and c["received"] == 3
    assert c["samples"] == 5 * 2
    hist = e0.telemetry().staleness_histogram
    assert sum(hist) == c["applied"] and max(s for s, n in enumerate(hist) if n) <= 1
    assert e0.version == 3


def test_drop_discards_updates_beyond_the_bound(directory):
    (e0, e1), (m0, m1) = _pair(directory, "drop", max_staleness=1)
    x = torch.randn(4, 3, dtype=torch.float64)
    e1.begin_step(list(m1.parameters()))
    assert _grad_step(e0, m0, x) == "applied"
    assert _grad_step(e0, m0, x) == "applied"  # drop never holds the fast worker back
    before = [p.detach().clone() for p in e0.shared]
    m1.zero_grad()
    m1(x).pow(2).mean().backward()
    assert e1.submit(list(m1.parameters()), 2) == "rejected_stale"  # staleness 2 > 1
    assert all(torch.equal(a, b) for a, b in zip(before, e0.shared))
    c = _counters(e0)
    assert c["received"] == 3 and c["applied"] == 2 and c["rejected_stale"] == 1
    assert c["applied"] + c["rejected_stale"] + c["rejected_nonfinite"] == c["received"]


def test_wait_times_out_naming_the_worker_it_waits_for(directory):
    (e0, e1), (m0, m1) = _pair(directory, "wait", max_staleness=1, timeout=0.3)
    x = torch.randn(4, 3, dtype=torch.float64)
    e1.begin_step(list(m1.parameters()))
    assert _grad_step(e0, m0, x) == "applied"
    with pytest.raises(WorkerTimeoutError, match=r"worker 1 holds read version 0"):
        _grad_step(e0, m0, x)


def test_wait_gates_reads_so_max_staleness_zero_serializes_workers(directory):
    (e0, e1), (m0, m1) = _pair(directory, "wait", max_staleness=0, timeout=0.3)
    e0.begin_step(list(m0.parameters()))
    with pytest.raises(WorkerTimeoutError, match="take a read"):
        e1.begin_step(list(m1.parameters()))


def test_non_finite_gradients_never_reach_the_state_and_repeats_raise(directory):
    (e0, _), (m0, _) = _pair(directory, "accumulate", max_staleness=4,
                             make_opt=lambda ps: torch.optim.Adam(ps, lr=0.1))
    x = torch.randn(4, 3, dtype=torch.float64)
    assert _grad_step(e0, m0, x) == "applied"
    params = list(m0.parameters())
    for _ in range(2):
        e0.begin_step(params)
        for p in params:
            p.grad = torch.full_like(p, float("nan"))
        assert e0.submit(params, 2) == "rejected_nonfinite"
    for p in params:
        state = e0.optimizer.state[p]
        assert torch.isfinite(state["exp_avg"]).all() and torch.isfinite(state["exp_avg_sq"]).all()
    assert all(torch.isfinite(s).all() for s in e0.shared)
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    with pytest.raises(NonFiniteGradientError, match=r"worker 0 .* 3 times in a row"):
        e0.submit(params, 2)
    assert _counters(e0)["rejected_nonfinite"] == 3


def test_lazily_created_torch_state_is_shared_between_workers(directory):
    (e0, e1), (m0, m1) = _pair(directory, "accumulate", max_staleness=4,
                               make_opt=lambda ps: torch.optim.Adam(ps, lr=0.1))
    x = torch.randn(4, 3, dtype=torch.float64)
    assert _grad_step(e0, m0, x) == "applied"  # creates Adam's state and moves it to shared memory
    assert _grad_step(e1, m1, x) == "applied"  # must continue that state, not start its own
    p0, p1 = next(iter(m0.parameters())), next(iter(m1.parameters()))
    assert int(e0.optimizer.state[p0]["step"]) == 2
    assert torch.equal(e0.optimizer.state[p0]["exp_avg"], e1.optimizer.state[p1]["exp_avg"])
    e1.optimizer.state[p1]["exp_avg"].add_(1.0)  # one memory, seen by both
    assert torch.equal(e0.optimizer.state[p0]["exp_avg"], e1.optimizer.state[p1]["exp_avg"])


def test_snapshot_is_a_copy_and_restores_versions_and_counters(directory):
    (e0, e1), (m0, m1) = _pair(directory, "accumulate", max_staleness=4)
    x = torch.randn(4, 3, dtype=torch.float64)
    for _ in range(3):
        _grad_step(e0, m0, x)
    snap = e0.snapshot()
    assert snap["engine"]["version"] == 3 and snap["engine"]["counters"]["applied"] == 3
    _grad_step(e0, m0, x)
    assert not torch.equal(snap["params"][0], e0.shared[0])  # the snapshot does not alias shared memory
    e1.load_snapshot(snap)
    assert e0.version == 3 and _counters(e0)["applied"] == 3


def test_batch_cursor_hands_out_each_batch_once_per_epoch(directory):
    (e0, e1), _ = _pair(directory)
    for epoch in range(3):
        got = []
        for turn in range(20):
            engine = (e0, e1)[turn % 3 == 0]
            index = engine.next_batch(epoch, 10)
            if index is not None:
                got.append(index)
        assert sorted(got) == list(range(10)), epoch
    # a worker still in epoch 0 while another already started epoch 2 (same slot) gets nothing more
    assert e1.next_batch(4, 10) == 0
    assert e0.next_batch(2, 10) is None


def test_eagerly_initialised_state_of_async_optimizers_is_shared_from_the_start(directory):
    from lightning_async.optim import AsyncAdam

    x = torch.randn(4, 3, dtype=torch.float64)
    (e0, e1), (m0, m1) = _pair(directory, "accumulate", max_staleness=4, make_opt=lambda ps: AsyncAdam(ps, lr=0.1))
    assert all(e0._attached) and all(e1._attached)  # created by init_state() at setup, no lazy path
    assert _grad_step(e0, m0, x) == "applied"
    assert _grad_step(e1, m1, x) == "applied"
    p0, p1 = next(iter(m0.parameters())), next(iter(m1.parameters()))
    assert int(e1.optimizer.state[p1]["step"]) == 2
    assert torch.equal(e0.optimizer.state[p0]["exp_avg_sq"], e1.optimizer.state[p1]["exp_avg_sq"])


def test_a_deferred_gradient_survives_the_caller_zeroing_its_grads_in_place(directory):
    (e0, e1), (m0, m1) = _pair(directory, "accumulate", max_staleness=0,
                               make_opt=lambda ps: torch.optim.SGD(ps, lr=1.0))
    x = torch.randn(4, 3, dtype=torch.float64)
    e1.begin_step(list(m1.parameters()))  # forces e0's update to wait: K = 0 and e1 read first
    e0._view("reads")[0] = e0.version  # e0 holds a read of the same version (admitted by hand for the test)
    e0._read = e0.version
    m0.zero_grad()
    m0(x).pow(2).mean().backward()
    expected = [p.grad.clone() for p in m0.parameters()]
    assert e0.submit(list(m0.parameters()), 4) == "deferred"
    m0.zero_grad(set_to_none=False)  # in place: must not reach the deferred gradient
    assert all(torch.equal(p, g) for p, g in zip(e0._pending.grads, expected))


@pytest.mark.parametrize("lock_free", [False, True])
def test_writes_hold_the_write_lock_unless_lock_free(directory, lock_free):
    import fcntl
    import os

    seen = []

    class Probe(torch.optim.SGD):
        def step(self, closure=None):
            fd = os.open(directory / "write.lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                seen.append("held")
            finally:
                os.close(fd)
            return super().step(closure)

    model = _model()
    params = list(model.parameters())
    engine = SharedMemoryEngine(directory, 0, 1, params, Probe(params, lr=0.1), create=True, max_staleness=0,
                                bound_policy="wait", timeout=5.0, lock_free=lock_free)
    engine.start()
    assert _grad_step(engine, model, torch.randn(4, 3, dtype=torch.float64)) == "applied"
    assert seen == (["free"] if lock_free else ["held"])


def test_the_run_directory_is_private_to_its_owner(directory):
    engines, _ = _pair(directory)
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in directory.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by other users"
    for engine in engines:
        engine.close()


def test_an_abort_stops_a_peer_at_its_next_step_naming_the_cause(directory):
    from lightning_async.errors import RunAbortedError

    engines, models = _pair(directory)
    engines[1].abort("RuntimeError: out of memory")
    with pytest.raises(RunAbortedError, match=r"worker 1 stopped the run \(RuntimeError: out of memory\)"):
        _grad_step(engines[0], models[0], torch.randn(4, 3))
    assert "worker 1: failed (RuntimeError: out of memory)" in engines[0].describe_peers()


def test_a_stop_request_reaches_every_worker(directory):
    engines, _ = _pair(directory)
    assert not engines[0].stop_requested()
    engines[1].request_stop()
    assert engines[0].stop_requested() and engines[1].stop_requested()


def test_the_last_worker_out_removes_the_run_directory(directory):
    engines, _ = _pair(directory)
    assert engines[0].leave() is False and directory.exists()  # worker 1 is still using it
    assert engines[1].leave() is True and not directory.exists()
