"""Does the parameter-server engine's overlap pay, and does its automatic rule pick well, on a realistic model?

Usage::

    python benchmarks/overlap.py --out results/overlap.json           # about 20 minutes on 2 cores

Trains the straggler benchmark's ``gpt`` workload (a byte-level transformer of about 10.7M parameters on the offline
``python_docs`` corpus, one epoch, Adam) on 2 CPU workers, worker 1 slowed k times, under DDP and under the
parameter-server engine with ``overlap`` off, on and automatic (``None``: the engine turns it on and off per owner
from the measured round trip and the workers' relative speeds). Runs are interleaved (DDP, off, auto, on, DDP, ...)
and every figure is a median over ``--repeats``, printed as ratios against DDP in this one invocation:

* samples/s over the whole fit;
* the held-out loss after the epoch (equal samples for every run);
* the mean staleness of the applied updates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from straggler import _run  # noqa: E402  (the straggler benchmark's launcher: one fit, its reports)

VARIANTS = ("off", "auto", "on")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-stride", type=int, default=2048, help="about 500 windows of 128 bytes per epoch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="overlap settings to run (DDP always runs)")
    parser.add_argument("--out", default=None, help="write every run and the summary as JSON here")
    parser.add_argument("--work-dir", default="results/overlap_runs")
    args = parser.parse_args()
    run_args = argparse.Namespace(
        epochs=1, lr=args.lr, batch_size=args.batch_size, max_staleness=4, bound_policy="accumulate",
        engine="parameter_server", overlap="auto", model="gpt", train_stride=args.train_stride,
        limit_val_batches=20, target=2.5, work_dir=args.work_dir, run_timeout=1800.0,
    )
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    results: dict = {"factors": args.factors, "repeats": args.repeats, "runs": [], "rows": []}
    print(f"{'k':>3} {'variant':>8} {'samples/s':>10} {'vs DDP':>7} {'val loss':>9} {'vs DDP':>7} {'staleness':>9}")
    for k in args.factors:
        runs: dict[str, list[dict]] = {"ddp": [], **{v: [] for v in args.variants}}
        for i in range(args.repeats):
            runs["ddp"].append(_run(run_args, "ddp", k, 2, f"ddp_k{k:g}_{i}"))
            for variant in args.variants:
                run_args.overlap = variant
                runs[variant].append(_run(run_args, "async", k, 2, f"{variant}_k{k:g}_{i}"))
        for name, group in runs.items():
            for r in group:
                results["runs"].append({"factor": k, "variant": name, **{key: v for key, v in r.items()
                                                                          if key != "series"}})
        ddp_thr = statistics.median(r["samples_per_s"] for r in runs["ddp"])
        ddp_loss = statistics.median(r["val_loss"] for r in runs["ddp"])
        for name, group in runs.items():
            thr = statistics.median(r["samples_per_s"] for r in group)
            loss = statistics.median(r["val_loss"] for r in group)
            stale = [r["staleness_mean"] for r in group if r["staleness_mean"] is not None]
            row = {"factor": k, "variant": name, "samples_per_s": thr, "throughput_ratio": thr / ddp_thr,
                   "val_loss": loss, "val_loss_ratio": loss / ddp_loss,
                   "staleness_mean": statistics.median(stale) if stale else None}
            results["rows"].append(row)
            staleness = "" if row["staleness_mean"] is None else f"{row['staleness_mean']:.2f}"
            print(f"{k:>3g} {name:>8} {thr:>10.1f} {thr / ddp_thr:>7.2f} {loss:>9.3f} {loss / ddp_loss:>7.3f} "
                  f"{staleness:>9}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
