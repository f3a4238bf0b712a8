"""The ``lightning-async`` command: defaults, --print_config, base + delta composition, overrides, entry points."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lightning_async
from lightning_async.cli import build_cli, main
from lightning_async.models import CNNClassifier, MLPClassifier
from lightning_async.optim import AsyncAdaptive
from tests.recipes.helpers import RECIPES, single_process

BASE = RECIPES / "digits_mlp" / "base.yaml"
ADAGRAD = RECIPES / "digits_mlp" / "adagrad.yaml"
DDP = RECIPES / "digits_mlp" / "ddp.yaml"


def _print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_default_is_the_digits_mlp(capsys):
    config = _print_config(capsys)
    assert config["model"]["class_path"] == "lightning_async.models.MLPClassifier"
    assert config["data"]["class_path"] == "lightning_async.data.DigitsDataModule"


def test_print_config_composes_base_delta_and_command_line(capsys):
    config = _print_config(
        capsys,
        "--config", str(BASE), "--config", str(ADAGRAD),
        "--model.optimizer.init_args.lr=0.123",
        "--trainer.strategy.init_args.max_staleness=8",
        "--trainer.max_epochs=7",
    )
    optimizer = config["model"]["init_args"]["optimizer"]
    assert optimizer["class_path"] == "lightning_async.optim.AsyncAdaptive"
    assert optimizer["init_args"]["geometry"] == "adagrad"  # from the delta
    assert optimizer["init_args"]["momentum_type"] == "none"  # the delta replaces the base's Adam momentum
    assert optimizer["init_args"]["lr"] == 0.123  # from the command line, after both files
    assert config["model"]["init_args"]["hidden_dims"] == [128, 128]  # untouched base value
    strategy = config["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning_async.AsyncAdaptiveStrategy"
    assert strategy["init_args"]["max_staleness"] == 8 and strategy["init_args"]["bound_policy"] == "accumulate"
    assert config["trainer"]["max_epochs"] == 7


def test_ddp_delta_replaces_only_the_strategy(capsys):
    config = _print_config(capsys, "--config", str(BASE), "--config", str(ADAGRAD), "--config", str(DDP))
    assert config["trainer"]["strategy"] == "ddp"
    assert config["model"]["init_args"]["optimizer"]["init_args"]["geometry"] == "adagrad"


def test_recipe_instantiates_strategy_and_injected_optimizer():
    cli = build_cli(["--config", str(BASE), "--config", str(ADAGRAD), "--trainer.devices=1"], run=False)
    assert isinstance(cli.trainer.strategy, lightning_async.AsyncAdaptiveStrategy)
    assert cli.trainer.strategy.max_staleness == 4
    assert isinstance(cli.model, MLPClassifier)
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, AsyncAdaptive)
    group = optimizer.param_groups[0]
    assert (group["geometry"], group["lr"], group["momentum_type"]) == ("adagrad", 0.05, "none")


def test_short_class_names_select_model_and_data(tmp_path):
    cli = build_cli(
        ["fit", "--model=CNNClassifier", "--model.channels=2", "--model.hidden_dim=4", "--data=MNISTDataModule",
         "--data.synthetic=true", "--data.synthetic_size=8", "--data.batch_size=4", *single_process(tmp_path)]
    )
    assert isinstance(cli.model, CNNClassifier) and cli.trainer.state.finished


def test_bad_value_is_reported_with_the_parameter():
    with pytest.raises(ValueError, match=r"`hidden_dims\[0\]` must be a positive integer, got 0"):
        main(["fit", "--config", str(BASE), "--model.hidden_dims=[0]"])


def test_console_script_prints_a_recipe(tmp_path):
    script = Path(sys.executable).parent / "lightning-async"
    result = subprocess.run(
        [str(script), "fit", "--config", str(BASE), "--config", str(ADAGRAD), "--print_config"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["model"]["init_args"]["optimizer"]["init_args"]["geometry"] == "adagrad"


def test_python_dash_m_runs_main(monkeypatch, capsys):
    # `python -m lightning_async.cli ...` in-process (a subprocess would only add interpreter start-up time).
    monkeypatch.setattr(sys, "argv", ["lightning_async.cli", "fit", "--config", str(BASE), "--print_config"])
    monkeypatch.delitem(sys.modules, "lightning_async.cli")
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("lightning_async.cli", run_name="__main__")
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["model"]["class_path"] == "lightning_async.models.MLPClassifier"


def test_the_registered_strategy_name_works_in_yaml(tmp_path):
    config = tmp_path / "string_strategy.yaml"
    config.write_text("trainer:\n  strategy: async_adaptive\n  devices: 1\n  max_epochs: 1\n")
    cli = build_cli(["--config", str(BASE), "--config", str(config), *single_process(tmp_path)], run=False)
    assert isinstance(cli.trainer.strategy, lightning_async.AsyncAdaptiveStrategy)
    assert cli.trainer.strategy._start_method == "popen"
