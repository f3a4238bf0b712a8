"""Convergence study of the asynchronous adaptive class on the simulated engine.

Measures, for each run, ``m(t) = min_{s <= t} ||grad F(X_s)||^2`` (exact full gradient, evaluated at ~40 log-spaced
``t``) against applied updates ``t``, the fitted log-log slope of ``m`` (the rate O(log t / sqrt t) means a slope
near -1/2 or steeper), and whether ``r(t) = m(t) sqrt(t) / log t`` stays bounded over the horizon
(:func:`lightning_async.sim.metrics.rate_check`). Three parts:

* ``variants``: methods (adagrad, adanorm, rmsprop, adam, muon) x momentum (none, EMA 0.9 on the raw gradient) x
  normalization (none, inexact) x step rule (constant, diminishing lr / sqrt(k + 1)), at P=16 workers, K=4;
* ``scaling``: workers {1, 4, 16, 64, 256} x max_staleness {0, 4, 16, 64} for two methods;
* ``policies``: the bound policies (wait, accumulate with sum and mean, drop) at P=64, K=4.

Writes ``docs/figures/convergence_results.json``, ``docs/figures/convergence_*.png`` and the results section of
``docs/convergence.md`` (between its RESULTS markers). Sized to finish in about 10-15 minutes on 2 shared CPU
cores; ``--steps`` and ``--parts`` shrink or grow it, e.g. the full grid of the issue (every method variant x every
P x every K) is ``--parts full`` (hours here).

    python benchmarks/convergence.py                      # the committed study
    python benchmarks/convergence.py --parts variants --steps 2000   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_async.sim.optimizers import make_optimizer  # noqa: E402
from lightning_async.sim.problems import get_problem  # noqa: E402
from lightning_async.sim.run import simulate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEEDS = "linear:1:4+lognormal:0.3+straggler:0.01:10:20"
PROBLEM = "mlp"
# Base learning rates, picked by a short sweep {1e-3, 1e-2, 1e-1} at P=1, K=0, 2000 updates (lowest final
# min ||grad F||^2 without divergence); not tuned per variant.
METHODS: dict[str, tuple[float, dict[str, Any]]] = {
    "adagrad": (0.1, {}),
    "adanorm": (0.1, {}),
    "rmsprop": (1e-3, {}),
    "adam": (1e-3, {}),
    "muon": (1e-2, {"ns_dtype": "param"}),
}
WORKERS = (1, 4, 16, 64, 256)
STALENESS = (0, 4, 16, 64)
SCALING_METHODS = (("adagrad", "none", "none", "constant"), ("adam", "ema", "none", "constant"))


def optimizer_kwargs(method: str, momentum: str, normalization: str, step_rule: str) -> dict[str, Any]:
    """Arguments of ``lightning_async.optim.AsyncAdaptive`` for one variant."""
    kwargs = {"geometry": method, "normalization": normalization, "step_rule": step_rule, **METHODS[method][1]}
    if momentum == "ema":
        kwargs.update(momentum=0.9, momentum_type="raw", momentum_form="ema")
    else:
        kwargs.update(momentum_type="none")
    return kwargs


def run_one(method: str, momentum: str, normalization: str, step_rule: str, workers: int, k: int, policy: str,
            steps: int, seed: int, reduction: str = "sum") -> dict[str, Any]:
    """One simulated run; returns its row (configuration, rate check, final values, trajectory of m(t))."""
    problem = get_problem(PROBLEM, seed=seed)
    lr = METHODS[method][0]
    opt = make_optimizer("adaptive", problem.model.parameters(), lr,
                         **optimizer_kwargs(method, momentum, normalization, step_rule))
    r = simulate(problem, opt, steps, eval_points=40, workers=workers, speeds=SPEEDS, max_staleness=k,
                 bound_policy=policy, accumulate_reduction=reduction, seed=seed)
    c = r["counters"]
    return {
        "method": method, "momentum": momentum, "normalization": normalization, "step_rule": step_rule, "lr": lr,
        "workers": workers, "max_staleness": k, "bound_policy": policy, "accumulate_reduction": reduction,
        "steps": steps, "seed": seed, "rate": r["rate"], "final": r["final"], "stopped_by": r["stopped_by"],
        "applied": c["applied"], "received": c["received"], "rejected": c["rejected"],
        "max_staleness_seen": c["max_staleness_seen"], "mean_staleness": c["mean_staleness"],
        "computations": r["engine"]["computations"], "wall_time_s": r["wall_time_s"],
        "t": r["trajectory"]["applied"], "min_grad_norm_sq": r["trajectory"]["min_grad_norm_sq"],
        "grad_norm_sq": r["trajectory"]["grad_norm_sq"], "loss": r["trajectory"]["loss"],
    }


def plan(parts: list[str], steps: int) -> list[dict[str, Any]]:
    """The runs of the requested parts."""
    runs: list[dict[str, Any]] = []
    if "variants" in parts or "full" in parts:
        for method, mom, norm, rule in itertools.product(METHODS, ("none", "ema"), ("none", "inexact"),
                                                         ("constant", "diminishing")):
            ps, ks = (WORKERS, STALENESS) if "full" in parts else ((16,), (4,))
            for p, k in itertools.product(ps, ks):
                runs.append(dict(part="variants", method=method, momentum=mom, normalization=norm, step_rule=rule,
                                 workers=p, k=k, policy="wait", steps=steps))
    if "scaling" in parts:
        for (method, mom, norm, rule), p, k in itertools.product(SCALING_METHODS, WORKERS, STALENESS):
            runs.append(dict(part="scaling", method=method, momentum=mom, normalization=norm, step_rule=rule,
                             workers=p, k=k, policy="wait", steps=steps))
    if "policies" in parts:
        for policy, reduction in (("wait", "sum"), ("accumulate", "sum"), ("accumulate", "mean"), ("drop", "sum")):
            runs.append(dict(part="policies", method="adam", momentum="ema", normalization="none",
                             step_rule="constant", workers=64, k=4, policy=policy, reduction=reduction,
                             steps=max(steps // 2, 100)))
    return runs


def label(row: dict[str, Any]) -> str:
    return (f"{row['method']}{' +mom' if row['momentum'] != 'none' else ''}"
            f"{' +inexact' if row['normalization'] != 'none' else ''}"
            f"{' dimin.' if row['step_rule'] == 'diminishing' else ' const.'}")


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | P | K | policy | t | min_s ‖grad F(X_s)‖² | slope [T/100,T] | slope [T/10,T] | r growth | "
            "bounded | max / mean staleness | rejected | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        pol = r["bound_policy"] + (f" ({r['accumulate_reduction']})" if r["bound_policy"] == "accumulate" else "")
        rej = sum(r["rejected"].values())
        lines.append(
            f"| {label(r)} | {r['workers']} | {r['max_staleness']} | {pol} | {r['applied']} | "
            f"{_fmt(r['final']['min_grad_norm_sq'])} | {_fmt(r['rate'].get('slope'), '.2f')} | "
            f"{_fmt(r['rate'].get('slope_last_decade'), '.2f')} | {_fmt(r['rate'].get('ratio_growth'), '.2f')} | "
            f"{_fmt(r['rate'].get('bounded'))} | {_fmt(r['max_staleness_seen'], 'd')} / "
            f"{_fmt(r['mean_staleness'], '.1f')} | {rej} | {r['wall_time_s']:.1f} |"
        )
    return "\n".join(lines)


def _guide(ax: Any, rows: list[dict[str, Any]]) -> None:
    t = [a for a in rows[0]["t"] if a > 0]
    m0 = max(r["min_grad_norm_sq"][1] for r in rows)
    ax.loglog(t, [m0 * math.log(max(a, 3)) / math.log(3) * math.sqrt(1 / a) for a in t], "k:", lw=1,
              label="log t / sqrt t")
    ax.loglog(t, [m0 / math.sqrt(a) for a in t], "k--", lw=1, label="t^-1/2")


def _curve(ax: Any, r: dict[str, Any], lab: str, **kw: Any) -> None:
    pts = [(a, m) for a, m in zip(r["t"], r["min_grad_norm_sq"]) if a > 0 and m > 0 and math.isfinite(m)]
    if pts:
        ax.loglog(*zip(*pts), label=lab, **kw)


def plot_variants(rows: list[dict[str, Any]], path: Path) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4.2), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        sub = [r for r in rows if r["method"] == method]
        for i, r in enumerate(sub):
            style = "-" if r["step_rule"] == "constant" else "--"
            _curve(ax, r, label(r).replace(method, "").strip(), ls=style, color=f"C{i // 2}")
        _guide(ax, sub)
        ax.set(title=f"{method} (P=16, K=4, wait)", xlabel="applied updates t")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower left")
    axes[0][0].set_ylabel("min_{s<=t} ||grad F(X_s)||^2")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scaling(rows: list[dict[str, Any]], path: Path) -> None:
    variants = list(dict.fromkeys(label(r) for r in rows))
    ks = sorted({r["max_staleness"] for r in rows})
    fig, axes = plt.subplots(len(variants), len(ks), figsize=(4 * len(ks), 3.6 * len(variants)), sharey="row",
                             squeeze=False)
    for i, v in enumerate(variants):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            sub = [r for r in rows if label(r) == v and r["max_staleness"] == k]
            for n, r in enumerate(sorted(sub, key=lambda r: r["workers"])):
                _curve(ax, r, f"P={r['workers']}", color=f"C{n}")
            if sub:
                _guide(ax, sub)
            ax.set(title=f"{v}, K={k}", xlabel="applied updates t")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
        axes[i][0].set_ylabel("min_{s<=t} ||grad F||^2")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_ratio(rows: list[dict[str, Any]], path: Path) -> None:
    variants = list(dict.fromkeys(label(r) for r in rows))
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
    for ax, v in zip(axes[0], variants):
        for n, r in enumerate(r for r in rows if label(r) == v):
            pts = [(a, m * math.sqrt(a) / math.log(a)) for a, m in zip(r["t"], r["min_grad_norm_sq"])
                   if a >= 3 and math.isfinite(m)]
            ax.semilogx(*zip(*pts), color=plt.cm.viridis(n / 20), lw=1,
                        label=f"P={r['workers']}, K={r['max_staleness']}")
        ax.set(title=f"{v}: m(t) sqrt(t) / log t", xlabel="applied updates t", yscale="log")
        ax.legend(fontsize=5.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_policies(rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for n, r in enumerate(rows):
        pol = r["bound_policy"] + (f" ({r['accumulate_reduction']})" if r["bound_policy"] == "accumulate" else "")
        _curve(ax, r, f"{pol}: {r['computations']} gradients", color=f"C{n}")
    _guide(ax, rows)
    ax.set(title="adam +mom, P=64, K=4: bound policies", xlabel="applied updates t",
           ylabel="min_{s<=t} ||grad F||^2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_doc(doc: Path, rows: list[dict[str, Any]], command: str, elapsed: float) -> None:
    parts = {p: [r for r in rows if r["part"] == p] for p in ("variants", "scaling", "policies")}
    text = [f"Produced by `{command}` in {elapsed / 60:.1f} minutes (wall clock, 2 shared CPU cores).", ""]
    for name, sub in parts.items():
        if sub:
            text += [f"#### {name} ({len(sub)} runs, {sub[0]['steps']} applied updates each)", "", table(sub), ""]
    block = "\n".join(text)
    begin, end = "<!-- BEGIN RESULTS (written by benchmarks/convergence.py) -->", "<!-- END RESULTS -->"
    old = doc.read_text() if doc.exists() else f"# Convergence study\n\n{begin}\n{end}\n"
    if begin not in old:
        old += f"\n{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    doc.write_text(head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["variants", "scaling", "policies"],
                   choices=["variants", "scaling", "policies", "full"])
    p.add_argument("--steps", type=int, default=6000, help="applied updates per run (6000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "figures")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "convergence.md")
    p.add_argument("--replot", type=Path, default=None,
                   help="redraw the figures and the doc table from a results JSON, without running")
    args = p.parse_args(argv)
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        _report(saved["runs"], args.out_dir, args.doc, saved["command"], saved["elapsed_s"])
        return 0
    runs = plan(args.parts, args.steps)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/convergence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, spec in enumerate(runs):
        row = run_one(spec["method"], spec["momentum"], spec["normalization"], spec["step_rule"], spec["workers"],
                      spec["k"], spec["policy"], spec["steps"], args.seed, spec.get("reduction", "sum"))
        row["part"] = spec["part"]
        rows.append(row)
        print(f"[{i + 1}/{len(runs)} {time.perf_counter() - start:6.0f}s] {spec['part']:8s} {label(row):28s} "
              f"P={row['workers']:3d} K={row['max_staleness']:2d} {row['bound_policy']:10s} "
              f"m={row['final']['min_grad_norm_sq']:.3g} slope={_fmt(row['rate'].get('slope'), '.2f')} "
              f"bounded={row['rate'].get('bounded')}", flush=True)
    elapsed = time.perf_counter() - start
    (args.out_dir / "convergence_results.json").write_text(json.dumps(
        {"command": command, "elapsed_s": elapsed, "speeds": SPEEDS, "problem": PROBLEM, "methods": METHODS,
         "runs": rows}, indent=1))
    _report(rows, args.out_dir, args.doc, command, elapsed)
    print(f"done in {elapsed / 60:.1f} min")
    return 0


def _report(rows: list[dict[str, Any]], out_dir: Path, doc: Path, command: str, elapsed: float) -> None:
    by = {p: [r for r in rows if r["part"] == p] for p in ("variants", "scaling", "policies")}
    if by["variants"]:
        plot_variants([r for r in by["variants"] if r["workers"] == 16 and r["max_staleness"] == 4],
                      out_dir / "convergence_variants.png")
    if by["scaling"]:
        plot_scaling(by["scaling"], out_dir / "convergence_scaling.png")
        plot_ratio(by["scaling"], out_dir / "convergence_ratio.png")
    if by["policies"]:
        plot_policies(by["policies"], out_dir / "convergence_policies.png")
    write_doc(doc, rows, command, elapsed)


if __name__ == "__main__":
    raise SystemExit(main())
