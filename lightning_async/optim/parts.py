"""Scalar parts of the update rule shared by the fast path and the engines: step size, staleness policy, Muon.

The per-block step size of an update applied at block version ``k`` (the number of updates already applied to
the block, its ``step`` state before the update) with staleness ``s`` is

.. math::

    \\alpha_k(s) = \\underbrace{\\frac{\\text{lr}}{1 + k\\,\\text{lr\\_decay}}}_{\\text{torch Adagrad's decay}}
        \\cdot \\underbrace{(k + 1)^{-\\gamma}}_{\\text{step\\_rule='diminishing'}}
        \\cdot \\underbrace{(1 + s)^{-p}}_{\\text{staleness\\_policy='power'}}

with the step-rule factor replaced by :math:`T^{-\\gamma}` under ``step_rule='horizon'`` (``T = horizon``, a fixed
step tied to the run's length) and by :math:`(1 + \\tau)^{-\\gamma}` under ``step_rule='delay'``
(``\\tau = delay_bound``, a fixed step tied to the staleness bound). The first two factors form ``lr_k``, which also
scales decoupled weight decay; the staleness factor scales only the step taken from the (possibly stale) gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_async.optim.spec import RuleSpec

_NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def lr_at_version(spec: RuleSpec, version: float) -> float:
    """``lr_k``: the group's lr at block version ``k``, before the staleness factor.

    The first division reproduces ``torch.optim.Adagrad`` bit for bit (``lr / (1 + (step - 1) * lr_decay)``),
    and multiplying by the diminishing factor only when it is enabled keeps every other preset bit-exact.
    """
    lr_k = spec.lr / (1 + version * spec.lr_decay)
    if spec.step_rule == "diminishing":
        lr_k = lr_k * (version + 1.0) ** -spec.gamma
    elif spec.step_rule == "horizon":
        assert spec.horizon is not None  # validated
        lr_k = lr_k * float(spec.horizon) ** -spec.gamma
    elif spec.step_rule == "delay":
        assert spec.delay_bound is not None  # validated
        lr_k = lr_k * (1.0 + spec.delay_bound) ** -spec.gamma
    return lr_k


def staleness_factor(spec: RuleSpec, staleness: int) -> float:
    """The staleness policy: ``1`` for ``'ignore'``; ``(1 + staleness) ** -staleness_power`` for ``'power'``."""
    if spec.staleness_policy == "ignore" or staleness == 0:
        return 1.0
    return (1.0 + staleness) ** -spec.staleness_power


def muon_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's shape-dependent lr multiplier (``'original'``: sqrt(max(1, A/B)))."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))  # "match_rms_adamw" (Moonshot)


def ns_dtype_for(spec: RuleSpec, param: Tensor) -> torch.dtype:
    return param.dtype if spec.ns_dtype == "param" else _NS_DTYPES[spec.ns_dtype]


def newton_schulz(direction: Tensor, spec: RuleSpec, eps: float, dtype: torch.dtype) -> Tensor:
    """Inexact polar factor of a matrix by ``ns_steps`` quintic Newton-Schulz iterations.

    The operations are torch.optim.Muon's (``_zeropower_via_newtonschulz``), in the same order, so that with
    ``dtype=torch.bfloat16`` the result is bit-identical to torch's. With ``ns_dtype='param'`` the iteration runs
    in the parameter's precision instead. ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` after scaling ``X``
    to Frobenius norm at most 1; the result is ``U S' V^T`` with ``S'`` near 1, not exactly ``U V^T``.
    """
    a, b, c = spec.ns_coefficients
    x = direction.to(dtype)
    tall = direction.size(0) > direction.size(1)
    if tall:
        x = x.T
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(spec.ns_steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x
