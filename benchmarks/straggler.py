"""Straggler benchmark: DDP against ``async_adaptive`` with one of two workers slowed k times.

Usage::

    python benchmarks/straggler.py --out results/straggler.json --plot docs/figures/straggler.png

For every k in ``--factors`` it trains the digits MLP (scikit-learn's bundled data, no download) with the same
optimizer, data and epochs under DDP and under ``async_adaptive`` on 2 CPU workers, worker 1 slowed k times by
:class:`lightning_async.testing.Slowdown`. It also measures each kind of worker alone (unslowed, and slowed k times),
whose throughputs give the ideal: an asynchronous run can at best reach the sum of its workers' standalone speeds.

Each configuration runs ``--repeats`` times (interleaved: DDP, async, DDP, async, ...), and the figures are the medians
over the repeats: a single run's time-to-target swings by 10-20% on these noisy machines (where a run's batches reach
the target, and scheduling hiccups). Printed and written (all ratios come from runs in this one invocation, since
absolute times are noise here):

* time-to-target: wall time from the start of fit until the moving average of worker 0's training loss first reaches
  ``--target``; the ratio is async's median over DDP's median, and each repeat's own ratio is printed too;
* samples/s over the whole fit, and the async/DDP ratios of both;
* efficiency: async samples/s divided by the ideal (the standalone speeds of an unslowed and a slowed worker, summed);
* peak resident memory per worker (max RSS) and the final validation accuracy of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------------------- worker side
def _worker(args: argparse.Namespace) -> None:
    import lightning as L
    import torch
    from lightning.pytorch import Callback

    import lightning_async
    from lightning_async.data import DigitsDataModule
    from lightning_async.models import MLPClassifier
    from lightning_async.testing import Slowdown

    class Recorder(Callback):
        def __init__(self) -> None:
            self.series: list[tuple[float, float]] = []
            self.start = 0.0
            self.end = 0.0
            self.batches = 0

        def on_fit_start(self, trainer, pl_module) -> None:
            # before any strategy's start of training (the async strategy's first reads and its barrier included)
            self.start = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.series.append((time.time() - self.start, float(loss)))
            self.batches += 1

        def on_train_end(self, trainer, pl_module) -> None:
            self.end = time.time() - self.start

    torch.manual_seed(0)
    recorder = Recorder()
    callbacks: list[Callback] = [recorder]
    if args.factor > 1:
        # the last worker (worker 1 of two on one node, the last node's across nodes), or a lone worker
        callbacks.append(Slowdown(ranks=args.devices * args.num_nodes - 1, factor=args.factor))
    if args.strategy == "async":
        strategy = lightning_async.AsyncAdaptiveStrategy(
            max_staleness=args.max_staleness,
            bound_policy=args.bound_policy,
            engine=args.engine,
            overlap=_OVERLAP[args.overlap] if args.engine == "parameter_server" else None,
            print_summary=bool(os.environ.get("STRAGGLER_SUMMARY")),
        )
    else:
        strategy = "ddp"
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy=strategy, max_epochs=args.epochs,
        callbacks=callbacks,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=args.limit_val_batches,
    )
    if args.model == "gpt":
        from lightning_async.data import TextDataModule
        from lightning_async.models import CharGPT

        # about 10.7M parameters: steps of a realistic size, where sending the parameters costs something
        model = CharGPT(block_size=128, n_layer=6, n_head=6, n_embd=384, dropout=0.0,
                        optimizer=lambda p: torch.optim.Adam(p, lr=args.lr))
        data = TextDataModule(block_size=128, batch_size=args.batch_size, train_stride=args.train_stride)
    else:
        model = MLPClassifier(hidden_dims=[128, 128], optimizer=lambda p: torch.optim.Adam(p, lr=args.lr))
        data = DigitsDataModule(batch_size=args.batch_size)
    trainer.fit(model, data)
    report = {
        "rank": trainer.global_rank,
        "series": recorder.series,
        "train_seconds": recorder.end,
        "batches": recorder.batches,
        "samples": recorder.batches * args.batch_size,
        "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan"))),
        "val_loss": float(trainer.callback_metrics.get("val/loss", float("nan"))),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    telemetry = getattr(trainer.strategy, "telemetry", None)
    if telemetry is not None:
        report["staleness_mean"] = telemetry.staleness_mean
        report["staleness_max"] = telemetry.staleness_max
        report["counters"] = telemetry.counters
    Path(args.report_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


_OVERLAP = {"auto": None, "on": True, "off": False}


# ---------------------------------------------------------------------------------------------------- driver side
def _run(args: argparse.Namespace, strategy: str, factor: float, devices: int, tag: str) -> dict:
    report_dir = _report_dir(args, tag)
    cmd = _worker_command(args, strategy, factor, devices, 1, report_dir)
    launch_vars = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launch_vars}
    # one thread per worker in every run: left unset, Lightning gives a lone worker (the standalone reference) all
    # the cores and each of two workers half of them, which made the efficiency figure meaningless
    env["OMP_NUM_THREADS"] = "1"
    wall = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout, env=env)
    wall = time.time() - wall
    if done.returncode != 0:
        raise RuntimeError(f"{tag} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return _collect(args, report_dir, strategy, factor, devices, wall)


def _report_dir(args: argparse.Namespace, tag: str) -> Path:
    report_dir = Path(args.work_dir) / tag
    report_dir.mkdir(parents=True, exist_ok=True)
    for old in report_dir.glob("rank*.json"):
        old.unlink()
    return report_dir


def _worker_command(
    args: argparse.Namespace, strategy: str, factor: float, devices: int, num_nodes: int, report_dir: Path
) -> list[str]:
    """The command of one worker process (Lightning launches ``devices - 1`` more on its node)."""
    return [
        sys.executable, str(HERE), "--worker", "--strategy", strategy, "--factor", str(factor),
        "--devices", str(devices), "--num-nodes", str(num_nodes), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--max-staleness", str(args.max_staleness),
        "--bound-policy", args.bound_policy, "--engine", args.engine, "--overlap", args.overlap,
        "--report-dir", str(report_dir), "--model", args.model, "--train-stride", str(args.train_stride),
        "--limit-val-batches", str(args.limit_val_batches),
    ]


def _collect(args: argparse.Namespace, report_dir: Path, strategy: str, factor: float, devices: int,
             wall: float) -> dict:
    """One run's figures from its workers' reports (rank 0's loss series and held-out metrics)."""
    ranks = sorted((json.loads(p.read_text()) for p in report_dir.glob("rank*.json")), key=lambda r: r["rank"])
    seconds = max(r["train_seconds"] for r in ranks)
    samples = sum(r["samples"] for r in ranks)
    return {
        "strategy": strategy, "factor": factor, "devices": devices, "wall_seconds": wall,
        "train_seconds": seconds, "samples": samples, "samples_per_s": samples / seconds,
        "time_to_target": _time_to_target(ranks[0]["series"], args.target),
        "val_acc": ranks[0]["val_acc"], "val_loss": ranks[0].get("val_loss"),
        "max_rss_mb": [r["max_rss_mb"] for r in ranks],
        "staleness_mean": ranks[0].get("staleness_mean"), "staleness_max": ranks[0].get("staleness_max"),
        "counters": ranks[0].get("counters"),
        "series": ranks[0]["series"],
    }


def _time_to_target(series: list[list[float]], target: float, beta: float = 0.9) -> float | None:
    average = None
    for t, loss in series:
        average = loss if average is None else beta * average + (1 - beta) * loss
        if average <= target:
            return t
    return None


def _median(values: list[float | None]) -> float | None:
    """The median, a run that never reached the target counting as the slowest."""
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    return ordered[len(ordered) // 2] if ordered else None


def _median_run(runs: list[dict]) -> dict:
    """The run whose time-to-target is the median of ``runs``."""
    ordered = sorted(runs, key=lambda r: float("inf") if r["time_to_target"] is None else r["time_to_target"])
    return ordered[len(ordered) // 2]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = results["factors"]
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors), 3.6), squeeze=False)
    for ax, k in zip(axes[0], factors):
        for name, color in (("ddp", "tab:red"), ("async", "tab:blue")):
            run = results["runs"][f"{name}_k{k:g}"]
            average, xs, ys = None, [], []
            for t, loss in run["series"]:
                average = loss if average is None else 0.9 * average + 0.1 * loss
                xs.append(t)
                ys.append(average)
            ax.plot(xs, ys, color=color, label=f"{name} ({run['samples_per_s']:.0f} samples/s)")
        ax.axhline(results["target"], color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"worker 1 slowed x{k:g}")
        ax.set_xlabel("seconds")
        ax.set_ylabel("training loss (moving average)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _driver(args: argparse.Namespace) -> None:
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    results: dict = {
        "target": args.target, "factors": args.factors, "epochs": args.epochs, "engine": args.engine,
        "max_staleness": args.max_staleness, "bound_policy": args.bound_policy, "overlap": args.overlap,
        "runs": {}, "rows": [],
    }
    alone = _run(args, "async", 1.0, 1, "standalone")
    results["runs"]["standalone"] = alone
    results["repeats"] = args.repeats
    speed = alone["samples_per_s"]
    print(f"standalone worker: {speed:.0f} samples/s")
    header = (
        f"{'k':>3} {'DDP t->target':>14} {'async t->target':>16} {'time ratio':>10} {'DDP samp/s':>10} "
        f"{'async samp/s':>12} {'thr ratio':>9} {'efficiency':>10} {'DDP acc':>8} {'async acc':>9} "
        f"{'RSS MB ddp/async':>17} {'time ratio per repeat':>22}"
    )
    print(header)
    for k in args.factors:
        ddps, asys = [], []
        for i in range(args.repeats):
            ddps.append(_run(args, "ddp", k, 2, f"ddp_k{k:g}_{i}"))
            asys.append(_run(args, "async", k, 2, f"async_k{k:g}_{i}"))
        ddp, asy = _median_run(ddps), _median_run(asys)  # the runs plotted: each the median of its repeats
        results["runs"][f"ddp_k{k:g}"], results["runs"][f"async_k{k:g}"] = ddp, asy
        slowed = speed if k == 1 else _run(args, "async", k, 1, f"standalone_k{k:g}")["samples_per_s"]
        ideal = speed + slowed  # Slowdown scales the gradient's computation only: a slowed worker is not k times slower
        ddp_ttt, asy_ttt = _median([r["time_to_target"] for r in ddps]), _median([r["time_to_target"] for r in asys])
        ddp_thr, asy_thr = _median([r["samples_per_s"] for r in ddps]), _median([r["samples_per_s"] for r in asys])
        row = {
            "factor": k,
            "ddp_time_to_target": ddp_ttt, "async_time_to_target": asy_ttt,
            "time_ratio": _ratio(asy_ttt, ddp_ttt),
            "time_ratio_per_repeat": [_ratio(a["time_to_target"], d["time_to_target"]) for d, a in zip(ddps, asys)],
            "ddp_time_to_target_per_repeat": [r["time_to_target"] for r in ddps],
            "async_time_to_target_per_repeat": [r["time_to_target"] for r in asys],
            "ddp_samples_per_s": ddp_thr, "async_samples_per_s": asy_thr,
            "throughput_ratio": asy_thr / ddp_thr,
            "throughput_ratio_per_repeat": [a["samples_per_s"] / d["samples_per_s"] for d, a in zip(ddps, asys)],
            "efficiency": asy_thr / ideal, "ideal_samples_per_s": ideal,
            "ddp_val_acc": ddp["val_acc"], "async_val_acc": asy["val_acc"],
            "ddp_max_rss_mb": max(max(r["max_rss_mb"]) for r in ddps),
            "async_max_rss_mb": max(max(r["max_rss_mb"]) for r in asys),
            "async_staleness_mean": asy["staleness_mean"], "async_staleness_max": asy["staleness_max"],
        }
        results["rows"].append(row)

        def fmt(x: float | None, spec: str) -> str:
            return "never" if x is None else format(x, spec)

        print(
            f"{k:>3g} {fmt(row['ddp_time_to_target'], '.2f'):>14} {fmt(row['async_time_to_target'], '.2f'):>16} "
            f"{fmt(row['time_ratio'], '.2f'):>10} {row['ddp_samples_per_s']:>10.0f} "
            f"{row['async_samples_per_s']:>12.0f} {row['throughput_ratio']:>9.2f} {row['efficiency']:>10.2f} "
            f"{row['ddp_val_acc']:>8.3f} {row['async_val_acc']:>9.3f} "
            f"{row['ddp_max_rss_mb']:>8.0f}/{row['async_max_rss_mb']:<8.0f} "
            f"{' '.join(fmt(x, '.2f') for x in row['time_ratio_per_repeat']):>22}",
            flush=True,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.plot:
        _plot(results, Path(args.plot))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="slowdowns k of worker 1")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--target", type=float, default=0.02, help="training-loss target (moving average)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (the figures are medians)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--bound-policy", default="accumulate", choices=["accumulate", "wait", "drop"])
    parser.add_argument("--engine", default="shared_memory", choices=["shared_memory", "parameter_server"])
    parser.add_argument("--overlap", default="auto", choices=sorted(_OVERLAP),
                        help="parameter_server: pipeline the pushes (the strategy's overlap; auto = its default)")
    parser.add_argument("--model", default="mlp", choices=["mlp", "gpt"],
                        help="mlp: the digits MLP (26k parameters); gpt: a byte-level transformer of about 10.7M "
                             "parameters on the offline python_docs corpus (use --target 2.5 or so)")
    parser.add_argument("--train-stride", type=int, default=1024,
                        help="gpt: tokens between two training windows (1024: about 1000 windows of 128 per epoch)")
    parser.add_argument("--limit-val-batches", type=float, default=1.0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--plot", default=None, help="write the loss-against-time figure (PNG) here")
    parser.add_argument("--work-dir", default="results/straggler_runs")
    parser.add_argument("--run-timeout", type=float, default=900.0)
    # worker mode (used by the driver)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="async", help=argparse.SUPPRESS)
    parser.add_argument("--factor", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--num-nodes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--report-dir", default=".", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _worker(args) if args.worker else _driver(args)


if __name__ == "__main__":
    main()
