"""The ``lightning-async`` command: LightningCLI with the recipe models and data modules.

Usage::

    lightning-async fit --config recipes/digits_mlp/base.yaml --config recipes/digits_mlp/adagrad.yaml
    lightning-async fit --config recipes/digits_mlp/base.yaml --trainer.max_epochs=5 --print_config
    lightning-async recipes              # where the installed recipes are, and their names
    python -m lightning_async.cli fit --model=CharGPT --data=TextDataModule

``--model`` and ``--data`` accept any LightningModule / LightningDataModule, by short name for the classes in
:mod:`lightning_async.models` and :mod:`lightning_async.data`, or by ``class_path`` for your own. Without them,
``lightning-async fit`` trains :class:`~lightning_async.models.MLPClassifier` on
:class:`~lightning_async.data.DigitsDataModule` (the embedded default: no download).

Optimizers are configured by dependency injection (``model.optimizer`` in YAML), never with LightningCLI's
top-level ``optimizer:`` key, which spawn-based launchers silently lose (Lightning-AI/pytorch-lightning#16489).

A configuration error prints one short message (the cause, as the class that rejected the value words it) and
exits with status 2; ``LIGHTNING_ASYNC_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NoReturn

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_async  # noqa: F401 (registers the strategy names such as "async_adaptive" before any parsing)
import lightning_async.data  # noqa: F401 (makes the data modules known to --data by short name)
import lightning_async.models  # noqa: F401 (makes the models known to --model by short name)

DEFAULT_MODEL = "lightning_async.models.MLPClassifier"
DEFAULT_DATA = "lightning_async.data.DigitsDataModule"
DEBUG_ENV = "LIGHTNING_ASYNC_DEBUG"


def recipes_dir() -> Path:
    """The recipes' folder: inside the installed package (wheel), or at the root of a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if (candidate / "digits_mlp" / "base.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"lightning_async: no recipes folder next to {package} (a broken install?).")


def _description() -> str:
    try:
        where = str(recipes_dir())
    except FileNotFoundError:
        where = "not found in this install"
    return (
        f"lightning_async {lightning_async.__version__}: asynchronous, bounded-staleness training for Lightning "
        f'(Trainer(strategy="async_adaptive")). Without --config, `fit` trains an MLP on the bundled digits (no '
        f"download). Recipes (YAML): {where}; list them with `lightning-async recipes`. Set {DEBUG_ENV}=1 for full "
        "tracebacks of configuration errors."
    )


class ShortErrorParser(LightningArgumentParser):
    """LightningCLI's parser, whose parse errors are one short message instead of the usage text of every option."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if _debug():
            super().error(message, ex)
        print(f"lightning-async: configuration error: {_condense(message)}\n(`lightning-async fit --help` lists the "
              f"options; set {DEBUG_ENV}=1 for the full message)", file=sys.stderr)
        raise SystemExit(2)


def _condense(message: str) -> str:
    """``Parser key "k": ... - Expected a <class 'int'> ... Given value: x`` as ``k: expected int or None, got 'x'``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    key = re.match(r'Parser key "([^"]+)"', lines[0]) if lines else None
    own = [line[2:] for line in lines if line.startswith("- ") and not line[2:].startswith(_WRAPPERS)]
    expected = re.findall(r"Expected a <class '(?:[\w.]*\.)?(\w+)'>", message)
    given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None)
    nested = re.search(r"NestedArg\(key='([^']+)'", message)
    if key and nested:
        k = key.group(1)
        return (f"--{k}.{nested.group(1)} needs a class for {k} first: pass --{k}=<class> before it (for "
                "the strategy: --trainer.strategy=lightning_async.AsyncAdaptiveStrategy), or use a recipe's YAML")
    if key and (own or expected):
        if own:
            return f"{key.group(1)}: {'; '.join(own)}"
        names = [("None" if name == "NoneType" else name) for name in dict.fromkeys(expected)]
        return f"{key.group(1)}: expected {' or '.join(names)}, got {given!r}"
    return " ".join(message.split())


class ConfigurationError(Exception):
    """A value in the command line or a YAML file was rejected while the trainer, model or data were built."""


class AsyncLightningCLI(LightningCLI):
    """LightningCLI whose ``--model`` and ``--data`` default to the digits MLP (no download needed).

    Configuration errors raised while the classes are built are re-raised as :class:`ConfigurationError`, and the
    model's injected optimizer is built once on a stand-in parameter before any worker starts, so that a bad
    hyper-parameter is reported in seconds, not after the workers launched.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            _check_injected_optimizer(self.model)
        except (ValueError, TypeError, ImportError, FileNotFoundError) as err:
            raise ConfigurationError(_root_message(err)) from err


def _check_injected_optimizer(model: LightningModule) -> None:
    factory = getattr(model, "optimizer_factory", None)
    if callable(factory) and not isinstance(factory, torch.optim.Optimizer):
        factory([torch.nn.Parameter(torch.zeros(2, 2))])


def _root_message(err: BaseException) -> str:
    """The message a user needs from a (possibly jsonargparse-wrapped) error: the rejection the class itself
    raised, without the union-type bookkeeping around it."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for exc in chain:  # the error raised by the class itself, when jsonargparse chained it
        if not str(exc).strip().startswith(_WRAPPERS):
            return _one_line(exc)
    for exc in chain:  # else the class's words as jsonargparse quotes them in a union's list of errors
        reasons = [
            line.strip()[2:] for line in str(exc).splitlines()
            if line.strip().startswith("- ") and not line.strip()[2:].startswith(_WRAPPERS)
        ]
        if reasons:
            return "; ".join(reasons)
    return _one_line(chain[-1])


#: how jsonargparse words the errors it wraps around a class's own
_WRAPPERS = ("Expected a ", "Problem with given class_path", "Does not validate against any of the Union")


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the ``lightning-async`` LightningCLI.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
        run: Run the subcommand (``fit``, ``validate``, ...). With ``False``, ``args`` has no subcommand and the
            CLI only instantiates the trainer, model and data module.

    Returns:
        The CLI, with ``.trainer``, ``.model``, ``.datamodule`` and ``.config``.

    Raises:
        ConfigurationError: a value was rejected while the trainer, model or data module were built.
    """
    return AsyncLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": _description()},
        parser_class=ShortErrorParser,
        args=args,
        run=run,
    )


def list_recipes() -> str:
    """The text of ``lightning-async recipes``: the folder and, per recipe, its variants."""
    root = recipes_dir()
    lines = [
        f"recipes in {root}",
        "use: lightning-async fit --config <recipe>/base.yaml [--config <recipe>/<variant>.yaml]",
    ]
    for recipe in sorted(p for p in root.iterdir() if p.is_dir() and (p / "base.yaml").is_file()):
        variants = sorted(f.stem for f in recipe.glob("*.yaml") if f.stem != "base")
        lines.append(f"  {recipe.name}/base.yaml  variants: {', '.join(variants)}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-async`` console script (and of ``python -m lightning_async.cli``).

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["recipes"]:
        print(list_recipes())
        return
    try:
        build_cli(args)
    except ConfigurationError as err:
        if _debug():
            raise
        print(f"lightning-async: configuration error: {err}\n(set {DEBUG_ENV}=1 for the full traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
