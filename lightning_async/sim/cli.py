"""``python -m lightning_async.sim``: run one simulated asynchronous training and write its JSON (and figure)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning_async._engine.bound import BOUND_POLICIES
from lightning_async.sim.blocks import OVERLAPS, SELECTIONS
from lightning_async.sim.optimizers import OPTIMIZER_NAMES, make_optimizer, parse_kwargs
from lightning_async.sim.problems import PROBLEMS, get_problem
from lightning_async.sim.speeds import SPEC_HELP, SpeedProfile

DESCRIPTION = """\
Simulate P asynchronous workers on one process, deterministically, and record how training converges.

Each virtual worker reads the parameters at the current version of its block(s), computes a stochastic gradient on a
mini-batch, and pushes it when its virtual clock (its speed profile) says the computation is over. One authoritative
optimizer applies the updates; max_staleness K bounds the staleness of every applied update under the bound policy:
  accumulate  a worker whose update may not be applied yet keeps computing on the parameters it holds and adds the
              new gradients to its update (no work lost); reads wait while the bound would not allow them
  wait        reads and applies that would break the bound wait (the worker idles)
  drop        nothing waits; an update whose staleness exceeds K is discarded and counted
The same --seed gives the same trajectory, bit for bit. The problems have exact full gradients, so the JSON holds
the exact objective F and stationarity ||grad F||^2 against applied updates t.
"""

EPILOG = f"""\
speed profiles (--speeds SPEC, '+'-separated parts; durations are in virtual time units):
{SPEC_HELP}

problems (--problem): {", ".join(sorted(PROBLEMS))}, or 'package.module:function' where
  function(seed, dtype, batch_size) returns a lightning_async.sim.problems.Problem (your model, loss, data).

optimizers (--optimizer): {", ".join(OPTIMIZER_NAMES)}, or 'package.module:Class'.
  Names without 'torch.' are lightning_async.optim presets and receive each update's staleness.
  Extra arguments: --opt-arg momentum=0.9 --opt-arg "normalization='inexact'" (Python literals).

output JSON: config, trajectory {{applied, virtual_time, loss, grad_norm_sq, min_grad_norm_sq}},
  staleness_histogram, counters {{received, applied, rejected, ...}}, rate {{slope, ratio_growth, bounded}},
  engine (the engine's summary), wall_time_s, updates_per_s.

examples:
  python -m lightning_async.sim --problem mlp --workers 16 --speeds linear:1:4+lognormal:0.3 \\
      --max-staleness 4 --bound-policy accumulate --optimizer adam --lr 1e-3 --steps 20000 --seed 0 \\
      --out run.json --plot run.png
  python -m lightning_async.sim --problem regression --workers 64 --blocks tensor --selection random \\
      --speeds const:1+straggler:0.01:20:50 --max-staleness 16 --bound-policy drop --optimizer adagrad \\
      --lr 0.1 --steps 5000 --out drop.json
"""


def _max_staleness(text: str) -> int | None:
    if text.lower() in ("none", "inf", "unbounded"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-staleness must be an integer >= 0 or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--max-staleness must be an integer >= 0 or 'none', got {text!r}")
    return value


def _positive_int(name: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= 1, got {text!r}")
        return value

    return parse


def _speeds(text: str) -> str:
    try:
        SpeedProfile.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m lightning_async.sim``."""
    p = argparse.ArgumentParser(
        prog="python -m lightning_async.sim", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("problem")
    g.add_argument("--problem", default="mlp", help="built-in problem or package.module:function (default: mlp)")
    g.add_argument("--batch-size", type=_positive_int("--batch-size"), default=16, help="mini-batch size (16)")
    g.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="parameter dtype (float64)")
    g = p.add_argument_group("asynchrony")
    g.add_argument("--workers", type=_positive_int("--workers"), default=1, help="virtual workers P (1)")
    g.add_argument("--speeds", type=_speeds, default="const:1", help="speed profile SPEC, see below (const:1)")
    g.add_argument("--max-staleness", type=_max_staleness, default=0, help="the bound K, or 'none' (0)")
    g.add_argument("--bound-policy", choices=BOUND_POLICIES, default="accumulate", help="(accumulate)")
    g.add_argument("--accumulate-reduction", choices=("sum", "mean"), default="mean",
                   help="accumulate: push the sum (default) or the mean of the accumulated gradients")
    g.add_argument("--blocks", default="tensor",
                   help="all | tensor | layer | groups 'a.weight,a.bias;b.weight' (may overlap) (tensor)")
    g.add_argument("--selection", choices=SELECTIONS, default="all", help="blocks updated per step (all)")
    g.add_argument("--overlap", choices=OVERLAPS, default="sum",
                   help="step on a tensor shared by m blocks: full (sum) or divided by m (average) (sum)")
    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", default="adam", help="optimizer name, see below (adam)")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    g.add_argument("--opt-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra optimizer argument, repeatable")
    g.add_argument("--lr-decay", choices=("none", "sqrt"), default="none",
                   help="sqrt: lr / sqrt(1 + t) after update t, for optimizers without a step rule (none)")
    g = p.add_argument_group("run and output")
    g.add_argument("--steps", type=_positive_int("--steps"), default=1000, help="applied updates N (1000)")
    g.add_argument("--seed", type=int, default=0, help="seed of the problem, data, speeds and selection (0)")
    g.add_argument("--eval-points", type=_positive_int("--eval-points"), default=60,
                   help="about this many log-spaced exact evaluations of F and ||grad F||^2 (60)")
    g.add_argument("--max-received", type=int, default=None,
                   help="stop after this many received updates (default: 100 x steps; guards 'drop')")
    g.add_argument("--out", type=Path, required=True, help="result JSON path")
    g.add_argument("--plot", type=Path, default=None, help="also write a PNG figure here")
    g.add_argument("--quiet", action="store_true", help="do not print the summary line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from lightning_async.sim.run import simulate  # noqa: PLC0415

    parser = build_parser()
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    try:
        problem = get_problem(args.problem, seed=args.seed, dtype=dtype, batch_size=args.batch_size)
        optimizer = make_optimizer(args.optimizer, problem.model.parameters(), args.lr, **parse_kwargs(args.opt_arg))
        result = simulate(
            problem, optimizer, args.steps, eval_points=args.eval_points, lr_decay=args.lr_decay,
            max_received=args.max_received, workers=args.workers, speeds=args.speeds,
            max_staleness=args.max_staleness, bound_policy=args.bound_policy,
            accumulate_reduction=args.accumulate_reduction, blocks=args.blocks, selection=args.selection,
            overlap=args.overlap, seed=args.seed,
        )
    except ValueError as err:
        parser.error(str(err))
    result = {"command": "python -m lightning_async.sim " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if args.plot is not None:
        from lightning_async.sim.plot import plot_result  # noqa: PLC0415

        plot_result(result, args.plot)
    if not args.quiet:
        f = result["final"]
        print(f"{result['counters']['applied']} applied / {result['counters']['received']} received in "
              f"{result['wall_time_s']:.1f} s; F={f['loss']:.4g}, min ||grad F||^2={f['min_grad_norm_sq']:.3g}, "
              f"slope={result['rate'].get('slope')}, max staleness {result['counters']['max_staleness_seen']}; "
              f"wrote {args.out}")
    return 0
