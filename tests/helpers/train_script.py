"""A small asynchronous training run launched as its own script (Lightning's popen launcher re-runs argv).

Each worker writes ``<out>/rank<r>.json`` with the sample indices it trained on (per epoch), its step count and
metrics; rank 0 adds the engine's telemetry. Used by tests/test_strategy.py through ``subprocess``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
from pathlib import Path

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

import lightning_async
from lightning_async.testing import FaultInjector, Slowdown, non_finite_parameters


class Regression(L.LightningModule):
    def __init__(self, lr: float = 0.01, optimizer: str = "torch.optim.Adam") -> None:
        super().__init__()
        self.lr = lr
        self.optimizer_name = optimizer
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        self.val_mse = torchmetrics.MeanSquaredError()
        self.seen: dict[int, list[int]] = {}
        self.epoch_losses: list[float] = []
        self._epoch_loss: list[float] = []
        self.steps_taken = 0  # this worker's own steps (trainer.global_step counts every worker's updates)

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.seen.setdefault(self.current_epoch, []).extend(index.tolist())
        self.steps_taken += 1
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True, on_step=True, on_epoch=True)
        self._epoch_loss.append(float(loss))
        return loss

    def on_train_epoch_end(self):
        self.epoch_losses.append(sum(self._epoch_loss) / max(len(self._epoch_loss), 1))
        self._epoch_loss = []

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.val_mse(self.net(x), y)
        self.log("val_mse", self.val_mse, sync_dist=True)

    def configure_optimizers(self):
        module, _, name = self.optimizer_name.rpartition(".")
        optimizer = getattr(importlib.import_module(module), name)(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class CrashAt(Callback):
    """``os._exit(1)`` on ``rank`` at batch ``batch`` of epoch ``epoch`` (keyed on the epoch, unlike FaultInjector,
    so that a checkpoint of the earlier epochs exists whatever the workers' speeds)."""

    def __init__(self, rank: int, epoch: int, batch: int) -> None:
        self.rank, self.epoch, self.batch = rank, epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os._exit(1)


class StopAt(Callback):
    """Sets ``trainer.should_stop`` on ``rank`` after its own step ``step`` (a callback's stopping condition)."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step, self.steps = rank, step, 0

    def on_train_batch_end(self, trainer, *args):
        self.steps += 1
        if trainer.global_rank == self.rank and self.steps >= self.step:
            trainer.should_stop = True


def dataset(n: int = 1024) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x @ torch.linspace(-1, 1, 8).unsqueeze(1))
    return TensorDataset(x, y, torch.arange(n))


def _bound(text: str) -> int | str | None:
    return None if text == "none" else text if text == "auto" else int(text)


def _record_exit_state(out: Path, rank: list[int]) -> None:
    if rank:  # the run got as far as its report
        state = {"process_group_alive": torch.distributed.is_initialized()}
        (out / f"rank{rank[0]}.exit.json").write_text(json.dumps(state))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-staleness", type=_bound, default=4, help="an integer, 'auto' or 'none'")
    parser.add_argument("--bound-policy", default="accumulate")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--max-consecutive-nonfinite", type=int, default=5)
    parser.add_argument("--slow-rank", type=int, default=None)
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--fault", default=None, help="JSON kwargs of FaultInjector")
    parser.add_argument("--optimizer", default="torch.optim.Adam", help="dotted path of the optimizer class")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--engine", default="shared_memory")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="save last.ckpt at every epoch end")
    parser.add_argument("--ckpt-path", default=None, help="Trainer.fit(ckpt_path=...), e.g. 'last'")
    parser.add_argument("--log-every-n-steps", type=int, default=None, help="CSVLogger under <out>/logs")
    parser.add_argument("--crash-at", default=None, help="RANK,EPOCH,BATCH: os._exit(1) there")
    parser.add_argument("--on-worker-failure", default="stop")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--stop-at", default=None, help="RANK,STEP: that rank sets trainer.should_stop there")
    parser.add_argument("--max-time", default=None, help="Trainer(max_time=...), e.g. 00:00:00:08")
    parser.add_argument("--owner-ranks", default=None, help="comma-separated ranks that own blocks")
    args = parser.parse_args()

    # registered before fit, so it runs after every exit hook the run registers: records whether the process
    # groups were destroyed while the interpreter was still whole
    rank: list[int] = []
    atexit.register(_record_exit_state, args.out, rank)
    torch.manual_seed(0)
    callbacks = []
    if args.slow_rank is not None:
        callbacks.append(Slowdown(ranks=args.slow_rank, factor=args.factor))
    if args.fault:
        callbacks.append(FaultInjector(**json.loads(args.fault)))
    if args.crash_at:
        callbacks.append(CrashAt(*(int(v) for v in args.crash_at.split(","))))
    if args.stop_at:
        callbacks.append(StopAt(*(int(v) for v in args.stop_at.split(","))))
    if args.checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=args.checkpoint_dir, save_last=True, every_n_epochs=1, save_top_k=-1))
    strategy = lightning_async.AsyncAdaptiveStrategy(
        max_staleness=args.max_staleness,
        bound_policy=args.bound_policy,
        timeout=args.timeout,
        max_consecutive_nonfinite=args.max_consecutive_nonfinite,
        engine=args.engine,
        on_worker_failure=args.on_worker_failure,
        owner_ranks=[int(r) for r in args.owner_ranks.split(",")] if args.owner_ranks else None,
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy=strategy, max_epochs=args.epochs,
        max_steps=args.max_steps, max_time=args.max_time,
        callbacks=callbacks,
        logger=CSVLogger(args.out / "logs") if args.log_every_n_steps else False,
        log_every_n_steps=args.log_every_n_steps or 50,
        enable_checkpointing=args.checkpoint_dir is not None, enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(args.out),
    )
    model = Regression(lr=args.lr, optimizer=args.optimizer)
    data = dataset(args.samples)
    trainer.fit(
        model, DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=64), ckpt_path=args.ckpt_path
    )
    report = {
        "pid": os.getpid(),
        "seen": model.seen,
        "steps": model.steps_taken,
        "global_step": trainer.global_step,
        "checkpoints": sorted(p.name for p in args.checkpoint_dir.glob("*.ckpt")) if args.checkpoint_dir else [],
        "epoch_losses": model.epoch_losses,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "non_finite": non_finite_parameters(model),
    }
    telemetry = trainer.strategy.telemetry
    if telemetry is not None:
        report["telemetry"] = {
            "counters": telemetry.counters,
            "histogram": telemetry.staleness_histogram,
            "per_worker": telemetry.per_worker,
            "version": telemetry.version,
        }
    (args.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))
    rank.append(trainer.global_rank)


if __name__ == "__main__":
    main()
