"""Worker-count benchmark: set-up time, throughput against DDP and idle time for N = 2, 4, 8, 16 workers.

Usage::

    python benchmarks/workers.py --out results/workers.json          # N = 2 4 8 16, both engines, about 15 minutes
    python benchmarks/workers.py --workers 2 4 --engines shared_memory --epochs 2

For every N it trains the digits MLP (scikit-learn's bundled data, no download; 256-256 hidden units) on N CPU worker
processes under DDP and under ``async_adaptive`` with each engine, the strategy's defaults otherwise
(``max_staleness="auto"``, ``bound_policy="accumulate"``), and prints, all from runs of this one invocation:

* ``engine set-up``: the longest time any rank took to create its engine (the shared-memory files, or the
  parameter server's process groups and threads), seconds;
* ``start``: from launch until the last rank starts training (imports, process groups, engine), seconds;
* ``samples/s`` over the training (first rank's start to last rank's end), and its ratio to DDP's of the same N;
* ``idle``: the mean over workers of the fraction of time spent waiting for the staleness bound;
* the staleness of the applied updates (mean and max) and the bound K the run used.

On a machine with fewer cores than workers, the processes share the cores: the figures then say how the
coordination scales (set-up, idle time, per-step overhead), not how the compute does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _worker(args: argparse.Namespace) -> None:
    import lightning as L
    import torch
    from lightning.pytorch import Callback

    import lightning_async
    from lightning_async.data import DigitsDataModule
    from lightning_async.models import MLPClassifier

    class Recorder(Callback):
        start = end = 0.0
        batches = 0

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.batches += 1

        def on_train_end(self, trainer, pl_module) -> None:
            self.end = time.time()

    torch.manual_seed(0)
    recorder = Recorder()
    if args.strategy == "ddp":
        strategy: object = "ddp"
    else:
        strategy = lightning_async.AsyncAdaptiveStrategy(engine=args.strategy, print_summary=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy=strategy, max_epochs=args.epochs, callbacks=[recorder],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    model = MLPClassifier(hidden_dims=[256, 256], optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    trainer.fit(model, DigitsDataModule(batch_size=args.batch_size))
    report = {
        "rank": trainer.global_rank,
        "start": recorder.start,
        "end": recorder.end,
        "samples": recorder.batches * args.batch_size,
        "engine_setup_seconds": getattr(trainer.strategy, "engine_setup_seconds", 0.0),
    }
    telemetry = getattr(trainer.strategy, "telemetry", None)
    if telemetry is not None:
        report["idle"] = statistics.fmean(row["wait_fraction"] for row in telemetry.per_worker)
        report["staleness_mean"] = telemetry.staleness_mean
        report["staleness_max"] = telemetry.staleness_max
        report["max_staleness"] = telemetry.max_staleness
    Path(args.report_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def _run(args: argparse.Namespace, strategy: str, devices: int) -> dict:
    report_dir = Path(args.work_dir) / f"{strategy}_{devices}"
    report_dir.mkdir(parents=True, exist_ok=True)
    for old in report_dir.glob("rank*.json"):
        old.unlink()
    cmd = [sys.executable, str(HERE), "--worker", "--strategy", strategy, "--devices", str(devices),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--report-dir", str(report_dir)]
    launch_vars = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launch_vars}
    env["OMP_NUM_THREADS"] = "1"  # pinned alike in every run (Lightning would give a lone worker every core)
    launched = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{strategy} with {devices} workers failed ({done.returncode}):\n{done.stderr[-4000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]
    first, last = min(r["start"] for r in ranks), max(r["end"] for r in ranks)
    rank0 = next(r for r in ranks if r["rank"] == 0)
    return {
        "strategy": strategy, "workers": devices,
        "engine_setup_seconds": max(r["engine_setup_seconds"] for r in ranks),
        "start_seconds": max(r["start"] for r in ranks) - launched,
        "samples_per_s": sum(r["samples"] for r in ranks) / (last - first),
        "idle": rank0.get("idle"), "staleness_mean": rank0.get("staleness_mean"),
        "staleness_max": rank0.get("staleness_max"), "max_staleness": rank0.get("max_staleness"),
    }


def _driver(args: argparse.Namespace) -> None:
    rows = []
    print(f"{'N':>3} {'strategy':>17} {'engine set-up s':>15} {'start s':>8} {'samples/s':>10} {'vs DDP':>7} "
          f"{'idle':>6} {'staleness mean/max':>19} {'K':>3}", flush=True)
    for n in args.workers:
        ddp = _run(args, "ddp", n)
        for run in (ddp, *(_run(args, engine, n) for engine in args.engines)):
            run["vs_ddp"] = run["samples_per_s"] / ddp["samples_per_s"]
            rows.append(run)
            idle = "" if run["idle"] is None else f"{run['idle']:.3f}"
            stale = "" if run["staleness_mean"] is None else f"{run['staleness_mean']:.2f}/{run['staleness_max']}"
            k = "" if run["max_staleness"] is None else str(run["max_staleness"])
            print(f"{n:>3} {run['strategy']:>17} {run['engine_setup_seconds']:>15.3f} {run['start_seconds']:>8.1f} "
                  f"{run['samples_per_s']:>10.0f} {run['vs_ddp']:>7.2f} {idle:>6} {stale:>19} {k:>3}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--engines", nargs="+", default=["shared_memory", "parameter_server"],
                        choices=["shared_memory", "parameter_server"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--work-dir", default="results/workers_runs")
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--report-dir", default=".", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _worker(args) if args.worker else _driver(args)


if __name__ == "__main__":
    main()
