"""``AsyncAdaptiveStrategy(engine="parameter_server")`` end to end through Lightning.

The one-worker equality runs in-process. Multi-worker runs launch ``tests/helpers/train_script.py`` in their own
processes: 2 workers on one node (Lightning's popen launcher), 2 "nodes" x 1 process on loopback launched by
``torchrun --nnodes 2`` (Lightning sees a torchelastic environment) and by Lightning itself with ``num_nodes=2``
(the script started twice with ``NODE_RANK=0/1``). Assertions are on counters, records and exit codes, never on
timing. Every child gets a scrubbed environment (no inherited Lightning launch variables) and a bounded wait.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from lightning_async import AsyncAdaptiveStrategy
from tests.test_strategy import (
    N_SAMPLES,
    _assert_process_groups_destroyed_at_exit,
    _fit,
    _no_process_left,
    _reports,
    _run_script,
)

SCRIPT = Path(__file__).parent / "helpers" / "train_script.py"
LAUNCH_VARS = (
    "LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "RANK",
    "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
)
PS = ("--engine", "parameter_server")


# ---------------------------------------------------------------------------------------------- helpers
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections("tcp")
    )


def _launch_nodes(tmp_path: Path, command: list[list[str]], timeout: float) -> tuple[list[int], list[str]]:
    """Start one process per "node" (each in its own session), wait for all (bounded), kill what is left."""
    procs = [
        subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
        for cmd, env in command  # type: ignore[misc]
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    return [p.returncode for p in procs], outputs


def _lightning_two_nodes(tmp_path: Path, *args: str, timeout: float = 90.0) -> tuple[list[int], list[str], int]:
    """The script twice, NODE_RANK=0/1, Trainer(num_nodes=2, devices=1), on loopback."""
    for _ in range(3):
        port = _free_port()
        cmds = [
            ([sys.executable, str(SCRIPT), "--out", str(tmp_path), *PS, "--num-nodes", "2", "--devices", "1", *args],
             _env(NODE_RANK=str(node), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
            for node in (0, 1)
        ]
        codes, outputs = _launch_nodes(tmp_path, cmds, timeout)
        if "address already in use" not in "".join(outputs).lower():
            return codes, outputs, port
    return codes, outputs, port


def _assert_counters(telemetry: dict, max_staleness: int) -> None:
    c = telemetry["counters"]
    rejected = sum(v for k, v in c.items() if k.startswith("rejected_"))
    assert c["applied"] + rejected == c["received"]
    # honest workers never send a base the owner does not expect, nor a malformed update
    assert c["rejected_version"] == 0 and c["rejected_schema"] == 0, c
    hist = telemetry["histogram"]
    assert sum(hist) == c["applied"]
    assert all(n == 0 for s, n in enumerate(hist) if s > max_staleness), hist


#: rank 1 died, as rank 0 reports it: its client side finds owner 1 unreachable, or its owner side (server thread)
#: sees worker 1's connection close first; which one comes first is a race, both name rank 1
RANK1_DIED = re.compile(
    r"WorkerDiedError: (owner rank 1 \(blocks .*\) is no longer reachable|worker 1 is no longer running)"
)


def _each_sample_once(r0: dict, r1: dict, epoch: str, n: int = N_SAMPLES) -> None:
    seen = r0["seen"].get(epoch, []) + r1["seen"].get(epoch, [])
    assert sorted(seen) == list(range(n)), f"epoch {epoch}: each sample exactly once"


# ---------------------------------------------------------------------------------------------- one worker
@pytest.mark.timeout(60)
def test_one_worker_max_staleness_zero_equals_the_shared_memory_engine_bit_for_bit(tmp_path):
    common = dict(precision="64-true", gradient_clip_val=0.5, accumulate_grad_batches=2, max_epochs=2)
    shared, t_shared = _fit(AsyncAdaptiveStrategy(max_staleness=0, bound_policy="wait"), tmp_path / "shm", **common)
    strategy = AsyncAdaptiveStrategy(max_staleness=0, bound_policy="wait", engine="parameter_server")
    ps, t_ps = _fit(strategy, tmp_path / "ps", **common)
    for (name, p), q in zip(shared.named_parameters(), ps.parameters()):
        assert p.dtype == torch.float64
        assert torch.equal(p, q), name
    a, b = t_shared.strategy.telemetry, t_ps.strategy.telemetry
    assert a.counters["applied"] == b.counters["applied"] == 2 * 96 // 16
    assert b.staleness_histogram[0] == b.counters["applied"] and b.counters["samples"] == 2 * 96
    # the step scheduler followed the same global progress
    assert t_shared.lr_scheduler_configs[0].scheduler.last_epoch == t_ps.lr_scheduler_configs[0].scheduler.last_epoch


# ---------------------------------------------------------------------------------------------- one node, 2 workers
@pytest.mark.timeout(120)
def test_two_workers_on_one_node_train_use_every_sample_once_and_sync_metrics(tmp_path):
    # a logger every 4 steps: rank 0 alone asks every owner for telemetry mid-training (owners answer from their
    # server threads, whatever their main thread is doing)
    result = _run_script(tmp_path, *PS, "--epochs", "2", "--max-staleness", "4", "--bound-policy", "wait",
                         "--log-every-n-steps", "4", timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = _reports(tmp_path)
    for epoch in ("0", "1"):
        _each_sample_once(r0, r1, epoch)
    assert r0["metrics"]["val_mse"] == pytest.approx(r1["metrics"]["val_mse"])  # epoch-end collectives work
    assert r0["epoch_losses"][-1] < r0["epoch_losses"][0]
    assert not r0["non_finite"] and not r1["non_finite"]
    telemetry = r0["telemetry"]
    _assert_counters(telemetry, 4)
    c = telemetry["counters"]
    steps = r0["steps"] + r1["steps"]
    assert c["gradients"] == steps == 2 * N_SAMPLES // 16
    assert c["samples"] == 2 * N_SAMPLES  # counted once (by the first owner)
    assert c["applied"] == 2 * steps and c["rejected"] == 0  # "wait": every gradient applied at both owners
    applied = [float(row["async/applied"]) for row in _csv_rows(tmp_path / "logs") if row.get("async/applied")]
    assert len(applied) > 4 and applied == sorted(applied) and applied[-1] == c["applied"]
    assert _no_process_left(tmp_path)
    _assert_process_groups_destroyed_at_exit(tmp_path)


def _csv_rows(root: Path) -> list[dict]:
    import csv

    (path,) = root.rglob("metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("policy", ["accumulate", "wait", "drop"])
def test_the_bound_holds_under_a_straggler(tmp_path, policy):
    n = 512
    result = _run_script(
        tmp_path, *PS, "--epochs", "1", "--samples", str(n), "--max-staleness", "1", "--bound-policy", policy,
        "--slow-rank", "1", "--factor", "3", timeout=100,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = _reports(tmp_path)
    _each_sample_once(r0, r1, "0", n)
    telemetry = r0["telemetry"]
    _assert_counters(telemetry, 1)
    c = telemetry["counters"]
    steps = r0["steps"] + r1["steps"]
    assert steps == n // 16 == c["gradients"]
    if policy == "drop":
        assert c["deferred"] == 0 and c["received"] == 2 * steps  # every gradient offered once to each owner
        assert c["samples"] % 16 == 0 and c["samples"] + 16 * c["rejected_stale"] >= n
    else:
        assert c["samples"] == n and c["rejected_stale"] == 0  # no work lost
    if policy == "wait":
        assert c["applied"] == 2 * steps and c["deferred"] == 0


@pytest.mark.timeout(150)
def test_overlap_under_a_straggler_keeps_every_update_and_the_bound(tmp_path):
    """max_staleness=4, accumulate, automatic overlap: the two equal workers turn overlap on (the round trip is most
    of a step of this small model), then worker 1 is slowed and switches to waiting for its replies. Nothing is
    rejected (a read taken as a pair in waiting mode used to orphan one: rejected_version), every sample of every
    epoch lands in an applied update, and the bound holds."""
    n, epochs = 256, 8
    # from its step 24, worker 1 sleeps 10 ms a step: its round trip becomes a small share of its step, so it stops
    # overlapping and then crosses epoch boundaries in waiting mode, where the orphaned read used to appear
    delay = json.dumps({"fault": "delay", "ranks": 1, "steps": list(range(24, 200)), "seconds": 0.01})
    result = _run_script(
        tmp_path, *PS, "--epochs", str(epochs), "--samples", str(n), "--max-staleness", "4", "--fault", delay,
        timeout=130,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = _reports(tmp_path)
    for epoch in range(epochs):
        _each_sample_once(r0, r1, str(epoch), n)
    telemetry = r0["telemetry"]
    _assert_counters(telemetry, 4)
    c = telemetry["counters"]
    assert c["rejected"] == 0 and c["overlapped"] > 0
    assert c["samples"] == epochs * n  # no work lost: deferred gradients land, summed


# ---------------------------------------------------------------------------------------------- faults
@pytest.mark.timeout(120)
def test_a_nan_gradient_is_rejected_at_every_owner_and_counted(tmp_path):
    fault = json.dumps({"fault": "nan", "ranks": 1, "steps": 3})
    result = _run_script(tmp_path, *PS, "--epochs", "1", "--samples", "512", "--fault", fault, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = _reports(tmp_path)
    c = r0["telemetry"]["counters"]
    # both owners (ranks 0 and 1) refuse their part of the update, and it is counted once, by the first owner
    assert c["rejected_nonfinite"] == 1
    assert c["samples"] == 512 - 16
    assert not r0["non_finite"] and not r1["non_finite"]
    _assert_counters(r0["telemetry"], 4)


@pytest.mark.timeout(120)
def test_a_hung_owner_ends_the_run_within_the_timeout_naming_it(tmp_path):
    fault = json.dumps({"fault": "hang", "ranks": 1, "steps": 5, "seconds": 600})
    result = _run_script(
        tmp_path, *PS, "--epochs", "1", "--fault", fault, "--bound-policy", "wait", "--max-staleness", "1",
        "--timeout", "4", timeout=100,
    )
    assert result.returncode != 0
    assert "WorkerTimeoutError" in result.stderr and "worker 1 holds read version" in result.stderr
    assert "worker 0 stops the run" in result.stderr
    assert _no_process_left(tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["crash", "raise"])
def test_a_failed_owner_on_one_node_stops_the_run_naming_it(tmp_path, fault):
    """crash: os._exit(1) on rank 1. raise: an exception on rank 1, whose engine must stop at once (it used to
    serve its peers in close() during teardown, silent, until rank 0 timed out in a collective)."""
    args = ("--crash-at", "1,0,3") if fault == "crash" else ("--fault", json.dumps({"fault": "raise", "steps": 3}))
    result = _run_script(tmp_path, *PS, "--epochs", "1", "--samples", "256", "--timeout", "30", *args, timeout=100)
    assert result.returncode != 0
    if fault == "crash":
        assert RANK1_DIED.search(result.stderr), result.stderr[-3000:]
    if fault == "raise":
        assert "RuntimeError: FaultInjector: injected error on worker 1" in result.stderr
        # rank 0 gets owner 1's error reply naming the cause, or (rank 1 already exited) sees its connection close
        cause = re.search(r"WorkerDiedError: owner rank 1 stopped \(RuntimeError: FaultInjector", result.stderr)
        assert cause or RANK1_DIED.search(result.stderr), result.stderr[-3000:]
        assert "Timed out" not in result.stderr
    assert _no_process_left(tmp_path)


@pytest.mark.timeout(200)
def test_continue_survivors_finish_the_fit_after_a_pure_worker_dies(tmp_path):
    """owner_ranks=[0], on_worker_failure="continue", 3 workers: worker 2 (no blocks) dies in epoch 0. Workers 0 and
    1 finish both epochs, take every batch of epoch 1 between them, sync the validation metric (torchmetrics) and
    write the checkpoints; the lost update is counted and the run exits 0 with nothing left running."""
    ckpt = tmp_path / "ckpt"
    result = _run_script(
        tmp_path, *PS, "--devices", "3", "--epochs", "2", "--samples", "512", "--owner-ranks", "0",
        "--on-worker-failure", "continue", "--crash-at", "2,0,3", "--timeout", "30", "--checkpoint-dir", str(ckpt),
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "worker 2 is gone" in result.stderr and "carry on" in result.stderr and "lost" in result.stderr
    r0, r1 = _reports(tmp_path, 2)
    assert not (tmp_path / "rank2.json").exists()
    _each_sample_once(r0, r1, "1", n=512)  # after the death, the survivors share the whole epoch
    counters = r0["telemetry"]["counters"]
    _assert_counters(r0["telemetry"], max_staleness=4)
    assert counters["lost"] >= 1
    assert "val_mse" in r0["metrics"] and r0["metrics"]["val_mse"] == pytest.approx(r1["metrics"]["val_mse"])
    assert (ckpt / "last.ckpt").exists() and r0["steps"] > 0 and r1["steps"] > 0
    assert _no_process_left(tmp_path)
    _assert_process_groups_destroyed_at_exit(tmp_path)  # the survivors, beside a dead peer


@pytest.mark.timeout(120)
def test_a_duplicated_update_is_rejected_by_its_owner_and_counted(tmp_path):
    fault = json.dumps({"fault": "duplicate", "ranks": 1, "steps": [2, 5]})
    result = _run_script(tmp_path, *PS, "--epochs", "1", "--samples", "256", "--fault", fault, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, _ = _reports(tmp_path)
    counters = r0["telemetry"]["counters"]
    assert counters["rejected_duplicate"] == 2  # one remote owner (rank 0), two duplicated steps
    _assert_counters(r0["telemetry"], max_staleness=4)


def test_continue_needs_owner_ranks_and_the_parameter_server():
    with pytest.raises(ValueError, match="needs owner_ranks"):
        AsyncAdaptiveStrategy(engine="parameter_server", on_worker_failure="continue")
    with pytest.raises(ValueError, match="engine='parameter_server'"):
        AsyncAdaptiveStrategy(on_worker_failure="continue", owner_ranks=[0])
    with pytest.raises(ValueError, match="includes 0"):
        AsyncAdaptiveStrategy(engine="parameter_server", owner_ranks=[1])
    with pytest.raises(ValueError, match="on_worker_failure must be"):
        AsyncAdaptiveStrategy(engine="parameter_server", on_worker_failure="ignore")
    with pytest.raises(ValueError, match="overlap"):
        AsyncAdaptiveStrategy(overlap=True)


# ---------------------------------------------------------------------------------------------- two "nodes"
@pytest.mark.timeout(200)
def test_two_nodes_through_lightning_crash_of_an_owner_then_resume_from_last(tmp_path):
    """num_nodes=2: rank 1 (an owner) dies in epoch 1; rank 0 stops naming it; fit(ckpt_path="last") resumes from
    the epoch-0 checkpoint and finishes with every counter continued."""
    ckpt = tmp_path / "ckpt"
    common = ("--epochs", "2", "--bound-policy", "wait", "--timeout", "20", "--checkpoint-dir", str(ckpt))
    codes, outputs, port = _lightning_two_nodes(tmp_path, *common, "--crash-at", "1,1,2")
    assert codes == [1, 1], outputs[0][-3000:] + outputs[1][-3000:]
    assert RANK1_DIED.search(outputs[0]), outputs[0][-3000:] + outputs[1][-3000:]
    saved = torch.load(ckpt / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0
    engine_state = saved["optimizer_states"][0]["lightning_async"]
    assert engine_state["kind"] == "parameter_server"
    assert engine_state["counters"]["samples"] == N_SAMPLES
    assert engine_state["counters"]["applied"] == 2 * N_SAMPLES // 16  # one epoch, both owners, "wait"
    assert not _port_in_use(port) and _no_process_left(tmp_path)

    codes, outputs, port = _lightning_two_nodes(tmp_path, *common, "--ckpt-path", "last")
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    r0, r1 = _reports(tmp_path)
    assert set(r0["seen"]) | set(r1["seen"]) == {"1"}  # resumed at epoch 1
    _each_sample_once(r0, r1, "1")
    assert r0["metrics"]["val_mse"] == pytest.approx(r1["metrics"]["val_mse"])
    telemetry = r0["telemetry"]
    _assert_counters(telemetry, 4)
    c = telemetry["counters"]
    assert c["samples"] == 2 * N_SAMPLES and c["applied"] == 2 * 2 * N_SAMPLES // 16  # continued, not restarted
    assert telemetry["version"] == 2 * N_SAMPLES // 16
    assert not _port_in_use(port) and _no_process_left(tmp_path)


@pytest.mark.timeout(120)
def test_two_nodes_launched_by_torchrun(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to the interpreter")
    port = _free_port()
    cmds = [
        ([str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node), "--master-addr",
          "127.0.0.1", "--master-port", str(port), "--rdzv-backend", "static", "--max-restarts", "0", str(SCRIPT),
          "--out", str(tmp_path), *PS, "--num-nodes", "2", "--devices", "1", "--epochs", "1", "--bound-policy",
          "wait"], _env())
        for node in (0, 1)
    ]
    codes, outputs = _launch_nodes(tmp_path, cmds, timeout=100)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    r0, r1 = _reports(tmp_path)
    _each_sample_once(r0, r1, "0")
    telemetry = r0["telemetry"]
    _assert_counters(telemetry, 4)
    assert telemetry["counters"]["samples"] == N_SAMPLES
    assert telemetry["counters"]["applied"] == 2 * N_SAMPLES // 16
    assert not _port_in_use(port) and _no_process_left(tmp_path)
