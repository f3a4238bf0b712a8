"""The resolved form of a param group's hyper-parameters, and the per-block choices that follow from it.

A param group (a ``dict`` of torch-named hyper-parameters, see ``docs/optimizers.md``) is turned into a frozen
:class:`RuleSpec` once per step. The spec fills the ``None`` defaults that depend on the geometry (``eps``,
``varsigma``, the momentum coefficient) and answers the per-block questions every implementation must answer the
same way: which geometry a block actually uses (:meth:`RuleSpec.geometry_for`), which state keys it owns
(:meth:`RuleSpec.state_keys`) and what their initial values are (:func:`init_block_state`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from lightning_async.optim.validation import validate_hparams

# Geometry-dependent defaults used when a group holds ``eps=None`` / ``varsigma=None`` (AsyncAdaptive's
# defaults). NOT FROM THE PAPER: the paper's constants could not be read (notes/paper.md section 3.7). AdaGrad
# and AdaNorm follow the authors' earlier convention w = sqrt(varsigma + sum g^2) with no eps and
# varsigma in (0, 1]; RMSprop/Adam use torch's eps; Muon uses torch's Newton-Schulz eps.
DEFAULT_EPS: dict[str, float] = {"sgd": 0.0, "adagrad": 0.0, "adanorm": 0.0, "rmsprop": 1e-8, "adam": 1e-8,
                                 "muon": 1e-7}
DEFAULT_VARSIGMA: dict[str, float] = {"sgd": 0.0, "adagrad": 1e-2, "adanorm": 1e-2, "rmsprop": 0.0, "adam": 0.0,
                                      "muon": 0.0}


@dataclass(frozen=True)
class RuleSpec:
    """Validated hyper-parameters of one param group, with geometry-dependent defaults left as ``None``."""

    lr: float
    geometry: str
    muon_fallback: str
    momentum: float
    momentum_type: str
    momentum_form: str
    dampening: float
    nesterov: bool
    beta2: float
    alpha: float
    centered: bool
    amsgrad: bool
    eps: float | None
    varsigma: float | None
    initial_accumulator_value: float
    lr_decay: float
    weight_decay: float
    decoupled_weight_decay: bool
    normalization: str
    kappa_lo: float
    kappa_hi: float
    norm_estimate: str
    norm_beta: float
    step_rule: str
    gamma: float
    horizon: int | None
    delay_bound: int | None
    exponent: float
    momentum_schedule: str
    muon_scaling: str
    staleness_policy: str
    staleness_power: float
    ns_coefficients: tuple[float, float, float]
    ns_steps: int
    ns_dtype: str
    adjust_lr_fn: str | None
    maximize: bool

    @classmethod
    def from_group(cls, group: Mapping[str, Any], owner: str = "apply_rule") -> RuleSpec:
        """Validate ``group`` and resolve it. ``momentum=None`` means ``betas[0]`` (Adam's first moment)."""
        validate_hparams(group, owner)
        momentum = group["momentum"]
        return cls(
            lr=float(group["lr"]),
            geometry=group["geometry"],
            muon_fallback=group["muon_fallback"],
            momentum=float(group["betas"][0] if momentum is None else momentum),
            momentum_type=group["momentum_type"],
            momentum_form=group["momentum_form"],
            dampening=float(group["dampening"]),
            nesterov=group["nesterov"],
            beta2=float(group["betas"][1]),
            alpha=float(group["alpha"]),
            centered=group["centered"],
            amsgrad=group["amsgrad"],
            eps=group["eps"],
            varsigma=group["varsigma"],
            initial_accumulator_value=float(group["initial_accumulator_value"]),
            lr_decay=float(group["lr_decay"]),
            weight_decay=float(group["weight_decay"]),
            decoupled_weight_decay=group["decoupled_weight_decay"],
            normalization=group["normalization"],
            kappa_lo=float(group["kappa_lo"]),
            kappa_hi=float(group["kappa_hi"]),
            norm_estimate=group["norm_estimate"],
            norm_beta=float(group["norm_beta"]),
            step_rule=group["step_rule"],
            gamma=float(group["gamma"]),
            horizon=group["horizon"],
            delay_bound=group["delay_bound"],
            exponent=float(group["exponent"]),
            momentum_schedule=group["momentum_schedule"],
            muon_scaling=group["muon_scaling"],
            staleness_policy=group["staleness_policy"],
            staleness_power=float(group["staleness_power"]),
            ns_coefficients=tuple(float(c) for c in group["ns_coefficients"]),  # type: ignore[arg-type]
            ns_steps=int(group["ns_steps"]),
            ns_dtype=group["ns_dtype"],
            adjust_lr_fn=group["adjust_lr_fn"],
            maximize=group["maximize"],
        )

    # ----------------------------------------------------------------------------------------------- per block
    def geometry_for(self, param: Tensor) -> str:
        """The geometry a block uses: Muon needs a matrix, other shapes use ``muon_fallback``."""
        if self.geometry == "muon" and param.ndim != 2:
            return self.muon_fallback
        return self.geometry

    def eps_for(self, geometry: str) -> float:
        return DEFAULT_EPS[geometry] if self.eps is None else float(self.eps)

    def varsigma_for(self, geometry: str) -> float:
        return DEFAULT_VARSIGMA[geometry] if self.varsigma is None else float(self.varsigma)

    def at_version(self, k: float) -> RuleSpec:
        """The spec a block at version ``k`` updates with: the same, but for a momentum schedule's ``beta_k``.

        ``"increasing"``: ``beta_k = beta * (k + 1) / (k + 2)`` (half of ``beta`` at the first update, tending to
        ``beta``). NOT FROM THE PAPER: the paper's momentum schedule could not be read (notes/paper.md section 6.2,
        item 7); this is one admissible time-varying choice, for studying the reading, not a claim about it.
        """
        if self.momentum_schedule == "constant":
            return self
        return replace(self, momentum=self.momentum * (k + 1.0) / (k + 2.0))

    @property
    def has_momentum_buffer(self) -> bool:
        # torch.optim.SGD/RMSprop keep no buffer when momentum == 0 (heavy-ball form); Adam and Muon always keep
        # their EMA buffer, even when its coefficient is 0.
        if self.momentum_type == "none":
            return False
        return self.momentum_form == "ema" or self.momentum != 0.0

    def is_adam_first_moment(self, geometry: str) -> bool:
        """Raw-gradient EMA momentum under the Adam geometry is Adam's first moment: key ``exp_avg``, bias
        corrected by ``1 - beta1**t`` like torch."""
        return geometry == "adam" and self.momentum_type == "raw" and self.momentum_form == "ema"

    def momentum_key(self, geometry: str) -> str:
        return "exp_avg" if self.is_adam_first_moment(geometry) else "momentum_buffer"

    def state_keys(self, param: Tensor) -> tuple[str, ...]:
        """Every state key a block owns after its first update, in a fixed order."""
        geometry = self.geometry_for(param)
        keys = ["step"]
        if self.has_momentum_buffer:
            keys.append(self.momentum_key(geometry))
        keys.extend(_GEOMETRY_KEYS[geometry](self))
        if self.normalization == "inexact":
            keys.extend(("norm_estimate", "norm_ratio"))
        return tuple(keys)


def _rmsprop_keys(spec: RuleSpec) -> tuple[str, ...]:
    return ("square_avg", "grad_avg") if spec.centered else ("square_avg",)


def _adam_keys(spec: RuleSpec) -> tuple[str, ...]:
    return ("exp_avg_sq", "max_exp_avg_sq") if spec.amsgrad else ("exp_avg_sq",)


_GEOMETRY_KEYS = {
    "sgd": lambda spec: (),
    "muon": lambda spec: ("sum_norm_sq",) if spec.muon_scaling == "adanorm" else (),
    "adagrad": lambda spec: ("sum",),
    "adanorm": lambda spec: ("sum_norm_sq",),
    "rmsprop": _rmsprop_keys,
    "adam": _adam_keys,
}


def init_block_state(param: Tensor, spec: RuleSpec) -> dict[str, Tensor]:
    """The state a block's first update creates, with the same keys, dtypes and values as torch.

    ``step`` is a CPU scalar of torch's scalar dtype (float32, or float64 when that is the default dtype), exactly
    as ``torch.optim.Adam`` hosts it when neither ``capturable`` nor ``fused`` is set. Tensor state has the
    parameter's dtype, device and memory format. Scalars of the new parts (``sum_norm_sq``, ``norm_estimate``,
    ``norm_ratio``) have the parameter's dtype and device.
    """
    state: dict[str, Tensor] = {}
    for key in spec.state_keys(param):
        if key == "step":
            state[key] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        elif key == "sum":
            state[key] = torch.full_like(param, spec.initial_accumulator_value, memory_format=torch.preserve_format)
        elif key == "sum_norm_sq":
            state[key] = torch.full((), spec.initial_accumulator_value, dtype=param.dtype, device=param.device)
        elif key in ("norm_estimate", "norm_ratio"):
            state[key] = torch.zeros((), dtype=param.dtype, device=param.device)
        else:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


def ensure_block_state(param: Tensor, state: dict[str, Tensor], spec: RuleSpec) -> None:
    """Create missing state in place (lazily, at a block's first update, like torch).

    A checkpoint of ``torch.optim.SGD`` or ``torch.optim.Muon`` has no ``step``: torch creates their momentum
    buffer at the first update, so a block holding a buffer has had at least one update. Its version is then
    taken as 1 (torch does not record the true count); this only matters for parts torch does not have
    (diminishing steps, ``lr_decay``), and it keeps the first-update buffer initialisation from running again.
    """
    infer_missing_step(state)
    if all(k in state for k in spec.state_keys(param)):
        return
    for key, value in init_block_state(param, spec).items():
        state.setdefault(key, value)


def infer_missing_step(state: dict[str, Tensor]) -> None:
    """Give a non-empty state loaded from a torch checkpoint without ``step`` (SGD, Muon) a version.

    torch creates those optimizers' only state, the momentum buffer, at the first update, so a block that has
    one has had at least one update: its version is taken as 1 (torch does not record the true count).
    """
    if state and "step" not in state:
        had_updates = any(k in state for k in ("momentum_buffer", "exp_avg"))
        state["step"] = torch.tensor(1.0 if had_updates else 0.0, dtype=_get_scalar_dtype())
