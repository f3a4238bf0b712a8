"""The ``lightning-async`` command: defaults, --print_config, base + delta composition, overrides, entry points."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lightning_async
from lightning_async.cli import DEBUG_ENV, ConfigurationError, build_cli, main, recipes_dir
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
    assert cli.trainer.strategy.max_staleness == "auto"
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


def _config_error(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_value_is_reported_with_the_parameter(capsys, monkeypatch):
    err = _config_error(capsys, monkeypatch, "--config", str(BASE), "--model.hidden_dims=[0]")
    assert "lightning-async: configuration error: `hidden_dims[0]` must be a positive integer, got 0." in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--trainer.strategy.init_args.max_staleness=-3",),
         "configuration error: max_staleness must be a non-negative integer, 'auto' (from the worker count) or "
         "None (unbounded), got -3."),
        (("--model.init_args.optimizer.init_args.lr=-1",),
         "configuration error: AsyncAdaptive: lr must be a finite number in [0, inf), got -1.0"),
        (("--trainer.max_epochs=x",), "configuration error: trainer.max_epochs: expected int or None, got 'x'"),
    ],
)
def test_configuration_errors_are_one_short_message(capsys, monkeypatch, args, message):
    err = _config_error(capsys, monkeypatch, "--config", str(BASE), *args)
    assert message in err
    assert "Traceback" not in err and "usage:" not in err
    assert len(err.strip().splitlines()) <= 4, err


def test_a_nested_argument_without_its_class_names_the_fix(capsys, monkeypatch):
    err = _config_error(capsys, monkeypatch, "--trainer.strategy.max_staleness=3")
    assert "pass --trainer.strategy=<class> before it" in err


def test_debug_switch_shows_the_full_error(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ConfigurationError, match="lr must be a finite number"):
        main(["fit", "--config", str(BASE), "--model.init_args.optimizer.init_args.lr=-1"])


def test_missing_torchvision_is_reported_before_any_worker_starts(capsys, monkeypatch):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision is installed here")
    err = _config_error(capsys, monkeypatch, "--data=MNISTDataModule", "--trainer.devices=2")
    assert "MNISTDataModule(synthetic=False) reads the real dataset through torchvision" in err


def test_help_names_the_package_and_the_recipes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"lightning_async {lightning_async.__version__}" in out
    assert "list them with `lightning-async recipes`" in out and "Recipes (YAML):" in out


def test_recipes_subcommand_lists_every_recipe(capsys):
    main(["recipes"])
    out = capsys.readouterr().out
    assert str(recipes_dir()) in out
    for recipe in ("digits_mlp", "mnist_cnn", "cifar10_resnet18", "text_gpt"):
        assert f"{recipe}/base.yaml" in out


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
