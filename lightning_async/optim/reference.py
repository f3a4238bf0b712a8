r"""Slow, literal reference implementation of the update rule, one block at a time.

This is the readable specification. It follows the pipeline of ``docs/optimizers.md`` line by line with plain
tensor arithmetic, materialises every intermediate, makes no attempt at speed and shares no kernel with the fast
path (:mod:`lightning_async.optim.functional`), which the tests hold to it in lockstep. It is also what
``foreach=False`` runs.

For a block :math:`x` with gradient :math:`g`, version :math:`k` (updates already applied) and staleness
:math:`s`:

.. math::

    \begin{aligned}
    & g \leftarrow -g \ \text{if maximize};\qquad
      \mathrm{lr}_k = \frac{\mathrm{lr}}{1 + k\,\mathrm{lr\_decay}}\,(k+1)^{-\gamma\,[\text{diminishing}]};\qquad
      \alpha = \mathrm{lr}_k\,(1+s)^{-p\,[\text{power}]} \\
    & \text{weight decay: } x \leftarrow (1 - \mathrm{lr}_k\lambda)\,x \ \text{(decoupled)}
      \quad\text{or}\quad g \leftarrow g + \lambda x \\
    & d = \mathrm{M}(g) \ \text{if momentum\_type = raw, else } d = g \\
    & u = \mathrm{P}^{-1}(d)\ \text{(geometry; accumulators fed with } g\text{)} \\
    & u \leftarrow \mathrm{M}(u) \ \text{if momentum\_type = scaled} \\
    & u \leftarrow u / \nu \ \text{(normalization, } \nu = \lVert u\rVert \text{ or an estimate within }
      [\kappa_{lo}, \kappa_{hi}]\,\lVert u\rVert) \\
    & x \leftarrow x - \alpha\,u;\qquad k \leftarrow k + 1
    \end{aligned}

with the momentum operator :math:`\mathrm{M}` (buffer :math:`b`, coefficient :math:`\beta`)

* heavy-ball: :math:`b \leftarrow \beta b + (1 - \text{dampening})\,v` (:math:`b \leftarrow v` at :math:`k=0`);
  output :math:`v + \beta b` with Nesterov, else :math:`b`;
* ema: :math:`b \leftarrow \beta b + (1-\beta)\,v`; output :math:`(1-\beta) v + \beta b` with Nesterov, else
  :math:`b`;

:math:`\beta` is :math:`\beta (k+1)/(k+2)` under ``momentum_schedule='increasing'``. The adaptive geometries take
their accumulator to the power ``exponent`` (:math:`\mu`, :math:`1/2` by default): e.g. AdaGrad's
:math:`u = d / ((\varsigma + \sum g^2)^{\mu} + \epsilon)`; ``muon_scaling='adanorm'`` divides Muon's direction by
:math:`(\varsigma + \sum_j \lVert g_j\rVert^2)^{\mu} + \epsilon` (AdaGrad-Norm's accumulator over the block).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_async.optim.parts import lr_at_version, muon_lr_ratio, ns_dtype_for, staleness_factor
from lightning_async.optim.spec import RuleSpec, ensure_block_state


def _momentum(buf: Tensor, v: Tensor, k: int, spec: RuleSpec) -> Tensor:
    beta = spec.momentum
    if spec.momentum_form == "heavy_ball":
        new = v.clone() if k == 0 else beta * buf + (1.0 - spec.dampening) * v
    else:
        new = beta * buf + (1.0 - beta) * v
    buf.copy_(new)
    if not spec.nesterov:
        return buf.clone()
    if spec.momentum_form == "heavy_ball":
        return v + beta * buf
    return (1.0 - beta) * v + beta * buf


def _polar(d: Tensor, spec: RuleSpec, eps: float, dtype: torch.dtype) -> Tensor:
    """Newton-Schulz, written as the math: X <- a X + b (X X^T) X + c (X X^T)^2 X on the wide orientation."""
    a, b, c = spec.ns_coefficients
    x = d.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / torch.clamp(torch.linalg.matrix_norm(x), min=eps)
    for _ in range(spec.ns_steps):
        gram = x @ x.T
        x = a * x + b * (gram @ x) + c * (gram @ (gram @ x))
    return x.T if tall else x


def _root(x: Tensor, spec: RuleSpec) -> Tensor:
    """``x ** exponent`` (the square root at the default ``exponent=0.5``)."""
    return torch.sqrt(x) if spec.exponent == 0.5 else x**spec.exponent


def _scale(param: Tensor, d: Tensor, g: Tensor, state: dict[str, Tensor], spec: RuleSpec, geometry: str,
           k: int) -> Tensor:
    """The geometry: ``u = P^{-1} d`` with accumulators updated from the raw gradient ``g`` first."""
    eps, varsigma = spec.eps_for(geometry), spec.varsigma_for(geometry)
    t = k + 1  # the update count including this one (torch's `step` after its increment)
    if geometry == "sgd":
        return d
    if geometry == "adagrad":
        state["sum"].copy_(state["sum"] + g * g)
        return d / (_root(varsigma + state["sum"], spec) + eps)
    if geometry == "adanorm":
        state["sum_norm_sq"].copy_(state["sum_norm_sq"] + torch.sum(g * g))
        return d / (_root(varsigma + state["sum_norm_sq"], spec) + eps)
    if geometry == "rmsprop":
        state["square_avg"].copy_(spec.alpha * state["square_avg"] + (1.0 - spec.alpha) * g * g)
        second = state["square_avg"]
        if spec.centered:
            state["grad_avg"].copy_(spec.alpha * state["grad_avg"] + (1.0 - spec.alpha) * g)
            second = second - state["grad_avg"] * state["grad_avg"]
        return d / (_root(varsigma + second, spec) + eps)
    if geometry == "adam":
        state["exp_avg_sq"].copy_(spec.beta2 * state["exp_avg_sq"] + (1.0 - spec.beta2) * g * g)
        second = state["exp_avg_sq"]
        if spec.amsgrad:
            state["max_exp_avg_sq"].copy_(torch.maximum(state["max_exp_avg_sq"], second))
            second = state["max_exp_avg_sq"]
        if spec.is_adam_first_moment(geometry):
            d = d / (1.0 - spec.momentum**t)
        return d / (_root(second / (1.0 - spec.beta2**t) + varsigma, spec) + eps)
    if geometry == "muon":
        polar = _polar(d, spec, eps, ns_dtype_for(spec, param)).to(param.dtype)
        u = muon_lr_ratio(spec.adjust_lr_fn, param.shape) * polar
        if spec.muon_scaling == "adanorm":
            # the orthogonalised direction with AdaGrad-Norm's step: divided by (varsigma + sum_k ||g_k||^2)^mu
            state["sum_norm_sq"].copy_(state["sum_norm_sq"] + torch.sum(g * g))
            u = u / (_root(spec.varsigma_for("adanorm") + state["sum_norm_sq"], spec) + spec.eps_for("adanorm"))
        return u
    raise AssertionError(f"unknown geometry {geometry!r}")  # unreachable: validated in RuleSpec


def _normalize(u: Tensor, state: dict[str, Tensor], spec: RuleSpec, k: int) -> Tensor:
    if spec.normalization == "none":
        return u
    norm = torch.linalg.vector_norm(u.double()).item()
    if spec.normalization == "exact" or k == 0:
        nu = norm
    else:
        # The estimate of the norm available before this update, forced into the tolerance band.
        nu = min(max(state["norm_estimate"].item(), spec.kappa_lo * norm), spec.kappa_hi * norm)
    if spec.normalization == "inexact":
        state["norm_ratio"].fill_(nu / norm if norm > 0 else 1.0)
        if spec.norm_estimate == "stale" or k == 0:
            state["norm_estimate"].fill_(norm)
        else:
            state["norm_estimate"].fill_(spec.norm_beta * state["norm_estimate"].item() + (1 - spec.norm_beta) * norm)
    return u / nu if nu > 0 else u


@torch.no_grad()
def reference_update(param: Tensor, grad: Tensor, state: dict[str, Tensor], hparams: Mapping[str, Any], *,
                     staleness: int = 0, spec: RuleSpec | None = None) -> None:
    """Apply one update to one block, in place, by the literal formulas (see the module docstring).

    Args:
        param: the block's parameters, updated in place.
        grad: the block's gradient (not modified).
        state: the block's state dict, created on the first update and updated in place.
        hparams: the param group (torch-named hyper-parameters), validated here unless ``spec`` is given.
        staleness: the update's staleness (block version at apply time minus the version the gradient was
            computed at).
        spec: an already validated :class:`RuleSpec` for ``hparams``.
    """
    spec = RuleSpec.from_group(hparams) if spec is None else spec
    geometry = spec.geometry_for(param)
    ensure_block_state(param, state, spec)
    k = int(state["step"].item())
    g = -grad if spec.maximize else grad.clone()
    lr_k = lr_at_version(spec, float(k))
    alpha = lr_k * staleness_factor(spec, staleness)
    if spec.weight_decay != 0:
        if spec.decoupled_weight_decay:
            param.mul_(1.0 - lr_k * spec.weight_decay)
        else:
            g = g + spec.weight_decay * param
    buf = state.get(spec.momentum_key(geometry)) if spec.has_momentum_buffer else None
    spec_k = spec.at_version(k)  # beta_k of a momentum schedule
    d = _momentum(buf, g, k, spec_k) if buf is not None and spec.momentum_type == "raw" else g
    u = _scale(param, d, g, state, spec, geometry, k)
    if buf is not None and spec.momentum_type == "scaled":
        u = _momentum(buf, u, k, spec_k)
    u = _normalize(u, state, spec, k)
    param.sub_(alpha * u)
    state["step"].add_(1)
