"""The parameter-server engine: single-process exactness, wire format, and multi-process runs over gloo.

Multi-process scenarios run ``ps_helpers/worker.py`` in 2-3 subprocesses that rendezvous through a FileStore in
``tmp_path`` (no port races). Assertions are on counters, histograms and error messages, never on timing; every
subprocess wait has a timeout, and no test leaves a process behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from lightning_async._engine import ps_wire as wire
from lightning_async._engine.parameter_server import EVICTED_EXIT_CODE, ParameterServerEngine, assign_blocks
from lightning_async.errors import AsyncTrainingError

WORKER = Path(__file__).parent / "ps_helpers" / "worker.py"


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def _single(make_opt, max_staleness=0, policy="accumulate", max_consecutive_nonfinite=5):
    model = _model()
    params = list(model.parameters())
    engine = ParameterServerEngine(0, 1, params, make_opt(params), max_staleness=max_staleness,
                                   bound_policy=policy, timeout=5.0,
                                   max_consecutive_nonfinite=max_consecutive_nonfinite)
    engine.start()
    return engine, model, params


# ---------------------------------------------------------------------------------------------- one process
@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.Adam(ps, lr=0.05),
    lambda ps: torch.optim.SGD([{"params": ps[:2], "lr": 0.1}, {"params": ps[2:], "lr": 0.01}], momentum=0.9),
], ids=["adam", "sgd-two-groups"])
def test_one_worker_equals_the_plain_optimizer_loop(make_opt):
    x = torch.randn(5, 3, dtype=torch.float64)
    engine, model, params = _single(make_opt)
    reference = _model()
    ref_opt = make_opt(list(reference.parameters()))
    for _ in range(20):
        engine.begin_step(params)
        model.zero_grad()
        model(x).pow(2).mean().backward()
        assert engine.submit(params, 5) == "applied"
        ref_opt.zero_grad()
        reference(x).pow(2).mean().backward()
        ref_opt.step()
    engine.refresh(params)
    for p, q in zip(params, reference.parameters()):
        assert torch.equal(p, q)
    snap = engine.snapshot()
    ref_state = ref_opt.state_dict()["state"]
    assert sorted(snap["optimizer"]["state"]) == sorted(ref_state)
    for i, state in ref_state.items():
        for key, value in state.items():
            assert torch.equal(snap["optimizer"]["state"][i][key], value), key
    tele = engine.telemetry()
    assert tele.counters["applied"] == tele.counters["received"] == 20
    assert tele.staleness_histogram[0] == 20 and tele.counters["samples"] == 100
    assert not engine.optimizer.state  # the user's optimizer keeps no private state: the owner has it
    engine.finish(params)
    engine.close()


def test_snapshot_and_resume_continue_exactly(tmp_path):
    make_opt = lambda ps: torch.optim.Adam(ps, lr=0.05)  # noqa: E731
    xs = [torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(20)]

    def run(engine, model, params, batches):
        for x in batches:
            engine.begin_step(params)
            model.zero_grad()
            model(x).pow(2).mean().backward()
            engine.submit(params, 5)
        engine.end_epoch(params)

    straight = _single(make_opt)
    run(*straight, xs)
    first = _single(make_opt)
    run(*first, xs[:10])
    for epoch in range(2):
        first[0].next_batch(epoch, 100)
    snap = first[0].snapshot()
    path = tmp_path / "ckpt.pt"
    torch.save(snap, path)
    loaded = torch.load(path, weights_only=True)  # plain tensors, numbers, lists and dicts only
    # what the strategy does on resume: model weights and optimizer state into the user's objects, then adopt
    engine, model, params = _single(make_opt)
    with torch.no_grad():
        for p, value in zip(params, loaded["params"]):
            p.copy_(value)
    engine.optimizer.load_state_dict(loaded["optimizer"])
    engine.adopt_optimizer_state(is_creator=True)
    engine.load_snapshot(loaded["engine"])
    engine.attach_state()
    assert engine.version == 10 and engine.next_batch(1, 100) == 1
    run(engine, model, params, xs[10:])
    for p, q in zip(params, straight[2]):
        assert torch.equal(p, q)
    a, b = engine.snapshot(), straight[0].snapshot()
    for i in a["optimizer"]["state"]:
        for key in a["optimizer"]["state"][i]:
            assert torch.equal(a["optimizer"]["state"][i][key], b["optimizer"]["state"][i][key])
    assert a["engine"]["version"] == b["engine"]["version"] == 20
    assert a["engine"]["block_versions"] == b["engine"]["block_versions"]
    assert a["engine"]["counters"]["applied"] == 20


def test_nonfinite_gradients_are_rejected_before_touching_state_then_raise():
    from lightning_async.errors import NonFiniteGradientError

    engine, model, params = _single(lambda ps: torch.optim.Adam(ps, lr=0.05), max_consecutive_nonfinite=2)
    x = torch.randn(5, 3, dtype=torch.float64)
    engine.begin_step(params)
    model.zero_grad()
    model(x).pow(2).mean().backward()
    params[0].grad[0, 0] = float("nan")
    assert engine.submit(params, 5) == "rejected_nonfinite"
    engine.begin_step(params)  # the read is kept: same parameters
    with pytest.raises(NonFiniteGradientError, match="worker 0 produced non-finite gradients 2 times"):
        engine.submit(params, 5)
    tele = engine.telemetry()
    assert tele.counters["rejected_nonfinite"] == 2 and tele.counters["applied"] == 0
    assert not engine.authority.optimizer.state  # nothing reached the optimizer state


def test_configuration_errors_name_the_parameter():
    model = _model()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    kwargs = dict(max_staleness=1, bound_policy="wait", timeout=1.0)
    with pytest.raises(ValueError, match="on_worker_failure"):
        ParameterServerEngine(0, 1, params, opt, on_worker_failure="ignore", **kwargs)
    with pytest.raises(ValueError, match="owner_ranks"):
        ParameterServerEngine(0, 1, params, opt, owner_ranks=[3], **kwargs)
    with pytest.raises(ValueError, match="timeout"):
        ParameterServerEngine(0, 1, params, opt, max_staleness=1, bound_policy="wait", timeout=0)
    with pytest.raises(ValueError, match="bound_policy"):
        ParameterServerEngine(0, 1, params, opt, max_staleness=1, bound_policy="block", timeout=1.0)
    with pytest.raises(ValueError, match="overlap=True needs max_staleness >= 1"):
        ParameterServerEngine(0, 1, params, opt, max_staleness=0, bound_policy="drop", timeout=1.0, overlap=True)
    with pytest.raises(ValueError, match="overlap must be"):
        ParameterServerEngine(0, 1, params, opt, overlap="yes", **kwargs)
    with pytest.raises(ValueError, match="bound_policy='wait'"):
        ParameterServerEngine(0, 1, params, opt, max_staleness=2, bound_policy="wait", timeout=1.0, overlap=True)
    assert ParameterServerEngine(0, 1, params, opt, **kwargs).overlap is False  # automatic: K < 2, "wait"
    assert not ParameterServerEngine(0, 1, params, opt, max_staleness=2, bound_policy="wait", timeout=1.0).overlap
    assert ParameterServerEngine(0, 1, params, opt, max_staleness=2, bound_policy="drop", timeout=1.0).overlap
    if not torch.distributed.is_initialized():  # an earlier in-process Lightning run of the session may have done it
        with pytest.raises(RuntimeError, match="torch.distributed"):
            ParameterServerEngine(0, 2, params, opt, **kwargs)


def test_greedy_ownership_balances_bytes():
    assert assign_blocks([100, 10, 60, 50], [0, 1]) == {0: [0, 1], 1: [2, 3]}  # 110 bytes each
    assert assign_blocks([8, 8, 8, 8], [0, 1, 2]) == {0: [0, 3], 1: [1], 2: [2]}
    assert assign_blocks([5], [0, 1]) == {0: [0], 1: []}


def test_wire_round_trip_and_checks():
    blocks = [(0, 3, torch.randn(2, 3, dtype=torch.float64)), (2, 3, torch.arange(5, dtype=torch.float32))]
    parts = wire.pack(wire.PUSH, 1, 7, blocks=blocks, meta={"a": 1}, ints={wire.P_SAMPLES: 4})
    assert all(p.dtype in (torch.int64, torch.uint8) for p in parts)  # raw integers and bytes only
    payload = parts[3]
    message = wire.Message(parts[0], parts[1], {"a": 1}, payload)
    assert message[wire.P_KIND] == wire.PUSH and message[wire.P_SEQ] == 7 and message[wire.P_SAMPLES] == 4
    for i, (_, _, t) in enumerate(blocks):
        assert wire.row_matches(message.rows[i], t) is None and wire.payload_fits(message, i)
        assert torch.equal(wire.decode_block(message, i, t), t)
    assert "dtype" in wire.row_matches(message.rows[0], torch.zeros(2, 3, dtype=torch.float32))
    assert "shape" in wire.row_matches(message.rows[0], torch.zeros(3, 2, dtype=torch.float64))
    message.rows[1, wire.R_OFFSET] = payload.numel()  # points past the payload
    assert not wire.payload_fits(message, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tensors (staged through host memory over "
                    "gloo) need a GPU; none on this machine")
def test_cuda_parameters_one_worker():  # pragma: no cover - needs a GPU
    model = _model().cuda()
    params = list(model.parameters())
    engine = ParameterServerEngine(0, 1, params, torch.optim.SGD(params, lr=0.1), max_staleness=0,
                                   bound_policy="wait", timeout=5.0)
    engine.begin_step(params)
    model(torch.randn(2, 3, dtype=torch.float64, device="cuda")).sum().backward()
    assert engine.submit(params, 2) == "applied"


# ---------------------------------------------------------------------------------------------- processes
def _launch(tmp_path: Path, config: dict, timeout: float = 60.0) -> tuple[list[int], list[dict]]:
    config = {**config, "out": str(tmp_path), "init_file": str(tmp_path / "rendezvous")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), json.dumps(config), str(r)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for r in range(config["world"])
    ]
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    results = []
    for r in range(config["world"]):
        path = tmp_path / f"rank{r}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    for res in results:
        if res.get("pid"):
            assert not psutil.pid_exists(res["pid"]) or psutil.Process(res["pid"]).status() == "zombie"
    return codes, results


def _check_invariants(counters: dict, histogram: list[int], max_staleness: int) -> None:
    rejected = sum(v for k, v in counters.items() if k.startswith("rejected_"))
    assert counters["applied"] + rejected == counters["received"]
    assert counters["rejected"] == rejected
    assert sum(histogram) == counters["applied"]
    assert all(n == 0 for s, n in enumerate(histogram) if s > max_staleness)


_CHANNEL_PAIR = """
import json, sys, torch, torch.distributed as dist
from lightning_async._engine import ps_wire as wire
rank, init = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
group = dist.new_group([0, 1], backend="gloo")
channel = wire.Channel(group, 1 - rank, max_payload=1 << 20, inline=1024)
small = [(0, 3, torch.arange(6, dtype=torch.float64).reshape(2, 3))]  # one piece
large = [(1, 4, torch.arange(300, dtype=torch.float32)), (2, 4, torch.ones(5, dtype=torch.int64))]  # two pieces
for blocks, meta in ((small, None), (large, {"k": "v"}), (small, None)):
    if rank == 0:
        channel.send(wire.pack(wire.PUSH, 0, 1, blocks=blocks, meta=meta), 30.0)
    else:
        m = channel.receive(30.0)
        assert m[wire.P_KIND] == wire.PUSH and m.meta == (meta or {}), (m.header, m.meta)
        for i, (b, v, t) in enumerate(blocks):
            assert m.rows[i, wire.R_BLOCK] == b and m.rows[i, wire.R_VERSION] == v
            assert wire.row_matches(m.rows[i], t) is None and wire.payload_fits(m, i)
            assert torch.equal(wire.decode_block(m, i, t), t)
print("ok", rank)
dist.destroy_process_group()
"""


@pytest.mark.timeout(120)
def test_channel_sends_small_frames_in_one_piece_and_large_ones_in_two(tmp_path):
    script = tmp_path / "pair.py"
    script.write_text(_CHANNEL_PAIR)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "rendezvous")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for r, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"ok {r}" in out, err[-2000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["wait", "accumulate", "drop"])
def test_two_workers_keep_the_bound_under_a_straggler(tmp_path, policy):
    config = {"world": 2, "steps": [40, 12], "K": 1, "policy": policy, "slow_rank": 1, "delay": 0.03,
              "timeout": 10.0}
    if policy == "drop":  # faults from worker 1, each rejected and counted by reason
        config.update(nan=[1, 3], duplicate=[1, 5], bad_dtype=[1, 7])
    codes, (r0, r1) = _launch(tmp_path, config)
    assert codes == [0, 0], (r0.get("traceback"), r1.get("traceback"))
    counters, histogram = r0["counters"], r0["histogram"]
    _check_invariants(counters, histogram, max_staleness=1)
    assert counters["gradients"] == 52 and r0["all_finished"] and r0["finite"]
    assert r0["snapshot_matches_params"] and r0["snapshot_state_keys"] == [0, 1, 2, 3]
    assert r0["threads_alive"] == [] and r1["threads_alive"] == []
    engine_state = r0["snapshot_engine"]
    assert engine_state["counters"]["applied"] == counters["applied"]
    assert [o["rank"] for o in engine_state["owners"]] == [0, 1]
    for owner in engine_state["owners"]:  # each owner's version is the number of updates it applied
        applied = sum(row[1] for row in owner["counts"])
        assert owner["version"] == applied == sum(sum(h) for h in owner["hist"])
    if policy == "wait":
        assert counters["applied"] == 2 * 52 and counters["rejected"] == 0
    if policy == "accumulate":
        assert counters["rejected"] == 0 and counters["deferred"] > 0
        assert counters["applied"] + counters["deferred"] >= 2 * 52 - 4  # deferred gradients apply later, summed
    if policy == "drop":
        assert r1["duplicate_verdict"] == "rejected_duplicate" and counters["rejected_duplicate"] == 1
        assert r1["bad_dtype_verdict"] == r1["bad_shape_verdict"] == "rejected_schema"
        assert counters["rejected_schema"] == 2
        assert counters["rejected_nonfinite"] == 1  # one gradient, counted once (by the first owner)
        assert "rejected_nonfinite" in r1["verdicts"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["accumulate", "drop"])
def test_overlap_pipelines_remote_pushes_within_the_bound(tmp_path, policy):
    """With overlap a worker's pushes to the remote owner are sent and its next gradient computed meanwhile: each
    such update is at least one version stale (its own previous one lands in between), and the bound still holds."""
    K = 2
    config = {"world": 2, "steps": [40, 12], "K": K, "policy": policy, "slow_rank": 1, "delay": 0.03,
              "timeout": 10.0, "overlap": True}
    if policy == "drop":
        config.update(nan=[1, 3])  # a non-finite gradient travels the blocking path: both owners refuse it, one counts
    codes, (r0, r1) = _launch(tmp_path, config)
    assert codes == [0, 0], (r0.get("traceback"), r1.get("traceback"))
    counters, histogram = r0["counters"], r0["histogram"]
    _check_invariants(counters, histogram, max_staleness=K)
    assert counters["gradients"] == 52 and r0["all_finished"] and r0["finite"] and r0["snapshot_matches_params"]
    assert r0["threads_alive"] == [] and r1["threads_alive"] == []
    assert counters["overlapped"] > 0
    assert counters["rejected_version"] == 0 and counters["rejected_schema"] == 0  # every base as the owner expects
    # the slow worker's round trip is a small share of its 30 ms step: it stopped overlapping (fresher updates)
    assert r1["overlapping"] == {"0": False}
    if policy == "drop":  # reads are never gated: a pipeline starts at a worker's first step (a pair of reads)
        # and again after each dropped push (its reply brings no read); a pipelined update reaches its owner at
        # least one version stale except the first of a pipeline, so only those and local applies may be fresh
        starts = 2 + counters["rejected_stale"]
        assert histogram[0] <= counters["applied"] - counters["overlapped"] + starts
    if policy == "accumulate":
        assert counters["rejected"] == 0
        # a deferred gradient is summed into a later update: every gradient lands once per owner, in an update of
        # its own or deferred into one; an update still deferred at the end is applied by end_epoch (<= 1 per pair)
        assert 2 * 52 <= counters["applied"] + counters["deferred"] <= 2 * 52 + 4
    if policy == "drop":
        assert counters["rejected_nonfinite"] == 1 and counters["deferred"] == 0
        assert counters["applied"] + counters["rejected_stale"] == 2 * 52 - 2


@pytest.mark.timeout(120)
def test_deferred_updates_keep_their_gradients_when_the_caller_zeroes_them_in_place(tmp_path):
    """A deferred update keeps its gradients even when the caller zeroes them in place right after ``submit`` (as
    ``zero_grad(set_to_none=False)`` would). With a constant gradient and plain SGD each applied update, however many
    gradients it sums, moves every parameter of its owner by exactly -lr: one lost gradient would show as a half
    step. Covers the local owner's deferral and the remote one's, whose verdict comes with a reply taken at the
    next ``begin_step`` (blocking pushes, with overlap on: the fast worker's read reaches the bound's edge, and its
    next push is deferred, while the straggler sleeps)."""
    config = {"world": 2, "steps": [40, 12], "K": 2, "policy": "accumulate", "slow_rank": 1, "delay": 0.03,
              "timeout": 10.0, "overlap": True, "pipeline": False, "constant_grad": True, "zero_in_place": True}
    codes, (r0, r1) = _launch(tmp_path, config)
    assert codes == [0, 0], (r0.get("traceback"), r1.get("traceback"))
    counters, histogram = r0["counters"], r0["histogram"]
    _check_invariants(counters, histogram, max_staleness=2)
    assert counters["deferred"] > 0 and r0["late_deferred"] > 0  # both deferral paths were taken
    assert counters["rejected"] == 0 and 2 * 52 <= counters["applied"] + counters["deferred"] <= 2 * 52 + 4
    assert r0["sgd_exact"]


@pytest.mark.timeout(120)
def test_a_worker_the_others_barely_interleave_with_stops_overlapping(tmp_path):
    """Beside a straggler (30 ms steps, the bound loose enough never to gate the fast worker) the others apply far
    fewer than one update per step of the fast worker: overlap would make nearly all its updates one version
    staler, so it stops, after its first steps, and its later updates are fresh. Telemetry read every few steps
    (as a logger does) must not disturb that: its replies carry no version."""
    config = {"world": 2, "steps": [60, 12], "K": 50, "policy": "accumulate", "slow_rank": 1, "delay": 0.03,
              "timeout": 10.0, "overlap": True, "telemetry_every": 5}
    codes, (r0, r1) = _launch(tmp_path, config)
    assert codes == [0, 0], (r0.get("traceback"), r1.get("traceback"))
    counters = r0["counters"]
    assert r0["overlapping"] == {"1": False} and r1["overlapping"] == {"0": False}
    assert 0 < counters["overlapped"] <= 2 * 9  # each worker's first steps only (the rule needs 8 to decide)
    assert counters["rejected"] == 0
    # what the owners' replies report of the others' samples: the straggler sees the fast worker process several
    # samples per sample of its own (its 30 ms steps against a few ms), the fast worker a fraction of one
    assert r1["others_faster"]["0"] > 2.5 and r0["others_faster"]["1"] < 0.5


def _rule(share: float, others: float, faster: float, workers: int = 2) -> bool | None:
    """The overlap rule's decision for a worker that measured these (see OverlapRule.worthwhile)."""
    from lightning_async._engine.ps_overlap import OverlapRule

    step = 0.004
    rule = OverlapRule([1], workers)
    rule.others, rule.submits, rule.step_interval = {1: others}, 20, step
    rule.latency, rule.latency_piped = {1: share * step}, {1: 0.0}
    rule.others_samples, rule.own_samples = {1: faster * (workers - 1) * 320.0}, {1: 320.0}
    return rule.worthwhile(1)


@pytest.mark.parametrize(("share", "others", "faster", "workers", "expected"), [
    (0.45, 1.1, 1.0, 2, True),  # equal workers, a long round trip: overlap
    (0.10, 1.1, 1.0, 2, False),  # the round trip is a small share of the step: waiting costs little
    (0.45, 0.45, 0.45, 2, False),  # the fast worker beside a straggler: its updates would turn stale
    (0.35, 1.5, 2.3, 2, False),  # the straggler beside a fast worker: one more of its steps lets too much in
    (0.35, 4.5, 2.3, 4, False),  # the same among four workers (three fast ones)
    (0.45, 3.3, 1.1, 4, True),  # four equal workers
    (0.45, 1.1, 1.5, 2, None),  # between the thresholds: no change (hysteresis)
    (0.25, 1.1, 1.0, 2, None),
])
def test_overlap_rule_decisions(share, others, faster, workers, expected):
    assert _rule(share, others, faster, workers) is expected


@pytest.mark.timeout(120)
def test_crashed_worker_continue_survivors_finish_three_processes(tmp_path):
    config = {"world": 3, "steps": [30, 30, 30], "K": 1, "policy": "accumulate", "owners": [0, 1],
              "crash": [2, 4], "on_failure": "continue", "slow_rank": 0, "delay": 0.01, "timeout": 30.0}
    # a long timeout: the dead worker is detected at once (its channels close); a short one evicted a live but
    # starved survivor on a loaded 2-core machine (3 processes)
    codes, (r0, r1, r2) = _launch(tmp_path, config)
    assert codes[:2] == [0, 0] and codes[2] == 3, (r0.get("traceback"), r1.get("traceback"))
    counters = r0["counters"]
    _check_invariants(counters, r0["histogram"], max_staleness=1)
    assert counters["lost"] == 2  # worker 2 held a read at each of the two owners when it died: nothing else lost
    assert r0["all_finished"] and r0["finite"]
    assert len(r0["verdicts"]) == len(r1["verdicts"]) == 30


@pytest.mark.timeout(120)
@pytest.mark.parametrize("max_staleness", [1, 2])
def test_accumulate_with_three_owners_does_not_deadlock(tmp_path, max_staleness):
    # three workers that each own blocks, at uneven speeds: a worker that waited at one owner while it kept a read at
    # a higher one (for an update deferred there, or brought by a pipelined push's reply) could be what a peer
    # waiting there needed, while that peer held what the first waited for: a timeout after 10 s, in about one run
    # of this test in four (2 cores, a third process busy) before acquisition was kept in order in begin_step,
    # end_epoch and submit
    config = {"world": 3, "steps": 60, "K": max_staleness, "policy": "accumulate", "owners": [0, 1, 2],
              "jitter": 0.01 * max_staleness, "seed": max_staleness, "timeout": 10.0}
    codes, results = _launch(tmp_path, config)
    assert codes == [0, 0, 0], [r.get("message") for r in results]
    assert [len(r["verdicts"]) for r in results] == [60, 60, 60]
    r0 = results[0]
    _check_invariants(r0["counters"], r0["histogram"], max_staleness=max_staleness)
    assert r0["all_finished"] and r0["finite"]


@pytest.mark.timeout(120)
def test_crashed_worker_stop_names_the_rank(tmp_path):
    config = {"world": 2, "steps": [400, 30], "K": 1, "policy": "wait", "owners": [0], "crash": [1, 4],
              "on_failure": "stop", "slow_rank": 0, "delay": 0.01, "timeout": 3.0}
    codes, (r0, _) = _launch(tmp_path, config)
    assert codes == [1, 3]
    assert r0["error"] == "WorkerDiedError" and "worker 1 is no longer running" in r0["message"]
    assert r0["elapsed"] < 400 * 0.01  # stopped early, not after its own steps


@pytest.mark.timeout(120)
@pytest.mark.parametrize("on_failure", ["stop", "continue"])
def test_hung_worker_is_detected_by_the_timeout(tmp_path, on_failure):
    config = {"world": 2, "steps": [150, 30], "K": 0, "policy": "wait", "owners": [0], "hang": [1, 3, 6.0],
              "on_failure": on_failure, "slow_rank": 0, "delay": 0.02, "timeout": 1.0, "hang_timeout": 2.0}
    codes, (r0, r1) = _launch(tmp_path, config)
    if on_failure == "stop":
        assert codes[0] == 1 and r0["error"] == "WorkerTimeoutError"
        assert "worker 1 holds read" in r0["message"] or "worker 1 held a read" in r0["message"], r0["message"]
    else:
        assert codes[0] == 0, r0.get("traceback")
        assert len(r0["verdicts"]) == 150 and r0["counters"]["lost"] == 1
        _check_invariants(r0["counters"], r0["histogram"], max_staleness=0)
        # the owner drops the hung worker after about 1 s; its eviction watcher (polling every second) ends the
        # process with EVICTED_EXIT_CODE long before its 6 s hang is over, so it never writes a report
        assert codes[1] == EVICTED_EXIT_CODE and r1 == {}, (codes, r1)


@pytest.mark.timeout(120)
def test_death_of_an_owner_stops_the_run_with_its_rank(tmp_path):
    config = {"world": 2, "steps": [200, 30], "K": 1, "policy": "wait", "crash": [1, 4], "on_failure": "continue",
              "slow_rank": 0, "delay": 0.01, "timeout": 3.0}
    codes, (r0, _) = _launch(tmp_path, config)
    assert codes == [1, 3]
    assert r0["error"] == "WorkerDiedError" and "owner rank 1 (blocks [1, 2, 3])" in r0["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_torchrun_two_nodes_on_loopback(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to the interpreter")
    config = {"init": "env", "steps": 20, "K": 1, "policy": "wait", "timeout": 10.0, "out": str(tmp_path)}
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
             "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-backend", "static",
             "--max-restarts", "0", str(WORKER), json.dumps(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        for node in (0, 1)
    ]
    try:
        codes = [p.wait(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait(timeout=10)
    assert codes == [0, 0], [p.stderr.read().decode()[-2000:] for p in procs]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    _check_invariants(r0["counters"], r0["histogram"], max_staleness=1)
    assert r0["counters"]["applied"] == 2 * 2 * 20  # two workers, two owners, 20 steps each


def test_the_owners_optimizer_never_steps_the_users_parameters_under_an_lr_scheduler():
    """An LR scheduler patches ``optimizer.step`` with a wrapper bound to the user's optimizer; an owner's copy must
    not inherit it (it stepped the worker's live local parameters from a server thread mid-backward)."""
    from lightning_async._engine.ps_placement import _restricted_optimizer

    local = [torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.Adam(local, lr=0.1)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)
    shadows = {0: torch.nn.Parameter(torch.ones(3))}
    restricted, _ = _restricted_optimizer(optimizer, local, shadows)
    local[0].grad = torch.ones(3)
    shadows[0].grad = torch.ones(3)
    restricted.step()
    assert torch.equal(local[0].detach(), torch.ones(3))
    assert torch.allclose(shadows[0].detach(), torch.full((3,), 0.9))
    assert not optimizer.state and restricted.state


def _authority(max_staleness: int):
    """An owner's state for two workers, without processes or an engine: its context is all it needs."""
    from lightning_async._engine.bound import StalenessBound
    from lightning_async._engine.ps_owner import OwnerContext, _Authority

    params = [torch.nn.Parameter(torch.zeros(2))]
    context = OwnerContext(
        rank=0, num_workers=2, owner_ranks=[0], bound=StalenessBound(max_staleness, "accumulate"), timeout=1.0,
        hang_timeout=2.0, on_worker_failure="stop", histogram_bins=8, mark_gone=lambda w: None,
        own_wait=lambda seconds: None, interrupt=lambda: None,
    )
    return _Authority(context, [0], params, torch.optim.SGD(params, lr=0.1))


def test_a_pair_of_reads_is_granted_only_when_the_bound_admits_two_else_one_read():
    """Overlap starts from a pair of reads of one version. When the bound admits one more read but not two, a pair
    request gets one read (the worker computes one gradient and asks again) instead of waiting for two."""
    auth = _authority(max_staleness=1)
    assert auth.read(0, wire.READ_PAIR)[0::2] == (0, 2)  # alone: two reads of version 0
    auth.read(0, wire.RELEASE)
    assert auth.read(1, wire.READ_WAIT)[0::2] == (0, 1)  # another worker computes on version 0
    assert auth.read(0, wire.READ_PAIR)[0::2] == (0, 1)  # a pair would break K=1 when applied: one read
    # its update lands (version 1); the pair it asks for with it would be version 1 twice beside worker 1's read of
    # version 0, two applies away from the bound: again one read only
    verdict, version, params, reads = auth.push(
        0, 1, 0, [(0, torch.ones(2))], 4, wire.F_WANT_READ | wire.F_WANT_PAIR, None
    )
    assert (verdict, version, reads) == ("applied", 1, 1) and params is not None
    assert auth.reads == {1: [0], 0: [1]}
    auth.read(1, wire.RELEASE)  # worker 1 released its read: now the bound admits the pair
    verdict, version, _, reads = auth.push(0, 2, 1, [(0, torch.ones(2))], 4, wire.F_WANT_READ | wire.F_WANT_PAIR, None)
    assert (verdict, version, reads) == ("applied", 2, 2) and auth.reads == {0: [2, 2]}


def test_reply_layouts_are_checked_once_and_a_changed_layout_is_checked_again():
    engine, _, params = _single(lambda ps: torch.optim.SGD(ps, lr=0.1))
    local = [p.detach().clone() for p in params]

    def reply(tensors):
        parts = wire.pack(wire.RESPONSE, 0, 1, blocks=[(b, 7, t) for b, t in enumerate(tensors)])
        return wire.Message(prelude=parts[0], rows=parts[1], payload=parts[-1])

    for value in (1.0, 2.0):  # checked row by row, then recognised
        engine.client.copier.copy_reply(local, reply([torch.full_like(p, value) for p in params]), 0)
        assert all(torch.equal(q, torch.full_like(q, value)) for q in local)
    assert 0 in engine.client.copier.layouts
    wrong_shape = [p.detach().reshape(-1) if p.dim() > 1 else p.detach() for p in params]
    with pytest.raises(AsyncTrainingError, match="malformed parameter block"):
        engine.client.copier.copy_reply(local, reply(wrong_shape), 0)
    with pytest.raises(AsyncTrainingError, match="malformed parameter block"):  # blocks owned by another rank
        engine.client.copier.copy_reply(local, reply([p.detach() for p in params]), 1)
    engine.finish(params)
    engine.close()


@pytest.mark.parametrize(("workers", "owners"), [(4, None), (8, None), (16, None), (8, [0, 1])])
def test_pair_groups_are_made_by_their_two_ranks_in_one_global_order(monkeypatch, workers, owners):
    """Each rank makes only the groups it is in (at most 2 (N - 1), linear in N), in the order of the pairs, so a
    group's two ranks always meet at it: the set-up of every rank, replayed in one thread, never waits on a group
    whose peer has not reached it yet."""
    from lightning_async._engine import ps_placement as ps

    made: dict[int, list[tuple[str, int]]] = {}

    class FakeStore:
        def __init__(self, prefix: str, store: object) -> None:
            self.prefix = prefix

    class FakeGroup:
        def __init__(self, store: FakeStore, rank: int, size: int, timeout: object) -> None:
            assert size == 2
            made.setdefault(current[0], []).append((store.prefix, rank))

    monkeypatch.setattr(ps.dist, "PrefixStore", FakeStore)
    monkeypatch.setattr(ps.dist, "ProcessGroupGloo", FakeGroup)
    owner_ranks = list(range(workers)) if owners is None else owners
    current = [0]
    groups = {}
    for rank in range(workers):
        current[0] = rank
        groups[rank] = ps.pair_groups(rank, workers, owner_ranks, object(), "ns")
    for rank in range(workers):
        expected = {(c, o) for c in range(workers) for o in owner_ranks if c != o and rank in (c, o)}
        assert set(groups[rank]) == expected
        assert len(made[rank]) == len(expected) <= 2 * (workers - 1)
    # the two sides of a group: same store prefix, group ranks 0 (lower rank) and 1
    sides: dict[str, list[int]] = {}
    for entries in made.values():
        for prefix, group_rank in entries:
            sides.setdefault(prefix, []).append(group_rank)
    assert all(sorted(v) == [0, 1] for v in sides.values()), sides
    # replay the blocking creations: a rank may only pass a group once its peer has reached the same group
    cursor = {r: 0 for r in made}
    progress = True
    while progress:
        progress = False
        for rank, entries in made.items():
            if cursor[rank] == len(entries):
                continue
            prefix = entries[cursor[rank]][0]
            peer = next(r for r, es in made.items() if r != rank and any(p == prefix for p, _ in es))
            if cursor[peer] < len(made[peer]) and made[peer][cursor[peer]][0] == prefix:
                cursor[rank] += 1
                cursor[peer] += 1
                progress = True
    assert all(cursor[r] == len(made[r]) for r in made), "a rank would wait forever for a peer"
