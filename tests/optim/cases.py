"""The test table: presets against torch, part combinations, and inputs that must raise.

Every generic test is parametrized over these rows; new presets and parts are added here, not in new tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_async.optim import (
    AsyncAdagrad,
    AsyncAdam,
    AsyncAdamW,
    AsyncAdaNorm,
    AsyncAdaptive,
    AsyncMuon,
    AsyncRMSprop,
    AsyncSGD,
)


@dataclass(frozen=True)
class TorchCase:
    """One preset configuration with its torch counterpart; group 1 overrides some hyper-parameters."""

    ours: type
    theirs: type
    kwargs: dict[str, Any]
    group1: dict[str, Any] = field(default_factory=dict)
    bias: bool = True  # torch.optim.Muon only takes matrices
    torch_foreach: tuple[bool, ...] = (False, True)  # torch.optim.Muon has no foreach kernel

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.ours.__name__}({args})"


TORCH_CASES: list[TorchCase] = [
    TorchCase(AsyncSGD, torch.optim.SGD, dict(lr=0.05), dict(lr=0.02)),
    TorchCase(AsyncSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9), dict(momentum=0.5)),
    TorchCase(AsyncSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
              dict(lr=0.03)),
    TorchCase(AsyncSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
              dict(weight_decay=0.0)),
    TorchCase(AsyncSGD, torch.optim.SGD, dict(lr=0.002, momentum=0.8, maximize=True), dict(lr=0.001)),
    TorchCase(AsyncAdagrad, torch.optim.Adagrad, dict(lr=0.05), dict(lr=0.02)),
    TorchCase(AsyncAdagrad, torch.optim.Adagrad,
              dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-6, weight_decay=0.01),
              dict(lr_decay=0.0)),
    TorchCase(AsyncRMSprop, torch.optim.RMSprop, dict(lr=0.01), dict(alpha=0.9)),
    TorchCase(AsyncRMSprop, torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.01),
              dict(momentum=0.0)),
    TorchCase(AsyncRMSprop, torch.optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.7, eps=1e-6),
              dict(centered=False)),
    TorchCase(AsyncAdam, torch.optim.Adam, dict(lr=0.01), dict(lr=0.003)),
    TorchCase(AsyncAdam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.01),
              dict(amsgrad=False)),
    TorchCase(AsyncAdam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, eps=1e-6),
              dict(betas=(0.5, 0.9))),
    TorchCase(AsyncAdam, torch.optim.Adam, dict(lr=0.002, maximize=True), dict(lr=0.001)),
    TorchCase(AsyncAdamW, torch.optim.AdamW, dict(lr=0.01), dict(weight_decay=0.1)),
    TorchCase(AsyncAdamW, torch.optim.AdamW, dict(lr=0.01, amsgrad=True, weight_decay=0.05), dict(lr=0.005)),
    TorchCase(AsyncMuon, torch.optim.Muon, dict(lr=0.02), dict(lr=0.01), bias=False, torch_foreach=(False,)),
    TorchCase(AsyncMuon, torch.optim.Muon, dict(lr=0.02, nesterov=False, weight_decay=0.0, ns_steps=3),
              dict(momentum=0.8), bias=False, torch_foreach=(False,)),
    TorchCase(AsyncMuon, torch.optim.Muon, dict(lr=0.02, adjust_lr_fn="match_rms_adamw"),
              dict(weight_decay=0.01), bias=False, torch_foreach=(False,)),
]

# Presets and the general class expressing the same rule explicitly (shortcut equals composition).
EQUIVALENT_COMPOSITIONS: list[tuple[type, dict[str, Any], dict[str, Any]]] = [
    (AsyncSGD, dict(lr=0.05, momentum=0.9, nesterov=True),
     dict(lr=0.05, geometry="sgd", momentum=0.9, momentum_type="raw", nesterov=True)),
    (AsyncAdagrad, dict(lr=0.05, eps=1e-10), dict(lr=0.05, geometry="adagrad", eps=1e-10, varsigma=0.0)),
    (AsyncAdaNorm, dict(lr=0.05), dict(lr=0.05, geometry="adanorm", eps=1e-10, varsigma=0.0)),
    (AsyncRMSprop, dict(lr=0.01, momentum=0.5),
     dict(lr=0.01, geometry="rmsprop", momentum=0.5, momentum_type="scaled", eps=1e-8, varsigma=0.0)),
    (AsyncAdamW, dict(lr=0.01), dict(lr=0.01, geometry="adam", momentum_type="raw", momentum_form="ema",
                                     weight_decay=1e-2, decoupled_weight_decay=True)),
    (AsyncMuon, dict(lr=0.02, ns_dtype="param"),
     dict(lr=0.02, geometry="muon", momentum=0.95, momentum_type="raw", momentum_form="ema", nesterov=True,
          weight_decay=0.1, decoupled_weight_decay=True, eps=1e-7, ns_dtype="param")),
]

# One instance of every preset, for the properties every optimizer must have.
ALL_PRESETS: list[tuple[type, dict[str, Any]]] = [
    (AsyncSGD, dict(lr=0.05, momentum=0.9, dampening=0.1)),
    (AsyncAdagrad, dict(lr=0.05)),
    (AsyncAdaNorm, dict(lr=0.05)),
    (AsyncRMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (AsyncAdam, dict(lr=0.01, amsgrad=True)),
    (AsyncAdamW, dict(lr=0.01)),
    (AsyncMuon, dict(lr=0.02)),
    (AsyncAdaptive, dict(lr=0.05, momentum=0.9, momentum_type="raw", normalization="inexact")),
]

# Every combination of parts for the reference-vs-fast lockstep test. Options that do not change the structure
# of the computation (weight decay kind, step rule, amsgrad, centered, ...) rotate with the row index so that
# each value is exercised with every geometry.
MOMENTA = [dict(momentum_type="none")] + [
    dict(momentum_type=t, momentum_form=f, nesterov=n, momentum=0.8)
    for t, f, n in itertools.product(("raw", "scaled"), ("heavy_ball", "ema"), (False, True))
]
ROTATING = [
    dict(step_rule="diminishing", gamma=0.5, weight_decay=0.01),
    dict(weight_decay=0.01, decoupled_weight_decay=True, amsgrad=True, centered=True, dampening=0.2),
    dict(lr_decay=0.05, maximize=True, varsigma=0.05, initial_accumulator_value=0.1),
    dict(norm_estimate="running", step_rule="diminishing", gamma=1.0, adjust_lr_fn="match_rms_adamw"),
    # the readings beyond torch's rules: accumulator exponents, AdaGrad-Norm on Muon, beta_k, horizon/delay steps
    dict(exponent=0.3, muon_scaling="adanorm", momentum_schedule="increasing", step_rule="horizon", horizon=400),
    dict(exponent=0.8, muon_scaling="adanorm", step_rule="delay", delay_bound=3, gamma=1.0, varsigma=0.05),
]


def _combination(i: int, geometry: str, momentum: dict, normalization: str, policy: str) -> dict[str, Any]:
    extra = dict(ROTATING[i % len(ROTATING)])
    if extra.get("dampening") and momentum.get("nesterov") and momentum.get("momentum_form") == "heavy_ball":
        extra.pop("dampening")  # Nesterov with heavy-ball needs zero dampening (checked in test_errors)
    if extra.get("momentum_schedule") and geometry in ("adam", "muon") and momentum.get("momentum_type") == "raw" \
            and momentum.get("momentum_form") == "ema":
        extra.pop("momentum_schedule")  # Adam's bias-corrected first moment needs a constant beta1 (test_errors)
    return dict(lr=0.02, geometry=geometry, normalization=normalization, staleness_policy=policy,
                staleness_power=0.7, ns_dtype="param", kappa_lo=0.8, kappa_hi=1.1, **momentum, **extra)


COMBINATIONS: list[dict[str, Any]] = [
    _combination(i, g, m, n, p)
    for i, (g, m, n, p) in enumerate(itertools.product(
        ("sgd", "adagrad", "adanorm", "rmsprop", "adam", "muon"), MOMENTA, ("none", "exact", "inexact"),
        ("ignore", "power"),
    ))
]


def combination_id(c: dict[str, Any]) -> str:
    m = c["momentum_type"] if c["momentum_type"] == "none" else (
        f"{c['momentum_type']}-{c['momentum_form']}{'-nesterov' if c['nesterov'] else ''}")
    return f"{c['geometry']}-{m}-norm_{c['normalization']}-{c['staleness_policy']}"


# (class, kwargs, error type, regex): every invalid argument names the parameter and the allowed range.
ERROR_CASES: list[tuple[type, dict[str, Any], type, str]] = [
    (AsyncSGD, dict(lr=-1.0), ValueError, r"AsyncSGD: lr must be a finite number in \[0, inf\), got -1.0"),
    (AsyncSGD, dict(lr=float("nan")), ValueError, r"AsyncSGD: lr must be a finite number in \[0, inf\), got nan"),
    (AsyncSGD, dict(momentum=-0.1), ValueError, r"AsyncSGD: momentum must be .*\[0, inf\).*got -0.1"),
    (AsyncSGD, dict(dampening=1.5), ValueError, r"AsyncSGD: dampening must be .*\[0, 1\], got 1.5"),
    (AsyncSGD, dict(weight_decay=-1e-3), ValueError, r"AsyncSGD: weight_decay must be .*\[0, inf\), got -0.001"),
    (AsyncSGD, dict(nesterov=True), ValueError, r"AsyncSGD: nesterov=True .* requires momentum > 0 and dampening"),
    (AsyncSGD, dict(momentum=0.9, dampening=0.1, nesterov=True), ValueError, r"dampening == 0.*dampening=0.1"),
    (AsyncSGD, dict(nesterov=1), TypeError, r"AsyncSGD: nesterov must be a bool, got 1"),
    (AsyncSGD, dict(maximize="yes"), TypeError, r"AsyncSGD: maximize must be a bool, got 'yes'"),
    (AsyncSGD, dict(foreach="no"), TypeError, r"AsyncSGD: foreach must be a bool or None, got 'no'"),
    (AsyncSGD, dict(staleness_policy="inverse"), ValueError,
     r"AsyncSGD: staleness_policy must be one of \('ignore', 'power'\), got 'inverse'"),
    (AsyncSGD, dict(staleness_power=-1.0), ValueError, r"AsyncSGD: staleness_power must be .*\[0, inf\), got -1.0"),
    (AsyncSGD, dict(step_rule="cosine"), ValueError,
     r"AsyncSGD: step_rule must be one of \('constant', 'diminishing', 'horizon', 'delay'\), got 'cosine'"),
    (AsyncAdaptive, dict(step_rule="horizon"), ValueError, r"AsyncAdaptive: step_rule='horizon' needs horizon"),
    (AsyncAdaptive, dict(step_rule="horizon", horizon=0), ValueError,
     r"AsyncAdaptive: horizon must be an integer in \[1, inf\) or None, got 0"),
    (AsyncAdaptive, dict(step_rule="delay"), ValueError, r"AsyncAdaptive: step_rule='delay' needs delay_bound"),
    (AsyncAdaptive, dict(delay_bound=-1), ValueError,
     r"AsyncAdaptive: delay_bound must be an integer in \[0, inf\) or None, got -1"),
    (AsyncAdaptive, dict(exponent=0.0), ValueError, r"AsyncAdaptive: exponent must be .*\(0, 1\], got 0.0"),
    (AsyncAdaptive, dict(exponent=1.5), ValueError, r"AsyncAdaptive: exponent must be .*\(0, 1\], got 1.5"),
    (AsyncAdaptive, dict(momentum_schedule="cosine"), ValueError,
     r"AsyncAdaptive: momentum_schedule must be one of \('constant', 'increasing'\), got 'cosine'"),
    (AsyncAdaptive, dict(geometry="adam", momentum_type="raw", momentum_form="ema", momentum_schedule="increasing"),
     ValueError, r"AsyncAdaptive: momentum_schedule='increasing' does not combine with Adam's first moment"),
    (AsyncAdaptive, dict(muon_scaling="adagrad"), ValueError,
     r"AsyncAdaptive: muon_scaling must be one of \('none', 'adanorm'\), got 'adagrad'"),
    (AsyncSGD, dict(gamma=1.5), ValueError, r"AsyncSGD: gamma must be .*\[0, 1\], got 1.5"),
    (AsyncAdagrad, dict(lr_decay=-0.1), ValueError, r"AsyncAdagrad: lr_decay must be .*\[0, inf\), got -0.1"),
    (AsyncAdagrad, dict(initial_accumulator_value=-1.0), ValueError,
     r"AsyncAdagrad: initial_accumulator_value must be .*\[0, inf\), got -1.0"),
    (AsyncAdagrad, dict(eps=-1e-10), ValueError, r"AsyncAdagrad: eps must be .*\[0, inf\) or None, got -1e-10"),
    (AsyncAdagrad, dict(varsigma=-1.0), ValueError, r"AsyncAdagrad: varsigma must be .*\[0, inf\) or None, got -1.0"),
    (AsyncAdaNorm, dict(eps=float("inf")), ValueError, r"AsyncAdaNorm: eps must be a finite number"),
    (AsyncRMSprop, dict(alpha=1.2), ValueError, r"AsyncRMSprop: alpha must be .*\[0, 1\], got 1.2"),
    (AsyncRMSprop, dict(centered=None), TypeError, r"AsyncRMSprop: centered must be a bool, got None"),
    (AsyncRMSprop, dict(capturable=True), ValueError, r"AsyncRMSprop: capturable must be False"),
    (AsyncAdam, dict(betas=(1.0, 0.999)), ValueError, r"AsyncAdam: betas\[0\] must be in \[0, 1\), got 1.0"),
    (AsyncAdam, dict(betas=(0.9, -0.1)), ValueError, r"AsyncAdam: betas\[1\] must be in \[0, 1\), got -0.1"),
    (AsyncAdam, dict(betas=0.9), ValueError, r"AsyncAdam: betas must be a pair \(beta1, beta2\), got 0.9"),
    (AsyncAdam, dict(amsgrad="true"), TypeError, r"AsyncAdam: amsgrad must be a bool"),
    (AsyncAdam, dict(fused=True), ValueError, r"AsyncAdam: fused must be False \(not supported\), got True"),
    (AsyncAdamW, dict(capturable=True), ValueError, r"AsyncAdamW: capturable must be False"),
    (AsyncAdamW, dict(weight_decay=-0.01), ValueError, r"AsyncAdamW: weight_decay must be .*got -0.01"),
    (AsyncMuon, dict(momentum=1.0), ValueError, r"AsyncMuon: momentum must be in \[0, 1\) for momentum_form='ema'"),
    (AsyncMuon, dict(ns_steps=0), ValueError, r"AsyncMuon: ns_steps must be an integer in \[1, 99\], got 0"),
    (AsyncMuon, dict(ns_steps=2.5), ValueError, r"AsyncMuon: ns_steps must be an integer in \[1, 99\], got 2.5"),
    (AsyncMuon, dict(ns_coefficients=(1.0, 2.0)), ValueError,
     r"AsyncMuon: ns_coefficients must be a triple of finite floats \(a, b, c\)"),
    (AsyncMuon, dict(adjust_lr_fn="sqrt"), ValueError,
     r"AsyncMuon: adjust_lr_fn must be one of \(None, 'original', 'match_rms_adamw'\), got 'sqrt'"),
    (AsyncMuon, dict(muon_fallback="muon"), ValueError, r"AsyncMuon: muon_fallback must be one of .*got 'muon'"),
    (AsyncMuon, dict(ns_dtype="float16"), ValueError, r"AsyncMuon: ns_dtype must be one of .*got 'float16'"),
    (AsyncAdaptive, dict(geometry="shampoo"), ValueError,
     r"AsyncAdaptive: geometry must be one of \('sgd', 'adagrad', 'adanorm', 'rmsprop', 'adam', 'muon'\), "
     r"got 'shampoo'"),
    (AsyncAdaptive, dict(momentum_type="both"), ValueError,
     r"AsyncAdaptive: momentum_type must be one of \('none', 'raw', 'scaled'\), got 'both'"),
    (AsyncAdaptive, dict(momentum_form="polyak"), ValueError,
     r"AsyncAdaptive: momentum_form must be one of \('heavy_ball', 'ema'\), got 'polyak'"),
    (AsyncAdaptive, dict(momentum_type="raw", momentum_form="ema", momentum=1.0), ValueError,
     r"AsyncAdaptive: momentum must be in \[0, 1\) for momentum_form='ema', got 1.0"),
    (AsyncAdaptive, dict(nesterov=True), ValueError,
     r"AsyncAdaptive: nesterov=True requires momentum_type 'raw' or 'scaled', got 'none'"),
    (AsyncAdaptive, dict(normalization="sign"), ValueError,
     r"AsyncAdaptive: normalization must be one of \('none', 'exact', 'inexact'\), got 'sign'"),
    (AsyncAdaptive, dict(kappa_lo=0.0), ValueError, r"AsyncAdaptive: kappa_lo must be .*\(0, 1\], got 0.0"),
    (AsyncAdaptive, dict(kappa_lo=1.5), ValueError, r"AsyncAdaptive: kappa_lo must be .*\(0, 1\], got 1.5"),
    (AsyncAdaptive, dict(kappa_hi=0.9), ValueError, r"AsyncAdaptive: kappa_hi must be .*\[1, inf\), got 0.9"),
    (AsyncAdaptive, dict(norm_estimate="oracle"), ValueError,
     r"AsyncAdaptive: norm_estimate must be one of \('stale', 'running'\), got 'oracle'"),
    (AsyncAdaptive, dict(norm_beta=1.0), ValueError, r"AsyncAdaptive: norm_beta must be .*\[0, 1\), got 1.0"),
    (AsyncAdaptive, dict(alpha=-0.5), ValueError, r"AsyncAdaptive: alpha must be .*\[0, 1\], got -0.5"),
]
