"""The command line, the problems' exact gradients, the metrics and the runner."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_async.sim.cli import main
from lightning_async.sim.metrics import eval_schedule, loglog_slope, rate_check, running_min
from lightning_async.sim.optimizers import make_optimizer, parse_kwargs
from lightning_async.sim.problems import PROBLEMS, Problem, get_problem
from lightning_async.sim.run import simulate

ARGS = ["--problem", "regression", "--workers", "8", "--speeds", "linear:1:3+straggler:0.05:5:4",
        "--max-staleness", "3", "--optimizer", "torch.adagrad", "--lr", "0.1", "--steps", "200", "--quiet"]


def test_cli_writes_json_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main([*ARGS, "--bound-policy", "drop", "--out", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    c = r["counters"]
    assert c["applied"] == 200 and c["applied"] + c["rejected_total"] == c["received"]
    assert sum(r["staleness_histogram"].values()) == 200
    assert max(int(s) for s in r["staleness_histogram"]) <= 3
    traj = r["trajectory"]
    assert traj["applied"][0] == 0 and traj["applied"][-1] == 200
    assert len(traj["loss"]) == len(traj["grad_norm_sq"]) == len(traj["min_grad_norm_sq"])
    assert traj["min_grad_norm_sq"] == running_min(traj["grad_norm_sq"])
    assert r["command"].startswith("python -m lightning_async.sim --problem regression")
    assert png.stat().st_size > 10_000


def test_cli_same_seed_same_json(tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"{i}.json"
        main([*ARGS, "--selection", "random", "--out", str(out)])
        outs.append(json.loads(out.read_text()))
    for r in outs:
        r.pop("wall_time_s"), r.pop("updates_per_s"), r.pop("config"), r.pop("command")
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--speeds", "linear:1"], "takes 2 argument"),
        (["--max-staleness", "-2"], "--max-staleness must be an integer >= 0 or 'none'"),
        (["--workers", "0"], "--workers must be an integer >= 1"),
        (["--problem", "nope"], "problem must be one of"),
        (["--optimizer", "lbfgs2"], "optimizer must be one of"),
        (["--opt-arg", "momentum"], "write key=value"),
        (["--blocks", "w.9"], "blocks must be one of"),
    ],
)
def test_cli_errors_name_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                    match: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([*ARGS, "--out", str(tmp_path / "x.json"), *extra])
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_help_runs_as_module() -> None:
    out = subprocess.run([sys.executable, "-m", "lightning_async.sim", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("--speeds", "straggler:PROB:FACTOR:LENGTH", "accumulate", "--max-staleness", "examples:"):
        assert word in out


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problems_exact_gradient_is_mean_of_sample_gradients(name: str) -> None:
    problem = get_problem(name, seed=1)
    x, y = problem.full_batch
    params = list(problem.model.parameters())
    full = torch.autograd.grad(problem.loss_fn(problem.model, (x, y)), params)
    halves = [torch.autograd.grad(problem.loss_fn(problem.model, (x[s], y[s])), params)
              for s in (slice(0, len(x) // 2), slice(len(x) // 2, None))]
    loss, gsq = problem.objective()
    assert gsq == pytest.approx(sum(float((g * g).sum()) for g in full), rel=1e-12)
    assert math.isfinite(loss) and gsq > 0
    if name == "mlp":  # no regularizer: F is exactly the mean of the per-sample losses
        for f, a, b in zip(full, *halves):
            torch.testing.assert_close(f, (a + b) / 2)


def my_problem(seed: int, dtype: torch.dtype, batch_size: int) -> Problem:
    return get_problem("regression", seed, dtype, batch_size)


def test_plug_in_problem_and_optimizer_kwargs() -> None:
    problem = get_problem(f"{__name__}:my_problem", seed=0)
    assert problem.name == "regression"
    kwargs = parse_kwargs(["momentum=0.9", "nesterov=True"])
    opt = make_optimizer("torch.sgd", problem.model.parameters(), 0.1, **kwargs)
    assert opt.param_groups[0]["nesterov"] is True
    with pytest.raises(ValueError, match="rejected its arguments"):
        make_optimizer("torch.sgd", problem.model.parameters(), 0.1, bogus=1)
    assert parse_kwargs(["normalization=inexact", "betas=(0.9,0.99)"]) == {"normalization": "inexact",
                                                                           "betas": (0.9, 0.99)}


def test_simulate_lr_decay_and_async_optimizer() -> None:
    problem = get_problem("mlp", seed=0)
    opt = make_optimizer("adagrad", problem.model.parameters(), 0.05)
    r = simulate(problem, opt, 100, workers=4, max_staleness=2, lr_decay="sqrt", speeds="linear:1:2")
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 / math.sqrt(101))
    assert r["engine"]["optimizer_receives_staleness"] is True
    assert r["final"]["loss"] < r["trajectory"]["loss"][0]


def test_metrics() -> None:
    t = [float(10**i) for i in range(1, 6)]
    assert loglog_slope(t, [a**-0.5 for a in t], 1) == pytest.approx(-0.5)
    good = rate_check(t, [math.log(a) / math.sqrt(a) for a in t])
    assert good["bounded"] is True and good["ratio_final"] == pytest.approx(1.0)
    floor = rate_check(t, [1e-3 for _ in t])
    assert floor["bounded"] is False and floor["slope"] == pytest.approx(0.0)
    assert eval_schedule(1000, 4) == [0, 1, 10, 100, 1000]
    assert running_min([3, 1, float("nan"), 2, 0.5]) == [3, 1, 1, 1, 0.5]
