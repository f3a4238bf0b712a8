"""Optimizers by name, for the command line and the study.

* ``sgd``, ``adagrad``, ``adanorm``, ``rmsprop``, ``adam``, ``adamw``, ``muon``, ``adaptive``: the presets of
  :mod:`lightning_async.optim` (``AsyncSGD`` ... ``AsyncAdaptive``), which receive each update's staleness;
* ``torch.sgd``, ``torch.adagrad``, ``torch.rmsprop``, ``torch.adam``, ``torch.adamw``: plain ``torch.optim`` classes;
* ``package.module:Class``: any optimizer class taking ``(params, lr=..., **kwargs)``.

Extra keyword arguments are written ``key=value`` (values are Python literals, e.g. ``betas=(0.9,0.99)``,
``normalization='inexact'``; a bare word is taken as a string).
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterable
from typing import Any

import torch

ASYNC_NAMES = {
    "sgd": "AsyncSGD", "adagrad": "AsyncAdagrad", "adanorm": "AsyncAdaNorm", "rmsprop": "AsyncRMSprop",
    "adam": "AsyncAdam", "adamw": "AsyncAdamW", "muon": "AsyncMuon", "adaptive": "AsyncAdaptive",
}
TORCH_NAMES = {
    "torch.sgd": torch.optim.SGD, "torch.adagrad": torch.optim.Adagrad, "torch.rmsprop": torch.optim.RMSprop,
    "torch.adam": torch.optim.Adam, "torch.adamw": torch.optim.AdamW,
}
OPTIMIZER_NAMES: tuple[str, ...] = (*ASYNC_NAMES, *TORCH_NAMES)


def parse_kwargs(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (values as Python literals, else strings).

    Raises:
        ValueError: for an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--opt-arg {item!r}: write key=value, e.g. --opt-arg momentum=0.9.")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class behind an optimizer name (see the module docstring).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name in TORCH_NAMES:
        return TORCH_NAMES[name]
    if name in ASYNC_NAMES:
        import lightning_async.optim as optim  # noqa: PLC0415

        return getattr(optim, ASYNC_NAMES[name])
    if ":" in name:
        module, cls = name.split(":", 1)
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"optimizer {name!r}: cannot load {cls!r} from {module!r} ({err}).") from err
    raise ValueError(f"optimizer must be one of {list(OPTIMIZER_NAMES)} or 'package.module:Class', got {name!r}.")


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` on ``params`` with learning rate ``lr`` and extra keyword arguments."""
    cls = optimizer_class(name)
    try:
        return cls(params, lr=lr, **kwargs)
    except TypeError as err:
        reason = str(err).rstrip(".")
        raise ValueError(f"optimizer {name!r} ({cls.__name__}) rejected its arguments {kwargs}: {reason}.") from err
