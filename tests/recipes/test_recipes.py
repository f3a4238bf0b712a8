"""Every file under ``recipes/`` runs through the ``lightning-async`` CLI (2 train + 2 val batches, one process)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy

from lightning_async import AsyncAdaptiveStrategy
from lightning_async.cli import build_cli
from tests.recipes.helpers import (
    RECIPES,
    TINY,
    config_args,
    recipe_cases,
    single_process,
)

CASES = recipe_cases()


def _id(case: tuple[Path, Path]) -> str:
    base, delta = case
    return f"{base.parent.name}/{delta.stem}"


def test_every_recipe_file_is_a_case_and_every_model_has_every_variant():
    covered = {base for base, _ in CASES} | {delta for _, delta in CASES}
    assert covered == set(RECIPES.rglob("*.yaml")), "recipes/ holds files outside <model>/{base,<variant>}.yaml"
    assert set(TINY) == {base.parent.name for base, _ in CASES}, "add the new model directory to TINY"
    # model directories are the ones with a base.yaml (recipes/accelerate holds a script, run by tests/test_accelerate)
    variants = {d.name: {p.name for p in d.glob("*.yaml")} for d in RECIPES.iterdir() if (d / "base.yaml").is_file()}
    first = next(iter(variants.values()))
    assert all(names == first for names in variants.values()), f"model directories differ: {variants}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_recipe_runs(case, tmp_path):
    base, delta = case
    # The async recipes run on the real AsyncAdaptiveStrategy with one worker; ddp.yaml on one DDP process.
    cli = build_cli(["fit", *config_args(base, delta), *TINY[base.parent.name], *single_process(tmp_path)])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 2  # the limits held (and the recipe did not stop early)
    expected = DDPStrategy if delta.name == "ddp.yaml" else AsyncAdaptiveStrategy
    assert type(cli.trainer.strategy) is expected
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert "val/acc" in cli.trainer.callback_metrics


def test_the_gpt_recipe_trains_on_a_real_corpus_by_default(tmp_path):
    base = RECIPES / "text_gpt" / "base.yaml"
    cli = build_cli(["--config", str(base), *single_process(tmp_path)], run=False)
    assert cli.datamodule.path is None and not cli.datamodule.synthetic
    assert cli.datamodule.corpus == "python_docs" and cli.datamodule.download is False
