"""The update rule as a function on blocks: what engines call where the authoritative parameters live.

Public entry point::

    lightning_async.optim.functional.apply_rule(
        params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]],
        hparams: Mapping[str, Any], *, staleness: int = 0, foreach: bool | None = None,
    ) -> None

``params[i]`` is updated in place from ``grads[i]``; ``states[i]`` is that block's state dict (an empty dict is
filled on the first update, exactly as :meth:`AsyncOptimizer.init_state` would fill it); ``hparams`` is a param
group (``optimizer.param_groups[j]`` of any class in :mod:`lightning_async.optim`, or any mapping with the same
keys); ``staleness`` is one non-negative integer for all the blocks passed. Grads are never modified.

``foreach`` (default: the group's ``foreach`` entry, and ``True`` when that is ``None``) selects the fast path
below, built from torch ``_foreach`` kernels and grouped by device, dtype and geometry; ``foreach=False`` runs
:func:`lightning_async.optim.reference.reference_update` block by block. Both implement the same math (see
``docs/optimizers.md``) and are tested against each other in lockstep. Where a preset has a torch counterpart the
fast path issues torch's own sequence of kernels, so that at staleness 0 it matches torch to rounding.

The fast path carries the direction of a bucket of blocks as ``scale_i * num_i / den_i`` (``den`` may be
absent) and only materialises it when a later part needs it (scaled momentum, normalization), so that the
common presets take as many passes over memory as their torch counterparts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_async.optim.parts import lr_at_version, muon_lr_ratio, newton_schulz, ns_dtype_for, staleness_factor
from lightning_async.optim.reference import reference_update
from lightning_async.optim.spec import RuleSpec, ensure_block_state
from lightning_async.optim.validation import validate_staleness

__all__ = ["apply_rule"]


@torch.no_grad()
def apply_rule(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[dict[str, Tensor]],
    hparams: Mapping[str, Any],
    *,
    staleness: int = 0,
    foreach: bool | None = None,
    owner: str = "apply_rule",
) -> None:
    """Apply one update of the rule described by ``hparams`` to every block, in place.

    Args:
        params: the blocks (parameter tensors) to update.
        grads: one gradient per block, same shape and dtype; not modified.
        states: one state dict per block; missing state is created (see :func:`init_block_state`).
        hparams: the param group: every key listed in ``docs/optimizers.md`` (extra keys are ignored).
        staleness: the staleness of this update for all ``params`` (a non-negative integer).
        foreach: ``True`` for the ``_foreach`` fast path, ``False`` for the literal reference; ``None`` uses
            ``hparams.get("foreach")`` and defaults to the fast path.
        owner: name used in validation errors.

    Raises:
        ValueError: invalid hyper-parameters, staleness, or mismatched list lengths.
        RuntimeError: sparse gradients or complex parameters.
    """
    if not len(params) == len(grads) == len(states):
        raise ValueError(
            f"{owner}: params, grads and states must have the same length, got {len(params)}, {len(grads)}, "
            f"{len(states)}"
        )
    (staleness,) = validate_staleness(staleness, 1)
    spec = RuleSpec.from_group(hparams, owner)
    for p, g in zip(params, grads):
        if g.is_sparse:
            raise RuntimeError(f"{owner} does not support sparse gradients")
        if torch.is_complex(p):
            raise RuntimeError(f"{owner} does not support complex parameters")
    if not params:
        return
    if foreach is None:
        foreach = hparams.get("foreach")
    if foreach is False:
        for p, g, st in zip(params, grads, states):
            reference_update(p, g, st, hparams, staleness=staleness, spec=spec)
        return
    for p, st in zip(params, states):
        ensure_block_state(p, st, spec)
    buckets: dict[tuple[Any, ...], list[int]] = {}
    by_version = spec.momentum_schedule != "constant"  # beta_k differs between blocks at different versions
    for i, p in enumerate(params):
        version = states[i]["step"].item() if by_version else None
        buckets.setdefault((p.device, p.dtype, spec.geometry_for(p), version), []).append(i)
    factor = staleness_factor(spec, staleness)
    for (_, _, geometry, _), idx in buckets.items():
        _bucket_update(
            [params[i] for i in idx], [grads[i] for i in idx], [states[i] for i in idx], spec, geometry, factor
        )


# ------------------------------------------------------------------------------------------------ fast path
class _Direction:
    """``scale_i * num_i / den_i`` for every block of a bucket; ``den`` is ``None`` when there is no divisor.

    ``mul`` and ``div`` are kept apart so that the final scalar ``-(alpha * mul) / div`` is formed in the same
    order as torch's (e.g. Adam's ``-(lr / bias_correction1)``), which keeps the presets bit-exact.
    """

    def __init__(self, num: list[Tensor], den: list[Tensor] | None, n: int) -> None:
        self.num, self.den = num, den
        self.mul = [1.0] * n
        self.div = [1.0] * n

    def scales(self, coefs: Sequence[float] | None = None) -> list[float]:
        coefs = [1.0] * len(self.mul) if coefs is None else coefs
        return [(c * m) / d for c, m, d in zip(coefs, self.mul, self.div)]

    def materialize(self) -> list[Tensor]:
        """The direction as fresh tensors (never aliases state or grads)."""
        out = torch._foreach_div(self.num, self.den) if self.den is not None else torch._foreach_mul(self.num, 1.0)
        scales = self.scales()
        if any(s != 1.0 for s in scales):
            torch._foreach_mul_(out, scales)
        return out


def _uniform(values: Sequence[float]) -> bool:
    return all(v == values[0] for v in values)


def _add_scaled(dst: list[Tensor], num: list[Tensor], den: list[Tensor] | None, scales: list[float]) -> None:
    """``dst_i += scales_i * num_i / den_i`` with one kernel per bucket when the scales agree."""
    if den is not None:
        if _uniform(scales):
            torch._foreach_addcdiv_(dst, num, den, value=scales[0])
        else:
            torch._foreach_addcdiv_(dst, num, den, scales)
    elif _uniform(scales):
        torch._foreach_add_(dst, num, alpha=scales[0])
    else:
        for t, n, s in zip(dst, num, scales):
            t.add_(n, alpha=s)


def _momentum(bufs: list[Tensor], v: list[Tensor], v_owned: bool, ks: list[float], spec: RuleSpec) -> list[Tensor]:
    """Update the buffers from ``v`` and return the momentum direction (the buffers themselves without Nesterov,
    so callers must not modify it). ``v_owned``: ``v`` is a temporary the Nesterov direction may overwrite."""
    beta = spec.momentum
    if spec.momentum_form == "heavy_ball":
        # torch.optim.SGD initialises the buffer to the first direction (clone), then mul_/add_.
        if all(k != 0 for k in ks):
            torch._foreach_mul_(bufs, beta)
            torch._foreach_add_(bufs, v, alpha=1 - spec.dampening)
        else:
            for buf, vi, k in zip(bufs, v, ks):
                if k == 0:
                    buf.copy_(vi)
                else:
                    buf.mul_(beta).add_(vi, alpha=1 - spec.dampening)
        if not spec.nesterov:
            return bufs
        if v_owned:
            torch._foreach_add_(v, bufs, alpha=beta)
            return v
        return torch._foreach_add(v, bufs, alpha=beta)
    torch._foreach_lerp_(bufs, v, 1 - beta)
    if not spec.nesterov:
        return bufs
    return torch._foreach_lerp(v, bufs, beta)  # torch.optim.Muon: grad.lerp(buf, momentum)


def _root_(x: list[Tensor], exponent: float) -> None:
    """``x <- x ** exponent`` in place (the square root at the default 0.5, torch's kernel)."""
    if exponent == 0.5:
        torch._foreach_sqrt_(x)
    else:
        torch._foreach_pow_(x, exponent)


def _sqrt_plus(src: list[Tensor], varsigma: float, eps: float, exponent: float = 0.5) -> list[Tensor]:
    """``(varsigma + src) ** exponent + eps`` as new tensors, skipping the passes whose constant is 0."""
    if varsigma != 0:
        out = torch._foreach_add(src, varsigma)
        _root_(out, exponent)
    elif exponent == 0.5:
        out = torch._foreach_sqrt(src)
    else:
        out = torch._foreach_pow(src, exponent)
    if eps != 0:
        torch._foreach_add_(out, eps)
    return out


def _scale(params: list[Tensor], d: _Direction, g: list[Tensor], states: list[dict[str, Tensor]],
           spec: RuleSpec, geometry: str, ks: list[float]) -> None:
    """Apply the geometry to the direction ``d`` in place; accumulators are fed with the raw gradient ``g``."""
    eps, varsigma = spec.eps_for(geometry), spec.varsigma_for(geometry)
    if geometry == "sgd":
        return
    if geometry == "adagrad":
        sums = [st["sum"] for st in states]
        torch._foreach_addcmul_(sums, g, g, value=1)
        d.den = _sqrt_plus(sums, varsigma, eps, spec.exponent)
    elif geometry == "adanorm":
        sums = [st["sum_norm_sq"] for st in states]
        norms = torch._foreach_norm(g)
        torch._foreach_addcmul_(sums, norms, norms, value=1)
        weights = _sqrt_plus(sums, varsigma, eps, spec.exponent)
        d.div = [dv * w.item() for dv, w in zip(d.div, weights)]
    elif geometry == "rmsprop":
        sq = [st["square_avg"] for st in states]
        torch._foreach_mul_(sq, spec.alpha)
        torch._foreach_addcmul_(sq, g, g, value=1 - spec.alpha)
        if spec.centered:
            grad_avgs = [st["grad_avg"] for st in states]
            torch._foreach_lerp_(grad_avgs, g, 1 - spec.alpha)
            avg = torch._foreach_addcmul(sq, grad_avgs, grad_avgs, value=-1)
            if varsigma != 0:
                torch._foreach_add_(avg, varsigma)
            _root_(avg, spec.exponent)
            if eps != 0:
                torch._foreach_add_(avg, eps)
        else:
            avg = _sqrt_plus(sq, varsigma, eps, spec.exponent)
        d.den = avg
    elif geometry == "adam":
        sq = [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(sq, spec.beta2)
        torch._foreach_addcmul_(sq, g, g, value=1 - spec.beta2)
        if spec.amsgrad:
            maxes = [st["max_exp_avg_sq"] for st in states]
            torch._foreach_maximum_(maxes, sq)
            sq = maxes
        bc2 = [1 - spec.beta2 ** (k + 1) for k in ks]
        if varsigma != 0 or spec.exponent != 0.5:
            den = torch._foreach_div(sq, bc2)
            if varsigma != 0:
                torch._foreach_add_(den, varsigma)
            _root_(den, spec.exponent)
        else:
            # torch.optim.Adam's order: sqrt(v) / sqrt(bias_correction2) + eps
            den = torch._foreach_sqrt(sq)
            torch._foreach_div_(den, [b**0.5 for b in bc2])
        if eps != 0:
            torch._foreach_add_(den, eps)
        d.den = den
        if spec.is_adam_first_moment(geometry):
            d.div = [dv * (1 - spec.momentum ** (k + 1)) for dv, k in zip(d.div, ks)]
    elif geometry == "muon":
        # torch.optim.Muon has no foreach kernel either: Newton-Schulz is a per-matrix product chain.
        src = d.num if d.den is None else torch._foreach_div(d.num, d.den)
        d.num = [
            newton_schulz(x, spec, eps, ns_dtype_for(spec, p)) for x, p in zip(src, params)
        ]
        d.den = None
        d.mul = [m * muon_lr_ratio(spec.adjust_lr_fn, p.shape) for m, p in zip(d.mul, params)]
        if spec.muon_scaling == "adanorm":  # AdaGrad-Norm's step on the orthogonalised direction
            sums = [st["sum_norm_sq"] for st in states]
            norms = torch._foreach_norm(g)
            torch._foreach_addcmul_(sums, norms, norms, value=1)
            weights = _sqrt_plus(sums, spec.varsigma_for("adanorm"), spec.eps_for("adanorm"), spec.exponent)
            d.div = [dv * w.item() for dv, w in zip(d.div, weights)]


def _normalize(d: _Direction, states: list[dict[str, Tensor]], spec: RuleSpec, ks: list[float]) -> None:
    """Divide each block's direction by its norm (``exact``) or by a norm estimate within the tolerance."""
    u = d.materialize()
    norms = [n.item() for n in torch._foreach_norm(u)]
    divs = []
    for norm, st, k in zip(norms, states, ks):
        nu = norm
        if spec.normalization == "inexact":
            if k != 0:
                nu = min(max(st["norm_estimate"].item(), spec.kappa_lo * norm), spec.kappa_hi * norm)
            st["norm_ratio"].fill_(nu / norm if norm > 0 else 1.0)
            if spec.norm_estimate == "stale" or k == 0:
                st["norm_estimate"].fill_(norm)
            else:
                st["norm_estimate"].fill_(spec.norm_beta * st["norm_estimate"].item() + (1 - spec.norm_beta) * norm)
        divs.append(nu if nu > 0 else 1.0)
    d.num, d.den = u, None
    d.mul = [1.0] * len(u)
    d.div = divs


def _bucket_update(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], spec: RuleSpec,
                   geometry: str, factor: float) -> None:
    """One update of blocks that share device, dtype and geometry."""
    n = len(params)
    steps = [st["step"] for st in states]
    ks = [t.item() for t in steps]
    if steps[0].is_cpu:
        # As torch: a CPU scalar `1` wrapped once avoids re-wrapping it for every tensor in the slow path.
        torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)
    lrs = [lr_at_version(spec, k) for k in ks]
    alphas = [lr * factor for lr in lrs]

    g, g_owned = (torch._foreach_neg(grads), True) if spec.maximize else (list(grads), False)
    if spec.weight_decay != 0:
        if spec.decoupled_weight_decay:
            if _uniform(lrs):
                torch._foreach_mul_(params, 1 - lrs[0] * spec.weight_decay)
            else:
                torch._foreach_mul_(params, [1 - lr * spec.weight_decay for lr in lrs])
        elif g_owned:
            torch._foreach_add_(g, params, alpha=spec.weight_decay)
        else:
            g, g_owned = torch._foreach_add(g, params, alpha=spec.weight_decay), True

    key = spec.momentum_key(geometry)
    bufs = [st[key] for st in states] if spec.has_momentum_buffer else None
    mspec = spec.at_version(ks[0])  # a momentum schedule's beta_k (the blocks of a bucket share k then)
    if bufs is not None and spec.momentum_type == "raw":
        # The geometry still reads the raw gradient, so the Nesterov direction may reuse g's memory only for sgd.
        d = _Direction(_momentum(bufs, g, g_owned and geometry == "sgd", ks, mspec), None, n)
    else:
        d = _Direction(g, None, n)

    _scale(params, d, g, states, spec, geometry, ks)

    if bufs is not None and spec.momentum_type == "scaled":
        if spec.momentum_form == "heavy_ball" and all(k != 0 for k in ks):
            # torch.optim.RMSprop: buf.mul_(momentum).addcdiv_(grad, avg); no copy of the direction needed.
            torch._foreach_mul_(bufs, mspec.momentum)
            _add_scaled(bufs, d.num, d.den, d.scales([1 - spec.dampening] * n))
            num = torch._foreach_add(d.materialize(), bufs, alpha=mspec.momentum) if spec.nesterov else bufs
        else:
            num = _momentum(bufs, d.materialize(), True, ks, mspec)
        d = _Direction(num, None, n)

    if spec.normalization != "none":
        _normalize(d, states, spec, ks)

    _add_scaled(params, d.num, d.den, [-s for s in d.scales(alphas)])
