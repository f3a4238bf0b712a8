"""The ``lightning-async`` command: LightningCLI with the recipe models and data modules.

Usage::

    lightning-async fit --config recipes/digits_mlp/base.yaml --config recipes/digits_mlp/adagrad.yaml
    lightning-async fit --config recipes/digits_mlp/base.yaml --trainer.max_epochs=5 --print_config
    python -m lightning_async.cli fit --model=CharGPT --data=TextDataModule --data.path=corpus.txt

``--model`` and ``--data`` accept any LightningModule / LightningDataModule, by short name for the classes in
:mod:`lightning_async.models` and :mod:`lightning_async.data`, or by ``class_path`` for your own. Without them,
``lightning-async fit`` trains :class:`~lightning_async.models.MLPClassifier` on
:class:`~lightning_async.data.DigitsDataModule` (the embedded default: no download).

Optimizers are configured by dependency injection (``model.optimizer`` in YAML), never with LightningCLI's
top-level ``optimizer:`` key, which spawn-based launchers silently lose (Lightning-AI/pytorch-lightning#16489).
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_async  # noqa: F401 (registers the strategy names such as "async_adaptive" before any parsing)
import lightning_async.data  # noqa: F401 (makes the data modules known to --data by short name)
import lightning_async.models  # noqa: F401 (makes the models known to --model by short name)

DEFAULT_MODEL = "lightning_async.models.MLPClassifier"
DEFAULT_DATA = "lightning_async.data.DigitsDataModule"


class AsyncLightningCLI(LightningCLI):
    """LightningCLI whose ``--model`` and ``--data`` default to the digits MLP (no download needed)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the ``lightning-async`` LightningCLI.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
        run: Run the subcommand (``fit``, ``validate``, ...). With ``False``, ``args`` has no subcommand and the
            CLI only instantiates the trainer, model and data module.

    Returns:
        The CLI, with ``.trainer``, ``.model``, ``.datamodule`` and ``.config``.
    """
    return AsyncLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-async`` console script (and of ``python -m lightning_async.cli``).

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    build_cli(args)


if __name__ == "__main__":
    main()
