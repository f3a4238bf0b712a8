"""Validation of update-rule hyper-parameters.

One table, :data:`CHECKS`, states the allowed range of every hyper-parameter a param group may carry. The
optimizer classes run it on their defaults and on every param-group override
(:meth:`AsyncOptimizer.add_param_group`), and :func:`lightning_async.optim.functional.apply_rule` runs it on the
hyper-parameters an engine hands it, so an invalid value never reaches a kernel.

Every error is a ``ValueError`` (``TypeError`` for a value of the wrong type) whose message names the owner, the
parameter and the allowed range, for example ``AsyncAdam: betas[0] must be in [0, 1), got 1.0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

GEOMETRIES: tuple[str, ...] = ("sgd", "adagrad", "adanorm", "rmsprop", "adam", "muon")
FALLBACK_GEOMETRIES: tuple[str, ...] = ("sgd", "adagrad", "adanorm", "rmsprop", "adam")
MOMENTUM_TYPES: tuple[str, ...] = ("none", "raw", "scaled")
MOMENTUM_FORMS: tuple[str, ...] = ("heavy_ball", "ema")
NORMALIZATIONS: tuple[str, ...] = ("none", "exact", "inexact")
NORM_ESTIMATES: tuple[str, ...] = ("stale", "running")
STEP_RULES: tuple[str, ...] = ("constant", "diminishing", "horizon", "delay")
MOMENTUM_SCHEDULES: tuple[str, ...] = ("constant", "increasing")
MUON_SCALINGS: tuple[str, ...] = ("none", "adanorm")
STALENESS_POLICIES: tuple[str, ...] = ("ignore", "power")
NS_DTYPES: tuple[str, ...] = ("bfloat16", "float32", "float64", "param")
ADJUST_LR_FNS: tuple[str | None, ...] = (None, "original", "match_rms_adamw")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable, str]:
    def check(v: Any) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    left = "(" if lo_open else "["
    right = ")" if hi_open or hi == math.inf else "]"
    hi_text = "inf" if hi == math.inf else f"{hi:g}"
    return check, f"in {left}{lo:g}, {hi_text}{right}"


_NONNEG = _interval(0.0, math.inf)
_UNIT_OPEN = _interval(0.0, 1.0, hi_open=True)
_UNIT = _interval(0.0, 1.0)

# name -> (kind, (predicate, text)); kind is "real", "real_or_none", "bool", "int", "int_or_none", "choice".
# `momentum` is checked again in `check_combinations`, where its form (heavy-ball or EMA) is known.
CHECKS: dict[str, tuple[str, Any]] = {
    "lr": ("real", _NONNEG),
    "momentum": ("real_or_none", _NONNEG),
    "dampening": ("real", _UNIT),
    "alpha": ("real", _UNIT),
    "eps": ("real_or_none", _NONNEG),
    "varsigma": ("real_or_none", _NONNEG),
    "initial_accumulator_value": ("real", _NONNEG),
    "lr_decay": ("real", _NONNEG),
    "weight_decay": ("real", _NONNEG),
    "kappa_lo": ("real", _interval(0.0, 1.0, lo_open=True)),
    "kappa_hi": ("real", _interval(1.0, math.inf)),
    "norm_beta": ("real", _UNIT_OPEN),
    "gamma": ("real", _UNIT),
    "exponent": ("real", _interval(0.0, 1.0, lo_open=True)),
    "horizon": ("int_or_none", _interval(1, math.inf)),
    "delay_bound": ("int_or_none", _interval(0, math.inf)),
    "staleness_power": ("real", _NONNEG),
    "ns_steps": ("int", _interval(1, 99)),
    "nesterov": ("bool", None),
    "centered": ("bool", None),
    "amsgrad": ("bool", None),
    "decoupled_weight_decay": ("bool", None),
    "maximize": ("bool", None),
    "geometry": ("choice", GEOMETRIES),
    "muon_fallback": ("choice", FALLBACK_GEOMETRIES),
    "momentum_type": ("choice", MOMENTUM_TYPES),
    "momentum_form": ("choice", MOMENTUM_FORMS),
    "normalization": ("choice", NORMALIZATIONS),
    "norm_estimate": ("choice", NORM_ESTIMATES),
    "step_rule": ("choice", STEP_RULES),
    "momentum_schedule": ("choice", MOMENTUM_SCHEDULES),
    "muon_scaling": ("choice", MUON_SCALINGS),
    "staleness_policy": ("choice", STALENESS_POLICIES),
    "ns_dtype": ("choice", NS_DTYPES),
    "adjust_lr_fn": ("choice", ADJUST_LR_FNS),
}

REQUIRED_KEYS: tuple[str, ...] = (*CHECKS, "betas", "ns_coefficients")


def _fail(owner: str, name: str, rule: str, value: Any) -> ValueError:
    return ValueError(f"{owner}: {name} must be {rule}, got {value!r}")


def check_value(owner: str, name: str, value: Any) -> None:
    """Check one hyper-parameter against :data:`CHECKS` (or the tuple rules for ``betas``/``ns_coefficients``)."""
    if name == "betas":
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise _fail(owner, "betas", "a pair (beta1, beta2)", value)
        for i, b in enumerate(value):
            if not _is_real(b) or not 0.0 <= b < 1.0:
                raise _fail(owner, f"betas[{i}]", "in [0, 1)", b)
        return
    if name == "ns_coefficients":
        if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(_is_real(c) for c in value):
            raise _fail(owner, "ns_coefficients", "a triple of finite floats (a, b, c)", value)
        return
    kind, rule = CHECKS[name]
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{owner}: {name} must be a bool, got {value!r}")
    elif kind == "choice":
        if value not in rule:
            raise _fail(owner, name, f"one of {rule}", value)
    elif kind in ("int", "int_or_none"):
        if value is None and kind == "int_or_none":
            return
        predicate, text = rule
        if isinstance(value, bool) or not isinstance(value, int) or not predicate(value):
            suffix = " or None" if kind == "int_or_none" else ""
            raise _fail(owner, name, f"an integer {text}{suffix}", value)
    else:
        if value is None and kind == "real_or_none":
            return
        predicate, text = rule
        if not _is_real(value) or not predicate(value):
            suffix = " or None" if kind == "real_or_none" else ""
            raise _fail(owner, name, f"a finite number {text}{suffix}", value)


def check_combinations(owner: str, hparams: Mapping[str, Any]) -> None:
    """Rules that involve more than one hyper-parameter."""
    momentum = hparams["momentum"]
    beta = hparams["betas"][0] if momentum is None else momentum
    name = "betas[0]" if momentum is None else "momentum"
    if hparams["momentum_type"] != "none" and hparams["momentum_form"] == "ema" and not 0.0 <= beta < 1.0:
        raise _fail(owner, name, "in [0, 1) for momentum_form='ema'", beta)
    if hparams["step_rule"] == "horizon" and hparams["horizon"] is None:
        raise ValueError(f"{owner}: step_rule='horizon' needs horizon, the number of updates the run will apply "
                         "(e.g. horizon=10000), got None")
    if hparams["step_rule"] == "delay" and hparams["delay_bound"] is None:
        raise ValueError(f"{owner}: step_rule='delay' needs delay_bound, the run's max_staleness (e.g. "
                         "delay_bound=4), got None")
    adam_moment = hparams["momentum_type"] == "raw" and hparams["momentum_form"] == "ema" and (
        hparams["geometry"] == "adam" or (hparams["geometry"] == "muon" and hparams["muon_fallback"] == "adam"))
    if hparams["momentum_schedule"] != "constant" and adam_moment:
        raise ValueError(
            f"{owner}: momentum_schedule={hparams['momentum_schedule']!r} does not combine with Adam's first moment "
            "(momentum_type='raw', momentum_form='ema' on adam blocks, muon's fallback included), whose bias "
            "correction assumes a constant beta1; use momentum_type='scaled' or momentum_form='heavy_ball', or "
            "momentum_schedule='constant'"
        )
    if hparams["nesterov"]:
        if hparams["momentum_type"] == "none":
            raise ValueError(f"{owner}: nesterov=True requires momentum_type 'raw' or 'scaled', got 'none'")
        if hparams["momentum_form"] == "heavy_ball" and (beta <= 0 or hparams["dampening"] != 0):
            # torch.optim.SGD's rule: Nesterov momentum requires a momentum and zero dampening.
            raise ValueError(
                f"{owner}: nesterov=True with momentum_form='heavy_ball' requires {name} > 0 and dampening == 0, "
                f"got {name}={beta!r}, dampening={hparams['dampening']!r}"
            )


def validate_hparams(hparams: Mapping[str, Any], owner: str = "apply_rule") -> None:
    """Validate a complete set of rule hyper-parameters (a param group).

    Args:
        hparams: a mapping holding every key of :data:`REQUIRED_KEYS` (extra keys are ignored, as torch does).
        owner: the name used at the start of every message, usually the optimizer class name.

    Raises:
        KeyError: a required hyper-parameter is missing.
        ValueError: a value is outside its allowed range, or two values conflict.
        TypeError: a flag is not a bool.
    """
    missing = [k for k in REQUIRED_KEYS if k not in hparams]
    if missing:
        raise KeyError(
            f"{owner}: missing hyper-parameters {missing}; pass a param group of a lightning_async.optim optimizer "
            "or start from {**lightning_async.optim.RULE_DEFAULTS, ...}"
        )
    for name in REQUIRED_KEYS:
        check_value(owner, name, hparams[name])
    check_combinations(owner, hparams)


def validate_staleness(staleness: Any, num_groups: int) -> list[int]:
    """Return one staleness per param group, or raise a ``ValueError`` naming ``staleness``."""

    def one(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"staleness must be a non-negative integer, got {value!r}")
        return value

    if isinstance(staleness, (list, tuple)):
        if len(staleness) != num_groups:
            raise ValueError(
                f"staleness must have one entry per param group ({num_groups}), got {len(staleness)} entries"
            )
        return [one(s) for s in staleness]
    if hasattr(staleness, "__index__") and not isinstance(staleness, bool):
        return [one(int(staleness))] * num_groups
    return [one(staleness)] * num_groups
