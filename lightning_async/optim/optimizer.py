"""``AsyncOptimizer``: the ``torch.optim.Optimizer`` that gathers tensors and calls the rule.

The class does three things and nothing else: it holds torch-style param groups (each one a complete,
validated set of rule hyper-parameters), it gathers the blocks that have a gradient and hands them to
:func:`lightning_async.optim.functional.apply_rule` with that group's staleness, and it owns the state
(``init_state``, torch-compatible ``state_dict``/``load_state_dict``). The math lives in ``functional``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from lightning_async.optim.functional import apply_rule
from lightning_async.optim.spec import RuleSpec, ensure_block_state, infer_missing_step
from lightning_async.optim.validation import REQUIRED_KEYS, check_combinations, check_value, validate_staleness

# Values of every rule hyper-parameter that a preset does not expose: plain synchronous behaviour.
RULE_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "geometry": "sgd",
    "muon_fallback": "adam",
    "momentum": 0.0,
    "momentum_type": "none",
    "momentum_form": "heavy_ball",
    "dampening": 0.0,
    "nesterov": False,
    "betas": (0.9, 0.999),
    "alpha": 0.99,
    "centered": False,
    "amsgrad": False,
    "eps": None,
    "varsigma": None,
    "initial_accumulator_value": 0.0,
    "lr_decay": 0.0,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "normalization": "none",
    "kappa_lo": 0.5,
    "kappa_hi": 2.0,
    "norm_estimate": "stale",
    "norm_beta": 0.9,
    "step_rule": "constant",
    "gamma": 0.5,
    "horizon": None,
    "delay_bound": None,
    "exponent": 0.5,
    "momentum_schedule": "constant",
    "muon_scaling": "none",
    "staleness_policy": "ignore",
    "staleness_power": 0.5,
    "ns_coefficients": (3.4445, -4.7750, 2.0315),
    "ns_steps": 5,
    "ns_dtype": "bfloat16",
    "adjust_lr_fn": None,
    "maximize": False,
    "foreach": None,
}
assert set(REQUIRED_KEYS) <= set(RULE_DEFAULTS)


class AsyncOptimizer(torch.optim.Optimizer):
    """Base class of every optimizer in :mod:`lightning_async.optim`.

    Subclasses only choose ``defaults`` (a complete set of rule hyper-parameters, see
    ``docs/optimizers.md``); any of them can be overridden per param group, e.g. one group on AdaGrad and
    another on Muon. ``step`` accepts the update's ``staleness`` (one integer, or one per param group).

    Args:
        params: iterable of parameters or of param-group dicts, as for any torch optimizer.
        defaults: rule hyper-parameters; keys missing here take :data:`RULE_DEFAULTS`.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        full = {**RULE_DEFAULTS, **defaults}
        self._validate(full)
        super().__init__(params, full)

    # ------------------------------------------------------------------------------------------ validation
    @property
    def _owner(self) -> str:
        return type(self).__name__

    def _validate(self, group: dict[str, Any]) -> None:
        for key in REQUIRED_KEYS:
            check_value(self._owner, key, group[key])
        check_combinations(self._owner, group)
        if group.get("foreach") not in (None, True, False):
            raise TypeError(f"{self._owner}: foreach must be a bool or None, got {group['foreach']!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its overrides are validated with the same rules as the constructor's."""
        super().add_param_group(param_group)
        self._validate(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # A checkpoint of a torch optimizer lacks the keys of the new parts: fill them from our defaults.
        for group in self.param_groups:
            for key in (*REQUIRED_KEYS, "foreach"):
                group.setdefault(key, self.defaults[key])
        for param_state in self.state.values():
            infer_missing_step(param_state)

    # ------------------------------------------------------------------------------------------------ state
    @torch.no_grad()
    def init_state(self) -> None:
        """Create, for every parameter, the state its first update would create (keys, dtypes, values).

        Parameters are not changed and existing state is kept. The first update after ``init_state`` gives the
        same result as a lazy first update: ``step`` is 0, so parts that initialise from the first direction
        (heavy-ball momentum, like ``torch.optim.SGD``'s ``clone(grad)``) still do so.
        """
        for group in self.param_groups:
            spec = RuleSpec.from_group(group, self._owner)
            for p in group["params"]:
                ensure_block_state(p, self.state[p], spec)

    # ------------------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, *, staleness: int | Sequence[int] = 0
    ) -> Any:
        """Perform one update of every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (run with gradients enabled, like torch).
            staleness: the update's staleness, one non-negative integer for every group or one per group.

        Returns:
            The closure's loss, or ``None``.
        """
        stalenesses = validate_staleness(staleness, len(self.param_groups))
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, group_staleness in zip(self.param_groups, stalenesses):
            params = [p for p in group["params"] if p.grad is not None]
            apply_rule(
                params,
                [p.grad for p in params],
                [self.state[p] for p in params],
                group,
                staleness=group_staleness,
                owner=self._owner,
            )
        return loss
