"""``max_steps`` and ``trainer.global_step`` count the run's applied updates, as under DDP, on every worker.

A worker's own step count differs from its peers' (a fast worker takes more batches), so each rank would stop,
log and name checkpoints by a different count. Under this strategy ``trainer.global_step`` is the engine's version
(updates applied by all workers): every worker stops once ``max_steps`` updates are in (overshooting by the
steps in flight, at most two per worker), together, with a straggler among them.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.test_strategy import _no_process_left, _run_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKERS = 4
MAX_STEPS = 30  # an epoch has 1024 / 16 = 64 batches: the run stops mid-epoch


@pytest.mark.parametrize("engine", ["shared_memory", "parameter_server"])
def test_max_steps_counts_applied_updates_and_every_worker_stops(tmp_path, engine):
    ckpt = tmp_path / "ckpt"
    result = _run_script(
        tmp_path, "--devices", str(WORKERS), "--engine", engine, "--max-staleness", "auto", "--epochs", "5",
        "--max-steps", str(MAX_STEPS), "--slow-rank", "1", "--factor", "3", "--checkpoint-dir", str(ckpt),
        "--timeout", "90", timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    version = reports[0]["telemetry"]["version"]
    # each worker finishes the step it is in; with overlap a parameter-server worker learns the count one reply
    # late (one more step), and a held-back gradient is flushed as one last update: at most 2 per worker
    assert MAX_STEPS <= version <= MAX_STEPS + 2 * WORKERS, version
    own_steps = [r["steps"] for r in reports]
    assert sum(own_steps) >= version and max(own_steps) < MAX_STEPS, own_steps  # no worker ran max_steps alone
    for r in reports:
        assert MAX_STEPS <= r["global_step"] <= version, [x["global_step"] for x in reports]
    names = reports[0]["checkpoints"]
    steps = [int(m.group(1)) for name in names if (m := re.search(r"step=(\d+)", name))]
    assert steps and all(MAX_STEPS <= s <= version for s in steps), names
    assert _no_process_left(tmp_path)
