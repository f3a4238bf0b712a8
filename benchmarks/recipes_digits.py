"""Run every digits recipe to completion on 2 workers, and the DDP baseline, and tabulate accuracy and wall time.

Usage::

    python benchmarks/recipes_digits.py --out docs/figures/recipes_digits.json

Each variant ``recipes/digits_mlp/<variant>.yaml`` runs on top of ``base.yaml`` (2 asynchronous CPU workers,
``max_staleness=auto``, ``bound_policy=accumulate``, 20 epochs) through the ``lightning-async`` command; the baseline
is ``adam.yaml`` followed by ``ddp.yaml`` (the same model and optimizer under synchronous DDP). Reported: the
validation accuracy and loss after the last epoch (averaged over the workers) and the wall time of the whole
command. ``scripts/gen_recipes_doc.py`` renders the JSON as the results table of ``docs/recipes.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "digits_mlp"
LAUNCH_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _fit(configs: list[Path], root: Path, timeout: float) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"  # pinned alike in every run (Lightning would give a lone worker every core)
    args = [a for c in configs for a in ("--config", str(c))]
    cmd = [sys.executable, "-m", "lightning_async.cli", "fit", *args, f"--trainer.default_root_dir={root}",
           "--trainer.enable_progress_bar=false"]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    metrics = sorted(root.glob("lightning_logs/version_*/metrics.csv"))[-1]
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/acc")]
    return {"wall_seconds": wall, "val_acc": float(rows[-1]["val/acc"]), "val_loss": float(rows[-1]["val/loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/figures/recipes_digits.json")
    parser.add_argument("--work-dir", default="results/recipes_digits")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    base = RECIPES / "base.yaml"
    results: dict[str, dict] = {}
    runs = [("ddp baseline (adam)", [base, RECIPES / "adam.yaml", RECIPES / "ddp.yaml"])]
    runs += [(p.stem, [base, p]) for p in sorted(RECIPES.glob("*.yaml")) if p.stem not in ("base", "ddp")]
    for name, configs in runs:
        results[name] = _fit(configs, work / name.replace(" ", "_").replace("(", "").replace(")", ""), args.timeout)
        r = results[name]
        print(f"{name:28s} val acc {r['val_acc']:.3f}  val loss {r['val_loss']:.3f}  wall {r['wall_seconds']:.1f}s",
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python benchmarks/recipes_digits.py", "runs": results}, indent=1))


if __name__ == "__main__":
    main()
