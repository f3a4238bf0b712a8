"""The optimizer Lightning sees: the user's optimizer, with its step routed through an engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_async._engine.base import Engine


class EngineOptimizer(Optimizer):
    """Wraps the user's optimizer so that ``step`` offers the gradients to an :class:`Engine`.

    ``param_groups``, ``state`` and ``defaults`` are the wrapped optimizer's own objects, so gradient clipping,
    LR schedulers and Lightning's bookkeeping act on the user's optimizer as usual. The wrapped optimizer's rule is
    run by the engine on the authoritative parameters, with its state held by the engine.

    Args:
        optimizer: the optimizer returned by ``configure_optimizers``.
        engine: where updates are applied.
        params: the local parameters whose gradients are offered, in the engine's order.
        samples: returns the number of samples in the current batch.
    """

    def __init__(
        self, optimizer: Optimizer, engine: Engine, params: list[torch.nn.Parameter], samples: Callable[[], int]
    ) -> None:
        # no super().__init__(): this object only delegates, it owns no parameters or state of its own
        self.optimizer = optimizer
        self.engine = engine
        self.params = params
        self._samples = samples
        self.last_verdict: str | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_verdict = self.engine.submit(self.params, self._samples())
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise RuntimeError(
            "lightning_async: parameter groups cannot be added after training started, because the engine "
            "allocates the shared parameters at setup. Create all groups in configure_optimizers."
        )

    def __repr__(self) -> str:
        return f"EngineOptimizer({self.optimizer!r})"


def ordered_params(optimizer: Optimizer) -> list[torch.nn.Parameter]:
    """The optimizer's parameters in group order, each once: the order in which an engine stores its blocks."""
    seen: set[int] = set()
    params = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params
