"""Shared helpers for the recipe and CLI tests: which recipes exist, and the overrides that make them tiny."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

# Per model directory: overrides that shrink the data (and the two larger networks) so that one training step
# takes well under a second on 2 CPU cores. Generated data replaces the downloads and the user's text file.
TINY: dict[str, list[str]] = {
    "digits_mlp": ["--data.batch_size=8"],
    "mnist_cnn": ["--data.synthetic=true", "--data.synthetic_size=16", "--data.batch_size=4", "--model.channels=4",
                  "--model.hidden_dim=8"],
    "cifar10_resnet18": ["--data.synthetic=true", "--data.synthetic_size=16", "--data.batch_size=4",
                         "--model.width=4"],
    "text_gpt": ["--data.synthetic=true", "--data.synthetic_size=2000", "--data.block_size=16",
                 "--data.batch_size=4", "--model.block_size=16", "--model.n_layer=1", "--model.n_embd=16",
                 "--model.n_head=2"],
}


def single_process(tmp_path: Path) -> list[str]:
    """One in-process device, two training and two validation batches, nothing written outside ``tmp_path``.

    Limits rather than ``fast_dev_run``: ``fast_dev_run`` also resets settings such as ``val_check_interval``
    that the async strategy validates, so a recipe could pass here and fail for users. Multi-device runs must
    never start inside pytest: the popen launcher re-executes ``sys.argv`` (pytest).

    NOTE [limits of 1 are 100%]: jsonargparse 4.53 parses ``limit_*_batches: 1`` (type ``int | float | None``)
    as the float ``1.0``, which Lightning reads as "100% of the batches"; 2 becomes 2.0, which Lightning reads as
    two batches.
    """
    return [
        "--trainer.devices=1",
        "--trainer.max_epochs=1",
        "--trainer.max_steps=-1",
        "--trainer.limit_train_batches=2",  # see NOTE [limits of 1 are 100%]
        "--trainer.limit_val_batches=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]


def recipe_cases() -> list[tuple[Path, Path]]:
    """Every delta composed on its directory's ``base.yaml``.

    A base alone is not a separate case: it holds the same optimizer as its ``adam.yaml`` delta, and it is parsed
    and run under every delta of its directory.
    """
    return [
        (base, delta)
        for base in sorted(RECIPES.glob("*/base.yaml"))
        for delta in sorted(base.parent.glob("*.yaml"))
        if delta.name != "base.yaml"
    ]


def config_args(base: Path, delta: Path | None) -> list[str]:
    """``--config`` arguments for a base and an optional delta."""
    return ["--config", str(base)] + ([] if delta is None else ["--config", str(delta)])
