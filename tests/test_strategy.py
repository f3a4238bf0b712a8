"""AsyncAdaptiveStrategy end to end.

Single-worker tests run in-process. Multi-worker tests launch ``tests/helpers/train_script.py`` in a subprocess,
because Lightning's popen launcher re-executes ``sys.argv`` (it would re-run pytest). They assert on counters,
records and exit codes, never on timing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import psutil
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import lightning_async
from lightning_async import AsyncAdaptiveStrategy

SCRIPT = Path(__file__).parent / "helpers" / "train_script.py"
N_SAMPLES = 1024


# ---------------------------------------------------------------------------------------------- helpers
class Net(L.LightningModule):
    def __init__(self, lr: float = 0.05, manual: bool = False, scheduler: bool = True) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.lr = lr
        self.use_scheduler = scheduler
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            return None
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        if not self.use_scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _data(shuffle: bool, dtype=torch.float32, n: int = 96, seeded_order: bool = False) -> DataLoader:
    """With ``seeded_order``, the epoch order of Lightning's distributed training sampler (which always shuffles,
    seeded by ``seed + epoch``), so that a plain single-process run sees the batches in the same order."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=dtype)
    y = torch.sin(x.sum(1, keepdim=True))
    dataset = TensorDataset(x, y)
    if seeded_order:
        return DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset, num_replicas=1, rank=0, seed=0))
    return DataLoader(dataset, batch_size=8, shuffle=shuffle)


def _trainer(strategy, tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )
    defaults.update(kwargs)
    return L.Trainer(strategy=strategy, **defaults)


def _fit(strategy, tmp_path, model_kwargs=None, shuffle=True, **trainer_kwargs) -> tuple[Net, L.Trainer]:
    torch.manual_seed(0)
    model = Net(**(model_kwargs or {}))
    precision = trainer_kwargs.get("precision")
    dtype = torch.float64 if precision == "64-true" else torch.float32
    trainer = _trainer(strategy, tmp_path, **trainer_kwargs)
    train = _data(shuffle, dtype, seeded_order=strategy == "auto")
    trainer.fit(model, train, _data(False, dtype))
    return model, trainer


def _run_script(tmp_path: Path, *args: str, timeout: float = 150.0) -> subprocess.CompletedProcess:
    # in-process runs of this session leave Lightning's launch variables in os.environ (and their store still
    # listening on MASTER_PORT): a child must pick its own
    launch_vars = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launch_vars}
    env["PYTHONUNBUFFERED"] = "1"
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--out", str(tmp_path), *args],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path),
        )
        # Lightning picks MASTER_PORT by binding port 0 and releasing it; another process on the machine can take
        # it before the store binds. That launch never started training: launch again on a new port.
        if "address already in use" not in result.stderr.lower():
            return result
    return result


def _reports(tmp_path: Path, workers: int = 2) -> list[dict]:
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(workers)]


def _no_process_left(tmp_path: Path) -> bool:
    needle = str(tmp_path)
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(needle in part for part in proc.info["cmdline"] or ()):
                return False
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return True


def _assert_counters(telemetry: dict, max_staleness: int) -> None:
    c = telemetry["counters"]
    assert c["applied"] + c["rejected_stale"] + c["rejected_nonfinite"] == c["received"]
    hist = telemetry["histogram"]
    assert sum(hist) == c["applied"]
    assert all(n == 0 for s, n in enumerate(hist) if s > max_staleness), hist


# ---------------------------------------------------------------------------------------------- registry
def test_the_name_resolves_in_a_fresh_interpreter_without_importing_the_package():
    code = (
        "import sys, lightning as L\n"
        "t = L.Trainer(strategy='async_adaptive', accelerator='cpu', devices=2, logger=False)\n"
        "print(type(t.strategy).__name__, t.strategy._start_method, 'lightning_async' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["AsyncAdaptiveStrategy", "popen", "True"]


@pytest.mark.parametrize(
    ("name", "start_method"),
    [("async_adaptive", "popen"), ("async_adaptive_spawn", "spawn"), ("async_adaptive_fork", "fork")],
)
def test_registered_variants(name, start_method):
    trainer = L.Trainer(strategy=name, accelerator="cpu", devices=2, logger=False)
    assert isinstance(trainer.strategy, AsyncAdaptiveStrategy)
    assert trainer.strategy._start_method == start_method


# ---------------------------------------------------------------------------------------------- one worker
def test_one_worker_max_staleness_zero_equals_plain_lightning_bit_for_bit(tmp_path):
    common = dict(precision="64-true", gradient_clip_val=0.5, accumulate_grad_batches=2, max_epochs=3)
    plain, _ = _fit("auto", tmp_path / "plain", **common)
    ours, trainer = _fit(AsyncAdaptiveStrategy(max_staleness=0, bound_policy="wait"), tmp_path / "async", **common)
    for (name, p), q in zip(plain.named_parameters(), ours.parameters()):
        assert p.dtype == torch.float64
        assert torch.equal(p, q), name
    assert trainer.strategy.telemetry.staleness_histogram[0] == trainer.strategy.telemetry.counters["applied"]


def test_samples_count_every_micro_batch_of_an_accumulated_step(tmp_path):
    _, trainer = _fit(AsyncAdaptiveStrategy(), tmp_path, accumulate_grad_batches=2, max_epochs=2)
    counters = trainer.strategy.telemetry.counters
    assert counters["samples"] == 2 * 96 and counters["applied"] == 2 * 96 // 16


def test_manual_optimization_applies_every_step(tmp_path):
    model, trainer = _fit(AsyncAdaptiveStrategy(), tmp_path, model_kwargs={"manual": True}, max_epochs=2)
    assert trainer.strategy.telemetry.counters["applied"] == 2 * 96 // 8
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_step_scheduler_follows_global_progress(tmp_path):
    model, trainer = _fit(AsyncAdaptiveStrategy(), tmp_path, max_epochs=2)
    applied = trainer.strategy.telemetry.counters["applied"]
    assert applied == 2 * 96 // 8
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == applied  # stepped once per applied update
    assert scheduler.get_last_lr()[0] == pytest.approx(0.05 * 0.5 ** (applied // 7))


def test_bf16_mixed_trains(tmp_path):
    model, trainer = _fit(AsyncAdaptiveStrategy(), tmp_path, precision="bf16-mixed")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.strategy.telemetry.counters["applied"] > 0


def test_checkpoint_loads_weights_only_and_resume_is_exact(tmp_path):
    def run(root, epochs, ckpt_path=None):
        torch.manual_seed(0)
        # float64 from the start: Lightning loads checkpoint weights before its precision plugin converts the
        # module, so a float32-built module would round the restored float64 weights
        model = Net().double()
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1, save_top_k=-1)
        trainer = _trainer(AsyncAdaptiveStrategy(), root, max_epochs=epochs, callbacks=[checkpoint],
                           enable_checkpointing=True, precision="64-true")
        trainer.fit(model, _data(True, torch.float64), _data(False, torch.float64), ckpt_path=ckpt_path)
        return model, trainer

    straight, _ = run(tmp_path / "straight", 4)
    _, first = run(tmp_path / "resumed", 2)
    last = tmp_path / "resumed" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    engine_state = checkpoint["optimizer_states"][0]["lightning_async"]
    assert engine_state["version"] == 2 * 96 // 8
    assert engine_state["counters"]["applied"] == engine_state["version"]
    resumed, trainer = run(tmp_path / "resumed", 4, ckpt_path=str(last))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert trainer.strategy.telemetry.version == 4 * 96 // 8


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_staleness": -1}, "max_staleness must be a non-negative integer"),
        ({"max_staleness": 1.5}, "max_staleness"),
        ({"bound_policy": "block"}, r"bound_policy must be one of \('accumulate', 'wait', 'drop'\)"),
        ({"engine": "gossip"}, "engine must be one of"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"max_consecutive_nonfinite": 0}, "max_consecutive_nonfinite must be an integer >= 1"),
    ],
)
def test_bad_strategy_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AsyncAdaptiveStrategy(**kwargs)


def test_fp16_precision_is_refused_with_the_alternative(tmp_path):
    with pytest.raises(ValueError, match="precision='bf16-mixed'"):
        _fit(AsyncAdaptiveStrategy(), tmp_path, precision="16-true")


class TwoOptimizers(Net):
    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[2].parameters(), lr=0.1)]


def test_two_optimizers_are_refused(tmp_path):
    model = TwoOptimizers(manual=True)
    with pytest.raises(ValueError, match="exactly one optimizer"):
        _trainer(AsyncAdaptiveStrategy(), tmp_path).fit(model, _data(False))


@pytest.mark.parametrize(
    ("trainer_kwargs", "match"),
    [
        ({"val_check_interval": 0.5}, "val_check_interval"),
        ({"callbacks": [ModelCheckpoint(every_n_train_steps=5)]}, "every_n_epochs"),
    ],
)
def test_per_step_synchronisation_points_are_refused_with_several_workers(trainer_kwargs, match):
    trainer = L.Trainer(strategy="async_adaptive", accelerator="cpu", devices=2, logger=False, **trainer_kwargs)
    with pytest.raises(ValueError, match=match):
        trainer.strategy._validate_trainer(trainer)


# ---------------------------------------------------------------------------------------------- two workers
def test_two_workers_train_use_every_sample_once_and_sync_metrics(tmp_path):
    result = _run_script(tmp_path, "--epochs", "2", "--max-staleness", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lightning_async: 2 workers" in result.stdout + result.stderr
    r0, r1 = _reports(tmp_path)
    for epoch in ("0", "1"):
        seen = r0["seen"].get(epoch, []) + r1["seen"].get(epoch, [])
        assert sorted(seen) == list(range(N_SAMPLES)), f"epoch {epoch}: each sample exactly once"
    assert r0["epoch_losses"][-1] < r0["epoch_losses"][0]
    assert r0["metrics"]["val_mse"] == pytest.approx(r1["metrics"]["val_mse"])  # sync_dist + torchmetrics
    assert not r0["non_finite"] and not r1["non_finite"]
    telemetry = r0["telemetry"]
    _assert_counters(telemetry, 4)
    assert telemetry["counters"]["samples"] == 2 * N_SAMPLES
    assert telemetry["counters"]["gradients"] == r0["steps"] + r1["steps"]
    _assert_process_groups_destroyed_at_exit(tmp_path)


def _assert_process_groups_destroyed_at_exit(tmp_path: Path, workers: int = 2) -> None:
    # left to interpreter finalization, a gloo thread's last tensors can abort a finished run (SIGABRT)
    for r in range(workers):
        state = json.loads((tmp_path / f"rank{r}.exit.json").read_text())
        assert state == {"process_group_alive": False}, f"rank {r}"


@pytest.mark.parametrize("policy", ["accumulate", "wait", "drop"])
def test_the_bound_holds_under_a_straggler(tmp_path, policy):
    result = _run_script(
        tmp_path, "--epochs", "1", "--max-staleness", "1", "--bound-policy", policy, "--slow-rank", "1",
        "--factor", "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = _reports(tmp_path)
    telemetry = r0["telemetry"]
    _assert_counters(telemetry, 1)
    c = telemetry["counters"]
    if policy == "drop":
        assert c["samples"] + 16 * c["rejected_stale"] == N_SAMPLES
    else:
        assert c["samples"] == N_SAMPLES and c["rejected_stale"] == 0  # no work lost
    assert r0["steps"] + r1["steps"] == N_SAMPLES // 16


def test_a_nan_gradient_is_rejected_and_counted(tmp_path):
    fault = json.dumps({"fault": "nan", "ranks": 1, "steps": 3})
    result = _run_script(tmp_path, "--epochs", "1", "--fault", fault)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = _reports(tmp_path)
    assert r0["telemetry"]["counters"]["rejected_nonfinite"] == 1
    assert not r0["non_finite"] and not r1["non_finite"]
    _assert_counters(r0["telemetry"], 4)
    _assert_process_groups_destroyed_at_exit(tmp_path)


def test_repeated_nan_gradients_stop_the_run_naming_the_worker(tmp_path):
    fault = json.dumps({"fault": "nan", "ranks": 1, "steps": list(range(4, 40))})
    result = _run_script(tmp_path, "--epochs", "1", "--fault", fault, "--max-consecutive-nonfinite", "3")
    assert result.returncode != 0
    assert "NonFiniteGradientError: worker 1 produced non-finite gradients 3 times in a row" in result.stderr
    assert _no_process_left(tmp_path)


def test_a_crashed_worker_ends_the_run_and_leaves_nothing_running(tmp_path):
    fault = json.dumps({"fault": "crash", "ranks": 1, "steps": 5})
    start = time.monotonic()
    result = _run_script(tmp_path, "--epochs", "1", "--fault", fault, "--timeout", "20")
    assert result.returncode != 0
    assert time.monotonic() - start < 120
    assert _no_process_left(tmp_path)


def test_a_hung_worker_ends_the_run_within_the_timeout_naming_it(tmp_path):
    fault = json.dumps({"fault": "hang", "ranks": 1, "steps": 5, "seconds": 600})
    start = time.monotonic()
    result = _run_script(
        tmp_path, "--epochs", "1", "--fault", fault, "--bound-policy", "wait", "--max-staleness", "1",
        "--timeout", "5",
    )
    assert result.returncode != 0
    assert "WorkerTimeoutError" in result.stderr and "worker 1 holds read version" in result.stderr
    assert time.monotonic() - start < 100
    assert _no_process_left(tmp_path)


def test_a_worker_that_stops_outside_a_step_is_named_when_a_collective_times_out(tmp_path):
    fault = json.dumps({"fault": "delay", "ranks": 1, "steps": 5, "seconds": 600})  # before taking a read
    result = _run_script(tmp_path, "--epochs", "1", "--fault", fault, "--timeout", "5")
    assert result.returncode != 0
    assert re.search(r"worker 0 stops the run: .*Peers: worker 1: running, last progress \d+\.\ds ago", result.stderr)
    assert _no_process_left(tmp_path)


def test_public_names():
    assert lightning_async.AsyncAdaptiveStrategy is AsyncAdaptiveStrategy
    assert issubclass(lightning_async.WorkerTimeoutError, TimeoutError)


def test_telemetry_reaches_the_logger_and_the_histogram_png(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    callback = lightning_async.StalenessHistogram("plots/staleness.png")
    model, trainer = _fit(
        AsyncAdaptiveStrategy(), tmp_path, callbacks=[callback], logger=CSVLogger(tmp_path), log_every_n_steps=2
    )
    assert callback.written == tmp_path / "plots" / "staleness.png"
    assert callback.written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"async/staleness_mean", "async/applied", "async/worker0/samples_per_s"} <= set(metrics)


class WithTest(Net):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])


def test_validate_test_and_predict_run_after_fit(tmp_path):
    torch.manual_seed(0)
    model = WithTest()
    trainer = _trainer(AsyncAdaptiveStrategy(), tmp_path, max_epochs=1)
    trainer.fit(model, _data(True), _data(False))
    fitted = [p.detach().clone() for p in model.parameters()]
    assert trainer.validate(model, _data(False))[0]["val_loss"] > 0
    assert trainer.test(model, _data(False))[0]["test_loss"] > 0
    predictions = trainer.predict(model, _data(False))
    assert sum(p.shape[0] for p in predictions) == 96
    assert all(torch.equal(a, b) for a, b in zip(fitted, model.parameters()))  # evaluation changed nothing


# ---------------------------------------------------------------------------------------------- what a new user sees
class Frozen(Net):
    def __init__(self) -> None:
        super().__init__()
        self.net.requires_grad_(False)

    def configure_optimizers(self):
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_a_model_with_nothing_to_train_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Frozen has no parameter that requires a gradient"):
        _trainer(AsyncAdaptiveStrategy(), tmp_path).fit(Frozen(), _data(False))


def test_more_workers_than_cores_is_explained(tmp_path):
    cores = os.cpu_count() or 1
    trainer = _trainer(AsyncAdaptiveStrategy(), tmp_path, devices=cores + 1)
    with pytest.warns(UserWarning, match=rf"devices={cores + 1} starts {cores + 1} worker processes on {cores} CPU"):
        trainer.strategy._validate_trainer(trainer)


class _TotalsSeen(L.Callback):
    """Reads the training bar's total after every batch (the bar's own hooks have run by then)."""

    def __init__(self) -> None:
        self.totals: list[int | None] = []

    def on_train_batch_end(self, trainer, *args):
        self.totals.append(trainer.progress_bar_callback.train_progress_bar.total)


def test_the_progress_bar_shows_an_epoch_length_under_dynamic_batches(tmp_path):
    seen = _TotalsSeen()
    trainer = _trainer(AsyncAdaptiveStrategy(), tmp_path, enable_progress_bar=True, max_epochs=1, callbacks=[seen])
    trainer.fit(Net(), _data(True), _data(False))
    assert trainer.strategy._uses_shared_cursor(trainer)
    assert seen.totals and all(total == 96 // 8 for total in seen.totals), seen.totals  # one worker: every batch
