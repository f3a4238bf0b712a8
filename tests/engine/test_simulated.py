"""The simulated engine: exactness, determinism, the staleness bound under each bound policy, counters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lightning_async._engine.simulated as simulated
from lightning_async._engine.records import APPLIED, REJECTED_NON_FINITE, REJECTED_STALE
from lightning_async._engine.simulated import SimulatedEngine, derive_seed

POLICIES = ("accumulate", "wait", "drop")
STRAGGLY = "linear:1:3+lognormal:0.5+straggler:0.05:8:5"


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).square().mean()


def sampler(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    return x, x.sum(1, keepdim=True).sin()


def engine(workers: int = 1, policy: str = "accumulate", k: int | None = 0, seed: int = 0, opt: str = "adam",
           **kwargs: object) -> SimulatedEngine:
    model = make_model()
    optimizer = {
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    }[opt](model.parameters())
    return SimulatedEngine(model, optimizer, mse, sampler, workers=workers, max_staleness=k, bound_policy=policy,
                           seed=seed, **kwargs)


def params(e: SimulatedEngine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in e.model.parameters()]


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5),
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_one_worker_no_staleness_equals_plain_loop(name: str, policy: str) -> None:
    batches = [sampler(torch.Generator().manual_seed(i)) for i in range(7)]
    plain_model = make_model()
    plain_opt = OPTIMIZERS[name](plain_model.parameters())
    for i in range(20):
        plain_opt.zero_grad()
        mse(plain_model, batches[i % 7]).backward()
        plain_opt.step()

    model = make_model()
    opt = OPTIMIZERS[name](model.parameters())
    e = SimulatedEngine(model, opt, mse, batches, workers=1, max_staleness=0, bound_policy=policy,
                        speeds=STRAGGLY, blocks="tensor", selection="all")
    e.run(20)
    for a, b in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    for pa, pb in zip(plain_model.parameters(), model.parameters()):
        for key, value in plain_opt.state[pa].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt.state[pb][key])), key
    assert e.counters.staleness_histogram == {0: 20}
    assert e.versions == [20] * 4


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_trajectory_bit_for_bit(policy: str) -> None:
    kwargs = dict(workers=8, policy=policy, k=3, speeds=STRAGGLY, selection="random", seed=5)
    a, b = engine(**kwargs), engine(**kwargs)  # type: ignore[arg-type]
    a.run(150)
    b.run(150)
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))
    assert a.records == b.records
    assert a.counters == b.counters
    assert a.virtual_time == b.virtual_time
    c = engine(**{**kwargs, "seed": 6})  # type: ignore[arg-type]
    c.run(150)
    assert not all(torch.equal(x, y) for x, y in zip(params(a), params(c)))


@pytest.mark.parametrize("policy", POLICIES)
def test_continued_run_equals_one_run(policy: str) -> None:
    kwargs = dict(workers=6, policy=policy, k=2, speeds=STRAGGLY, selection="cyclic", seed=1)
    a, b = engine(**kwargs), engine(**kwargs)  # type: ignore[arg-type]
    a.run(120)
    b.run(50)
    b.run(70)
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))
    assert a.records == b.records


@pytest.mark.parametrize("selection", ["all", "random"])
@pytest.mark.parametrize("k", [0, 2, 5])
@pytest.mark.parametrize("policy", POLICIES)
def test_bound_never_exceeded_and_counters_consistent(policy: str, k: int, selection: str) -> None:
    e = engine(workers=12, policy=policy, k=k, speeds=STRAGGLY, selection=selection, seed=k)
    state = e.run(200)
    assert state.applied == 200 and state.stopped_by == "steps"
    c = e.counters
    c.check()
    assert c.applied + c.rejected_total == c.received
    assert sum(c.staleness_histogram.values()) == c.applied
    assert max(c.staleness_histogram) <= k
    applied = [r for r in e.records if r.verdict == APPLIED]
    assert applied and max(r.staleness for r in applied) <= k
    assert sum(e.versions) == len(applied)
    if policy == "drop":
        stale = [r for r in e.records if r.verdict == REJECTED_STALE]
        assert c.rejected.get(REJECTED_STALE, 0) > 0
        assert all(r.staleness > k for r in stale)
    else:
        assert c.rejected_total == 0


def test_histogram_reaches_the_bound_under_contention() -> None:
    e = engine(workers=16, policy="wait", k=4, speeds="linear:1:4")
    e.run(200)
    assert max(e.counters.staleness_histogram) == 4


@pytest.mark.parametrize("policy", ["accumulate", "wait"])
def test_zero_bound_serializes_workers(policy: str) -> None:
    e = engine(workers=4, policy=policy, k=0, speeds="const:1")
    e.run(40)
    assert e.counters.staleness_histogram == {0: 40}
    assert e.virtual_time == pytest.approx(40.0)  # one computation at a time: the others waited
    assert e.wait_time > 0
    # one worker computes at a time, so the others wait 3/4 of the time; most of those waits are still open at the
    # end (the ended ones alone undercount it, more so the more workers wait)
    assert e.total_wait_time() / (4 * e.virtual_time) == pytest.approx(0.75, abs=0.02)
    assert e.total_wait_time() > e.wait_time


def test_accumulate_loses_no_work_and_sums_gradients() -> None:
    e = engine(workers=8, policy="accumulate", k=1, speeds="linear:1:6")
    e.run(100)
    applied_samples = sum(r.samples for r in e.records if r.block == 0)
    assert e.counters.samples_applied == applied_samples
    # every computation that finished is in an applied update or still pending in a worker
    pending = sum(w.pending.count for w in e._state if w.reads)
    assert e.counters.samples_applied // 5 + pending == e.computations
    assert e.counters.samples_applied > 5 * e.counters.applied  # some updates accumulated several batches


def test_unbounded_staleness() -> None:
    e = engine(workers=8, policy="wait", k=None, speeds="linear:1:8")
    e.run(100)
    assert max(e.counters.staleness_histogram) > 7
    assert e.counters.rejected_total == 0


def test_drop_guard_stops_runaway() -> None:
    e = engine(workers=16, policy="drop", k=0, speeds="const:1")
    state = e.run(50, max_received=200)
    assert state.stopped_by == "max_received"
    assert e.counters.received == 200


def test_asynchronous_optimizer_receives_staleness(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None, *, staleness=0):  # type: ignore[override]
            seen.append(staleness)
            return super().step(closure)

    monkeypatch.setattr(simulated, "_accepts_staleness", lambda opt: isinstance(opt, Recording))
    model = make_model()
    e = SimulatedEngine(model, Recording(model.parameters(), lr=1e-2), mse, sampler, workers=6, max_staleness=3,
                        speeds=STRAGGLY)
    e.run(60)
    assert seen == [r.staleness for r in e.records if r.block == 0 and r.verdict == APPLIED]
    assert max(seen) > 0


def test_real_async_optimizer_if_available() -> None:
    optim = pytest.importorskip("lightning_async.optim")
    if not hasattr(optim, "AsyncAdam"):
        pytest.skip("lightning_async.optim.AsyncAdam has not landed")
    batches = [sampler(torch.Generator().manual_seed(i)) for i in range(5)]
    plain_model, model = make_model(), make_model()
    plain = optim.AsyncAdam(plain_model.parameters(), lr=1e-2)
    for i in range(10):
        plain.zero_grad()
        mse(plain_model, batches[i % 5]).backward()
        plain.step(staleness=0)
    e = SimulatedEngine(model, optim.AsyncAdam(model.parameters(), lr=1e-2), mse, batches)
    e.run(10)
    assert e.summary()["optimizer_receives_staleness"]
    for a, b in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_random_and_cyclic_selection_update_one_block() -> None:
    for selection in ("random", "cyclic"):
        e = engine(workers=3, policy="wait", k=2, selection=selection, speeds="const:1")
        e.run(60)
        assert len(e.records) == 60  # one block per update (blocks do not overlap)
        assert sum(e.versions) == 60
        assert all(v > 0 for v in e.versions)
    e = engine(workers=1, policy="wait", k=0, selection="cyclic")
    e.run(8)
    assert [r.block for r in e.records] == [0, 1, 2, 3, 0, 1, 2, 3]


def overlapping(overlap: str) -> SimulatedEngine:
    model = make_model()
    groups = [["0.weight", "0.bias"], ["0.bias", "2.weight", "2.bias"]]
    return SimulatedEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, sampler, blocks=groups,
                           selection="cyclic", overlap=overlap, max_staleness=0, bound_policy="wait")


def test_overlapping_blocks_rule() -> None:
    start = params(overlapping("sum"))
    s, a = overlapping("sum"), overlapping("average")
    s.run(1)
    a.run(1)
    # block 0 = {0.weight, 0.bias}: 0.bias is shared (multiplicity 2), so "average" halves its step
    torch.testing.assert_close(params(a)[1] - start[1], (params(s)[1] - start[1]) / 2, rtol=1e-12, atol=0)
    assert torch.equal(params(a)[0], params(s)[0])
    assert torch.equal(params(a)[2], start[2])
    # an update of block 0 writes the shared tensor, so it advances the version of block 1 as well
    assert s.versions == [1, 1]
    assert {(r.block, r.verdict) for r in s.records} == {(0, APPLIED), (1, APPLIED)}


def test_non_finite_gradient_rejected_then_error() -> None:
    calls = {"n": 0}

    def sometimes_nan(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        loss = mse(model, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    model = make_model()
    e = SimulatedEngine(model, torch.optim.SGD(model.parameters(), lr=1e-2), sometimes_nan, sampler)
    e.run(5)
    assert e.counters.rejected == {REJECTED_NON_FINITE: 1}
    assert e.counters.received == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())

    model = make_model()
    e = SimulatedEngine(model, torch.optim.SGD(model.parameters(), lr=1e-2), lambda m, b: mse(m, b) / 0 * 0,
                        sampler, workers=2, max_non_finite=2)
    with pytest.raises(RuntimeError, match="worker 0 produced non-finite gradients 2 times in a row"):
        e.run(5)


def test_iterable_data_is_cycled_and_derived_seeds_differ() -> None:
    batches = [sampler(torch.Generator().manual_seed(i)) for i in range(3)]
    model = make_model()
    e = SimulatedEngine(model, torch.optim.SGD(model.parameters(), lr=1e-2), mse, batches)
    e.run(7)
    assert e.counters.applied == 7
    assert len({derive_seed(0, s) for s in ("data", "speeds", "selection")}) == 3
    assert derive_seed(0, "data") == derive_seed(0, "data")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": 0}, r"workers must be an integer >= 1, got 0"),
        ({"overlap": "max"}, r"overlap must be one of"),
        ({"bound_policy": "block"}, r"bound_policy must be one of"),
        ({"max_staleness": -1}, r"max_staleness must be a non-negative integer"),
        ({"speeds": "linear:1"}, r"--speeds / speeds='linear:1'.*takes 2 argument"),
        ({"blocks": [["0.weight", "nope"]]}, r"\['nope'\] are not trainable parameters"),
        ({"blocks": [["0.weight"]]}, r"in no group and would never be updated"),
        ({"selection": "greedy"}, r"selection must be one of"),
        ({"accumulate_reduction": "max"}, r"accumulate_reduction must be one of"),
    ],
)
def test_invalid_arguments_name_the_parameter(kwargs: dict[str, object], match: str) -> None:
    model = make_model()
    with pytest.raises(ValueError, match=match):
        SimulatedEngine(model, torch.optim.SGD(model.parameters(), lr=1e-2), mse, sampler, **kwargs)  # type: ignore[arg-type]


def test_optimizer_must_hold_the_model_parameters() -> None:
    model, other = make_model(), make_model()
    with pytest.raises(ValueError, match="build it on model.parameters"):
        SimulatedEngine(model, torch.optim.SGD(other.parameters(), lr=1e-2), mse, sampler)


def test_mean_reduction_divides_accumulated_gradients() -> None:
    a = engine(workers=8, policy="accumulate", k=1, speeds="linear:1:6", opt="sgd", accumulate_reduction="mean")
    b = engine(workers=8, policy="accumulate", k=1, speeds="linear:1:6", opt="sgd", accumulate_reduction="sum")
    a.run(50)
    b.run(50)
    assert a.counters.staleness_histogram == b.counters.staleness_histogram
    assert not all(torch.equal(x, y) for x, y in zip(params(a), params(b)))


def test_summary_is_json_ready() -> None:
    import json

    e = engine(workers=4, policy="drop", k=1, speeds=STRAGGLY)
    e.run(30)
    json.dumps(e.summary())
    assert e.summary()["counters"]["applied"] == 30
    assert copy.deepcopy(e.counters) == e.counters


@pytest.mark.parametrize("policy", POLICIES)
def test_telemetry_is_the_real_engines_report(policy: str) -> None:
    """The simulator reports in the same Telemetry as both real engines: counters that add up, per-worker rows
    whose samples sum to the applied samples, and a histogram whose total is the applied count."""
    e = engine(workers=8, policy=policy, k=2, speeds="linear:1:4", seed=3)
    e.run(120)
    tele = e.telemetry()
    c = tele.counters
    assert c["applied"] == 120 and c["applied"] + c["rejected"] == c["received"]
    assert c["rejected"] == c["rejected_stale"] + c["rejected_nonfinite"]
    assert c["gradients"] == e.computations and c["gradients"] >= c["received"]
    assert sum(tele.staleness_histogram) == c["applied"] and tele.staleness_max <= 2
    assert sum(row["samples"] for row in tele.per_worker) == c["samples"] == e.counters.samples_applied
    assert sum(row["gradients"] for row in tele.per_worker) == c["gradients"]
    assert tele.version == max(e.versions) and tele.extra["engine"] == "simulated"
    waits = [row["wait_seconds"] for row in tele.per_worker]
    assert sum(waits) == pytest.approx(e.total_wait_time())
    if policy == "accumulate":
        assert c["deferred"] > 0 and c["gradients"] > c["received"]
    if policy == "drop":
        assert c["rejected_stale"] > 0 and sum(waits) == 0
    assert "8 workers" in tele.summary() and "async/worker7/wait_fraction" in tele.metrics()
