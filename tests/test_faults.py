"""Every exit path ends every process of the run within a bounded time that does not depend on ``timeout`` when
the cause is known, names the cause, and removes what the run created (processes, ``/dev/shm``), through
Lightning's launcher and through torchrun. Runs use ``timeout=300``: a run that waited for it would fail the test's
own bound."""

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

from lightning_async._engine.shm import DEFAULT_ROOT
from tests.test_strategy import SCRIPT, _no_process_left, _run_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BOUND = 120  # seconds: well under timeout=300


def _shm_runs() -> set[str]:
    return {p.name for p in DEFAULT_ROOT.glob("lightning_async-*")}


def _fault(kind: str, rank: int, step: int = 5) -> str:
    return json.dumps({"fault": kind, "ranks": rank, "steps": step})


def _wait_for_cleanup(tmp_path: Path, before: set[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not _no_process_left(tmp_path) or _shm_runs() - before):
        time.sleep(0.5)
    assert _no_process_left(tmp_path)
    assert not _shm_runs() - before, "the run's /dev/shm directory was left behind"


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to the interpreter")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")}
    return subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-port", str(port), str(SCRIPT), "--out", str(tmp_path),
         *args], capture_output=True, text=True, timeout=BOUND + 60, env=env, cwd=str(tmp_path),
    )


# --------------------------------------------------------------------------- shared_memory, Lightning's launcher
def test_an_error_on_rank_0_ends_the_run_without_waiting_out_the_timeout(tmp_path):
    before, start = _shm_runs(), time.monotonic()
    result = _run_script(tmp_path, "--fault", _fault("raise", 0), "--timeout", "300", timeout=BOUND + 60)
    assert result.returncode != 0
    assert time.monotonic() - start < BOUND
    assert "worker 0 stops the run: RuntimeError: FaultInjector: injected error on worker 0" in result.stderr
    _wait_for_cleanup(tmp_path, before)


def test_an_error_on_another_rank_is_named_by_rank_0(tmp_path):
    before, start = _shm_runs(), time.monotonic()
    result = _run_script(tmp_path, "--fault", _fault("raise", 1), "--timeout", "300", timeout=BOUND + 60)
    assert result.returncode != 0
    assert time.monotonic() - start < BOUND
    assert "RunAbortedError: worker 1 stopped the run (RuntimeError: FaultInjector" in result.stderr
    _wait_for_cleanup(tmp_path, before)


def test_the_workers_stop_when_rank_0_dies_even_if_they_never_wait(tmp_path):
    """Rank 0 is killed (os._exit) early; under "accumulate" rank 1 never waits, and it used to train on alone."""
    before = _shm_runs()
    result = _run_script(tmp_path, "--fault", _fault("crash", 0), "--samples", "4096", "--epochs", "4",
                         "--timeout", "300", timeout=BOUND + 60)
    assert result.returncode != 0
    _wait_for_cleanup(tmp_path, before)  # rank 1 outlives rank 0 (the launcher): it must stop by itself
    assert not (tmp_path / "rank1.json").exists(), "rank 1 trained to the end without rank 0"


def test_a_killed_worker_is_named_with_its_progress(tmp_path):
    before = _shm_runs()
    result = _run_script(tmp_path, "--fault", _fault("crash", 1), "--samples", "4096", "--timeout", "300",
                         timeout=BOUND + 60)
    assert result.returncode != 0
    assert "worker 1 (pid" in result.stderr and ("died after" in result.stderr or "exited with code" in result.stderr)
    _wait_for_cleanup(tmp_path, before)


# --------------------------------------------------------------------------- shared_memory, torchrun
@pytest.mark.parametrize("kind", ["raise", "crash"])
def test_failures_under_torchrun_are_named_and_bounded(tmp_path, kind):
    before, start = _shm_runs(), time.monotonic()
    result = _torchrun(tmp_path, "--fault", _fault(kind, 1), "--samples", "4096", "--timeout", "300")
    assert result.returncode != 0
    assert time.monotonic() - start < BOUND
    if kind == "raise":
        assert "worker 1 stopped the run (RuntimeError: FaultInjector" in result.stderr
    else:
        assert "worker 1 (pid" in result.stderr and "died after" in result.stderr
    _wait_for_cleanup(tmp_path, before)


# --------------------------------------------------------------------------- stopping conditions
@pytest.mark.parametrize(
    ("engine", "stop"),
    [("shared_memory", ("--stop-at", "2,20")), ("parameter_server", ("--stop-at", "2,20")),
     ("parameter_server", ("--max-time", "00:00:00:06"))],
)
def test_one_workers_stopping_condition_stops_every_worker_together(tmp_path, engine, stop):
    """4 workers, one 3x slower, a checkpoint and a synced metric at the epoch's end: a callback's should_stop on
    one worker (or max_time, whose Timer broadcasts every batch) ends every worker cleanly, mid-epoch."""
    result = _run_script(
        tmp_path, "--devices", "4", "--engine", engine, "--epochs", "50", "--samples", "4096", *stop,
        "--slow-rank", "1", "--factor", "3", "--checkpoint-dir", str(tmp_path / "ckpt"), "--timeout", "300",
        timeout=BOUND + 120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert sum(r["steps"] for r in reports) < 50 * 4096 // 16  # stopped early
    assert all("val_mse" in r["metrics"] for r in reports)  # every worker validated, with the others
    assert _no_process_left(tmp_path)


# --------------------------------------------------------------------------- parameter_server
def test_an_evicted_hung_worker_ends_its_own_process(tmp_path):
    result = _run_script(
        tmp_path, "--engine", "parameter_server", "--devices", "3", "--owner-ranks", "0", "--on-worker-failure",
        "continue", "--fault", json.dumps({"fault": "hang", "ranks": 2, "steps": 3, "seconds": 3600}),
        "--bound-policy", "wait", "--max-staleness", "1", "--timeout", "5", "--epochs", "1", timeout=BOUND + 60,
    )
    assert "worker 2 was dropped from the run by owner rank 0" in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _no_process_left(tmp_path):
        time.sleep(0.5)
    assert _no_process_left(tmp_path), "the evicted worker is still running"


def _idle(procs: list, seconds: float) -> bool:
    """Whether none of ``procs`` used CPU time for ``seconds`` (every worker sleeps or waits)."""

    def total() -> float:
        out = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                out += t.user + t.system
            except psutil.Error:
                pass
        return out

    first = total()
    time.sleep(seconds)
    return total() - first < 0.05


def test_sigterm_ends_a_wait_at_a_parameter_server_owner(tmp_path):
    """Rank 1 hangs holding a read; rank 0 (the only owner, bound "wait", K=0) waits for it at its own blocks.
    A SIGTERM to rank 0 ends that wait and the run within seconds; the wait used to run until ``timeout``."""
    launch_vars = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launch_vars}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--engine", "parameter_server", "--owner-ranks", "0",
         "--fault", json.dumps({"fault": "hang", "ranks": 1, "steps": 3, "seconds": 3600}), "--bound-policy",
         "wait", "--max-staleness", "0", "--timeout", "300", "--epochs", "1"],
        env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + BOUND
        # both workers idle for 3 s: rank 1 sleeps in its hang and rank 0 waits for its read
        while time.monotonic() < deadline and proc.poll() is None:
            procs = [parent, *parent.children()]
            if len(procs) == 2 and _idle(procs, 3.0):
                break
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        signalled = time.monotonic()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - signalled < 30, err[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.communicate()
    # Lightning ends a SIGTERM'd fit with SIGTERMException, a SystemExit without a code: the exit status is 0
    assert "worker 0 received SIGTERM" in err, err[-3000:]
    assert "worker 0 stops the run: SIGTERMException" in err and "worker 1: running" in err, err[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _no_process_left(tmp_path):
        time.sleep(0.5)
    assert _no_process_left(tmp_path)


@pytest.mark.parametrize("kind", ["raise", "crash"])
def test_parameter_server_failures_under_torchrun_are_bounded(tmp_path, kind):
    """Rank 1 (an owner) fails under torchrun: every process ends well within ``timeout``, nothing is left."""
    start = time.monotonic()
    result = _torchrun(tmp_path, "--engine", "parameter_server", "--fault", _fault(kind, 1), "--samples", "4096",
                       "--timeout", "300")
    assert result.returncode != 0
    assert time.monotonic() - start < BOUND
    if kind == "raise":
        assert "FaultInjector: injected error on worker 1" in result.stderr, result.stderr[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _no_process_left(tmp_path):
        time.sleep(0.5)
    assert _no_process_left(tmp_path)
