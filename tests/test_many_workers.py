"""Many worker processes through Lightning: no (workers, max_staleness, bound policy, engine) combination deadlocks.

With N > K + 1 workers the bound admits at most K + 1 reads in flight, so some workers wait their turn; none of them
may wait while another holds a read and waits for it in a collective (start, epoch ends, validation, checkpoints,
end of fit). Each test launches ``tests/helpers/train_script.py`` with 6 or 8 CPU worker processes on this 2-core
machine (slowly, but every wait is bounded), and checks: the run completes, each sample is used once per epoch,
the counters add up, no applied update is staler than the bound, and nothing is left running or in ``/dev/shm``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_async._engine.shm import DEFAULT_ROOT
from tests.test_strategy import _assert_counters, _no_process_left, _run_script

SAMPLES = 512  # 32 batches of 16 per epoch
WARNING = "workers can compute at once"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _shm_entries() -> set[str]:
    return {p.name for p in DEFAULT_ROOT.glob("lightning_async-*")}


def _reports(out: Path, workers: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(workers)]


def _check_run(out: Path, workers: int, epochs: list[int], bound: int, policy: str) -> dict:
    reports = _reports(out, workers)
    for epoch in epochs:
        seen = sorted(i for r in reports for i in r["seen"].get(str(epoch), []))
        assert seen == list(range(SAMPLES)), f"epoch {epoch}: each sample exactly once over {workers} workers"
    telemetry = reports[0]["telemetry"]
    _assert_counters(telemetry, bound)
    c = telemetry["counters"]
    if policy != "drop":
        assert c["rejected_stale"] == 0
    assert c["gradients"] >= SAMPLES // 16 * len(epochs)
    return telemetry


@pytest.mark.parametrize(("engine", "bound"), [("shared_memory", 14), ("parameter_server", 16)])
def test_eight_workers_default_bound_straggler_checkpoint_and_resume(tmp_path, engine, bound):
    before = _shm_entries()
    ckpt = tmp_path / "ckpt"
    common = ["--devices", "8", "--samples", str(SAMPLES), "--engine", engine, "--max-staleness", "auto",
              "--timeout", "120", "--checkpoint-dir", str(ckpt)]
    first = _run_script(tmp_path, *common, "--epochs", "2", "--slow-rank", "3", "--factor", "2", timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"lightning_async: 8 workers, engine '{engine}'" in first.stdout + first.stderr
    assert f"bound policy 'accumulate', max_staleness {bound}" in first.stdout + first.stderr
    assert WARNING not in first.stderr  # the default bound never idles workers
    telemetry = _check_run(tmp_path, 8, [0, 1], bound, "accumulate")
    version = telemetry["version"]
    assert (ckpt / "last.ckpt").exists()
    resumed = _run_script(tmp_path, *common, "--epochs", "3", "--ckpt-path", "last", timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    telemetry = _check_run(tmp_path, 8, [2], bound, "accumulate")
    assert telemetry["version"] > version  # versions continue from the checkpoint
    assert _no_process_left(tmp_path)
    assert _shm_entries() <= before


@pytest.mark.parametrize("engine", ["shared_memory", "parameter_server"])
@pytest.mark.parametrize(("bound", "policy"), [(0, "wait"), (1, "drop"), (4, "accumulate")])
def test_more_workers_than_the_bound_admits_take_turns(tmp_path, engine, bound, policy):
    before = _shm_entries()
    result = _run_script(
        tmp_path, "--devices", "6", "--samples", str(SAMPLES), "--engine", engine, "--max-staleness", str(bound),
        "--bound-policy", policy, "--epochs", "1", "--timeout", "120", "--slow-rank", "1", "--factor", "2",
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    telemetry = _check_run(tmp_path, 6, [0], bound, policy)
    if policy == "drop":
        assert WARNING not in result.stderr  # drop gates no read: nobody idles
    else:
        assert result.stderr.count(WARNING) == 1, "warned once (rank 0), naming what idles"
        waiting = [row["wait_fraction"] for row in telemetry["per_worker"]]
        assert max(waiting) > 0  # the bound made someone wait its turn, and the run still completed
    assert _no_process_left(tmp_path)
    assert _shm_entries() <= before


def test_a_short_timeout_does_not_fail_the_start_of_many_workers(tmp_path):
    """Six interpreters importing Lightning on two cores take longer than `timeout=5` to meet at the rendezvous;
    `timeout` bounds waits for running peers, and the rendezvous gets the start-up allowance instead."""
    result = _run_script(tmp_path, "--devices", "6", "--samples", str(SAMPLES), "--epochs", "1", "--max-staleness",
                         "auto", "--timeout", "5", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DistStoreError" not in result.stderr
    _check_run(tmp_path, 6, [0], 10, "accumulate")
    assert _no_process_left(tmp_path)
