r"""Presets: torch-compatible optimizer classes, each a fixed choice of parts.

Each preset takes its torch counterpart's arguments, with torch's names, order and defaults, and a few
keyword-only extras for the asynchronous parts (staleness policy, step rule). At ``staleness=0`` with the default
extras, each preset matches its torch counterpart in parameters and in every state tensor (torch's state keys),
so a torch checkpoint loads into the matching preset. Every preset is an :class:`AsyncOptimizer`; any rule
hyper-parameter (see :class:`AsyncAdaptive`) may still be overridden in a param-group dict.

=================  ==========================  ============================================================
preset             torch counterpart            parts
=================  ==========================  ============================================================
``AsyncSGD``       ``torch.optim.SGD``          sgd geometry, raw heavy-ball momentum (dampening, Nesterov)
``AsyncAdagrad``   ``torch.optim.Adagrad``      adagrad geometry, ``lr_decay`` step rule
``AsyncAdaNorm``   (none)                       adanorm geometry (one scalar accumulator per block)
``AsyncRMSprop``   ``torch.optim.RMSprop``      rmsprop geometry, heavy-ball momentum on the scaled direction
``AsyncAdam``      ``torch.optim.Adam``         adam geometry, raw EMA momentum (``exp_avg``)
``AsyncAdamW``     ``torch.optim.AdamW``        as AsyncAdam, decoupled weight decay
``AsyncMuon``      ``torch.optim.Muon``         muon geometry, raw EMA momentum (Nesterov), adam fallback
``AsyncAdaptive``  (none)                       every part chosen explicitly
=================  ==========================  ============================================================
"""

from __future__ import annotations

from typing import Literal

from torch.optim.optimizer import ParamsT

from lightning_async.optim.optimizer import AsyncOptimizer

Geometry = Literal["sgd", "adagrad", "adanorm", "rmsprop", "adam", "muon"]
FallbackGeometry = Literal["sgd", "adagrad", "adanorm", "rmsprop", "adam"]
MomentumType = Literal["none", "raw", "scaled"]
MomentumForm = Literal["heavy_ball", "ema"]
Normalization = Literal["none", "exact", "inexact"]
NormEstimate = Literal["stale", "running"]
StepRule = Literal["constant", "diminishing"]
AdaptiveStepRule = Literal["constant", "diminishing", "horizon", "delay"]
MomentumSchedule = Literal["constant", "increasing"]
MuonScaling = Literal["none", "adanorm"]
StalenessPolicy = Literal["ignore", "power"]
NSDtype = Literal["bfloat16", "float32", "float64", "param"]
AdjustLrFn = Literal["original", "match_rms_adamw"]

def _tuple(value: object) -> object:
    """Store sequences as tuples (torch's convention); leave anything else for validation to reject."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


_ASYNC_ARGS_DOC = """
        staleness_policy: how a step reacts to its staleness ``s``: ``"ignore"`` or ``"power"``, which scales the
            step by ``(1 + s) ** -staleness_power``. The bound on ``s`` lives in the engine.
        staleness_power: exponent of the ``"power"`` policy, ``>= 0``.
        step_rule: ``"constant"``, or ``"diminishing"``: ``lr / (k + 1) ** gamma`` where ``k`` is the block's
            version (its ``step`` state: updates already applied to it).
        gamma: exponent of the diminishing step rule, in ``[0, 1]``.
"""


class AsyncSGD(AsyncOptimizer):
    r"""SGD with heavy-ball or Nesterov momentum; ``torch.optim.SGD`` at staleness 0.

    .. math::
        g \leftarrow g + \lambda x;\quad b \leftarrow \begin{cases} g & k = 0\\ \mu b + (1-\tau) g & k>0
        \end{cases};\quad d = g + \mu b \text{ (nesterov) or } b;\quad x \leftarrow x - \alpha_k(s)\, d

    State: ``step`` and, when ``momentum != 0``, ``momentum_buffer`` (torch's name and value).

    Args:
        params: parameters or param groups.
        lr: learning rate, ``>= 0``.
        momentum: momentum factor ``mu``, ``>= 0``.
        dampening: dampening ``tau`` for momentum, in ``[0, 1]``.
        weight_decay: L2 penalty ``lambda``, ``>= 0``.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        maximize: maximize the objective.
        foreach: ``True``/``None`` for the ``_foreach`` fast path, ``False`` for the literal reference.
    """ + _ASYNC_ARGS_DOC

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        step_rule: StepRule = "constant",
        gamma: float = 0.5,
    ) -> None:
        super().__init__(params, dict(
            lr=lr, geometry="sgd", momentum=momentum, momentum_type="raw", momentum_form="heavy_ball",
            dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, foreach=foreach,
            staleness_policy=staleness_policy, staleness_power=staleness_power, step_rule=step_rule, gamma=gamma,
        ))


class AsyncAdagrad(AsyncOptimizer):
    r"""Diagonal AdaGrad; ``torch.optim.Adagrad`` at staleness 0 (``varsigma=0``).

    .. math::
        g \leftarrow g + \lambda x;\quad S \leftarrow S + g \odot g;\quad
        x \leftarrow x - \frac{\alpha_k(s)}{1 + k\,\eta}\,\frac{g}{\sqrt{\varsigma + S} + \epsilon}

    With ``initial_accumulator_value=0, eps=0, varsigma=c`` this is the authors' convention
    ``w = sqrt(c + sum of g^2)`` (current gradient included), step ``-lr g / w``. State is created in
    ``__init__``, like torch: ``step``, ``sum``.

    Args:
        params: parameters or param groups.
        lr: learning rate, ``>= 0``.
        lr_decay: ``eta``, the step is divided by ``1 + k * lr_decay``; ``>= 0``.
        weight_decay: L2 penalty, ``>= 0``.
        initial_accumulator_value: initial value of ``sum``, ``>= 0``.
        eps: added to the square root, ``>= 0``.
        foreach: ``True``/``None`` for the fast path, ``False`` for the literal reference.
        maximize: maximize the objective.
        varsigma: added to the accumulator inside the square root (the authors' varsigma), ``>= 0``.
    """ + _ASYNC_ARGS_DOC

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        varsigma: float = 0.0,
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        step_rule: StepRule = "constant",
        gamma: float = 0.5,
    ) -> None:
        super().__init__(params, dict(
            lr=lr, geometry="adagrad", lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, varsigma=varsigma, foreach=foreach,
            maximize=maximize, staleness_policy=staleness_policy, staleness_power=staleness_power,
            step_rule=step_rule, gamma=gamma,
        ))
        self.init_state()  # torch.optim.Adagrad creates its state eagerly


class AsyncAdaNorm(AsyncOptimizer):
    r"""AdaGrad-Norm: one scalar accumulator per block (no torch counterpart).

    .. math::
        v \leftarrow v + \lVert g\rVert^2;\quad
        x \leftarrow x - \frac{\alpha_k(s)}{1 + k\,\eta}\,\frac{g}{\sqrt{\varsigma + v} + \epsilon}

    The block is a parameter tensor. State: ``step``, ``sum_norm_sq`` (a 0-d tensor of the parameter's dtype).
    Arguments as :class:`AsyncAdagrad`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        varsigma: float = 0.0,
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        step_rule: StepRule = "constant",
        gamma: float = 0.5,
    ) -> None:
        super().__init__(params, dict(
            lr=lr, geometry="adanorm", lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, varsigma=varsigma, foreach=foreach,
            maximize=maximize, staleness_policy=staleness_policy, staleness_power=staleness_power,
            step_rule=step_rule, gamma=gamma,
        ))


class AsyncRMSprop(AsyncOptimizer):
    r"""RMSprop (optionally centered, with momentum on the scaled direction); ``torch.optim.RMSprop`` at s=0.

    .. math::
        v \leftarrow a v + (1-a) g^2;\quad \bar g \leftarrow a \bar g + (1-a) g\ \text{(centered)};\quad
        u = \frac{g}{\sqrt{v - \bar g^2} + \epsilon};\quad b \leftarrow \mu b + u;\quad
        x \leftarrow x - \alpha_k(s)\, b

    State: ``step``, ``square_avg``, ``momentum_buffer`` (``momentum > 0``), ``grad_avg`` (``centered``).

    Args:
        params: parameters or param groups.
        lr: learning rate, ``>= 0``.
        alpha: smoothing constant ``a``, in ``[0, 1]``.
        eps: added to the square root, ``>= 0``.
        weight_decay: L2 penalty, ``>= 0``.
        momentum: momentum factor, ``>= 0``.
        centered: normalise by an estimate of the variance instead of the second moment.
        capturable: accepted for signature compatibility; must be ``False`` (CUDA graphs are not supported).
        foreach: ``True``/``None`` for the fast path, ``False`` for the literal reference.
        maximize: maximize the objective.
    """ + _ASYNC_ARGS_DOC

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        *,
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        step_rule: StepRule = "constant",
        gamma: float = 0.5,
    ) -> None:
        if capturable:
            raise ValueError("AsyncRMSprop: capturable must be False (CUDA-graph capture is not supported), got True")
        super().__init__(params, dict(
            lr=lr, geometry="rmsprop", alpha=alpha, eps=eps, varsigma=0.0, weight_decay=weight_decay,
            momentum=momentum, momentum_type="scaled", momentum_form="heavy_ball", centered=centered,
            foreach=foreach, maximize=maximize, staleness_policy=staleness_policy, staleness_power=staleness_power,
            step_rule=step_rule, gamma=gamma,
        ))


class AsyncAdam(AsyncOptimizer):
    r"""Adam (optionally AMSGrad, decoupled weight decay); ``torch.optim.Adam`` at staleness 0.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g;\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2;\quad
        \hat v = \max(\hat v, v)\ \text{(amsgrad)};\quad
        x \leftarrow x - \alpha_k(s)\,\frac{m / (1-\beta_1^{t})}{\sqrt{\hat v/(1-\beta_2^{t})} + \epsilon}

    with ``t = k + 1``. State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).

    Args:
        params: parameters or param groups.
        lr: learning rate, ``>= 0``.
        betas: ``(beta1, beta2)``, each in ``[0, 1)``.
        eps: added to the denominator, ``>= 0``.
        weight_decay: weight decay, ``>= 0`` (L2 unless ``decoupled_weight_decay``).
        amsgrad: use the running maximum of ``exp_avg_sq``.
        foreach: ``True``/``None`` for the fast path, ``False`` for the literal reference.
        maximize: maximize the objective.
        capturable: accepted for signature compatibility; must be ``False``.
        differentiable: accepted for signature compatibility; must be ``False``.
        fused: accepted for signature compatibility; must be ``None`` or ``False``.
        decoupled_weight_decay: AdamW-style decay ``x <- (1 - lr_k * weight_decay) x``.
    """ + _ASYNC_ARGS_DOC

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        step_rule: StepRule = "constant",
        gamma: float = 0.5,
    ) -> None:
        for name, value in (("capturable", capturable), ("differentiable", differentiable), ("fused", fused)):
            if value:
                raise ValueError(f"{type(self).__name__}: {name} must be False (not supported), got {value!r}")
        super().__init__(params, dict(
            lr=lr, geometry="adam", betas=_tuple(betas), momentum=None, momentum_type="raw", momentum_form="ema",
            eps=eps, varsigma=0.0, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach, maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay, staleness_policy=staleness_policy,
            staleness_power=staleness_power, step_rule=step_rule, gamma=gamma,
        ))


class AsyncAdamW(AsyncAdam):
    r"""AdamW: :class:`AsyncAdam` with decoupled weight decay; ``torch.optim.AdamW`` at staleness 0.

    .. math:: x \leftarrow (1 - \text{lr}_k \lambda)\, x \quad\text{then the Adam step.}

    Arguments as :class:`AsyncAdam` (``weight_decay`` defaults to ``1e-2``; ``decoupled_weight_decay`` is
    always ``True``, as in torch).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        step_rule: StepRule = "constant",
        gamma: float = 0.5,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            staleness_policy=staleness_policy, staleness_power=staleness_power, step_rule=step_rule, gamma=gamma,
        )


class AsyncMuon(AsyncOptimizer):
    r"""Muon: momentum, then an inexact polar factor by Newton-Schulz; ``torch.optim.Muon`` at staleness 0.

    .. math::
        b \leftarrow \mu b + (1-\mu) g;\quad d = (1-\mu) g + \mu b\ \text{(nesterov) or } b;\quad
        x \leftarrow (1 - \text{lr}_k\lambda) x - \alpha_k(s)\, r(A, B)\, \mathrm{NS}_q(d)

    ``NS_q`` is ``ns_steps`` quintic Newton-Schulz iterations with ``ns_coefficients`` (in bfloat16 like torch,
    see ``ns_dtype``) and ``r`` torch's shape ratio (``adjust_lr_fn``). Blocks that are not matrices (torch
    refuses them) use ``muon_fallback`` instead, with the same momentum and ``eps``; an ``"adam"`` fallback takes
    its second-moment decay from ``betas[1]``. State: ``step``,
    ``momentum_buffer`` (matrices); fallback blocks hold the fallback geometry's state
    (for ``"adam"``: ``exp_avg``, ``exp_avg_sq``).

    Args:
        params: parameters or param groups.
        lr: learning rate, ``>= 0``.
        weight_decay: decoupled weight decay, ``>= 0``.
        momentum: momentum factor, in ``[0, 1)``.
        nesterov: Nesterov momentum.
        ns_coefficients: ``(a, b, c)`` of the quintic iteration.
        eps: lower bound of the norm the iteration starts from (and the fallback's epsilon), ``>= 0``.
        ns_steps: number of Newton-Schulz iterations, in ``[1, 99]``.
        adjust_lr_fn: ``None``/``"original"`` (``sqrt(max(1, A/B))``) or ``"match_rms_adamw"``
            (``0.2 sqrt(max(A, B))``).
        muon_fallback: geometry of the blocks that are not matrices.
        betas: ``betas[1]`` is the second-moment decay of an ``"adam"`` fallback (``betas[0]`` is unused: the
            momentum is ``momentum``).
        ns_dtype: precision of the Newton-Schulz iteration (``"bfloat16"`` as torch, or ``"param"``).
    """ + _ASYNC_ARGS_DOC

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: AdjustLrFn | None = None,
        *,
        muon_fallback: FallbackGeometry = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        ns_dtype: NSDtype = "bfloat16",
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        step_rule: StepRule = "constant",
        gamma: float = 0.5,
    ) -> None:
        super().__init__(params, dict(
            lr=lr, geometry="muon", muon_fallback=muon_fallback, weight_decay=weight_decay,
            decoupled_weight_decay=True, momentum=momentum, momentum_type="raw", momentum_form="ema",
            nesterov=nesterov, ns_coefficients=_tuple(ns_coefficients), eps=eps, varsigma=0.0, ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn, betas=_tuple(betas), ns_dtype=ns_dtype, staleness_policy=staleness_policy,
            staleness_power=staleness_power, step_rule=step_rule, gamma=gamma,
        ))


class AsyncAdaptive(AsyncOptimizer):
    r"""The general rule: every part chosen explicitly (see ``docs/optimizers.md``).

    .. math::
        d = \mathrm{M}(g)\ [\text{raw}];\quad u = \mathrm{P}^{-1} d;\quad u \leftarrow \mathrm{M}(u)\
        [\text{scaled}];\quad u \leftarrow u/\nu\ [\text{normalization}];\quad x \leftarrow x - \alpha_k(s)\,u

    Any argument can be overridden per param group (e.g. ``{"params": matrices, "geometry": "muon"}`` next to
    ``{"params": others, "geometry": "adagrad"}``). ``None`` for ``eps``/``varsigma`` means the geometry's
    default (adagrad/adanorm: ``eps=0, varsigma=1e-2``, the authors' ``sqrt(varsigma + sum g^2)``;
    rmsprop/adam: ``eps=1e-8, varsigma=0``; muon: ``eps=1e-7``). These defaults are not from the paper.

    Args:
        params: parameters or param groups.
        lr: base step size ``lr``, ``>= 0``.
        geometry: the scaling ``P``: ``"sgd"`` (identity), ``"adagrad"`` (diagonal, cumulative),
            ``"adanorm"`` (one scalar per block), ``"rmsprop"``/``"adam"`` (exponential averages, Adam with
            torch's bias correction), ``"muon"`` (Newton-Schulz polar factor of matrix blocks).
        momentum: momentum coefficient ``beta``; ``None`` means ``betas[0]``.
        momentum_type: ``"none"``; ``"raw"`` (on the gradient, before scaling); ``"scaled"`` (on the scaled
            direction, after scaling).
        momentum_form: ``"heavy_ball"`` (``b <- beta b + (1 - dampening) v``, ``b <- v`` at the first update,
            torch SGD) or ``"ema"`` (``b <- beta b + (1 - beta) v``, torch Adam/Muon).
        dampening: heavy-ball dampening, in ``[0, 1]``.
        nesterov: Nesterov look-ahead (heavy-ball: ``v + beta b``; ema: ``(1-beta) v + beta b``).
        betas: ``(beta1, beta2)``: ``beta2`` is Adam's second-moment decay; ``beta1`` the default momentum.
        alpha: RMSprop's second-moment decay, in ``[0, 1]``.
        centered: RMSprop: subtract the squared mean gradient.
        amsgrad: Adam: use the running maximum of the second moment.
        eps: added outside the square root, ``>= 0`` or ``None``; for muon, the Newton-Schulz norm floor.
        varsigma: added inside the square root (the authors' varsigma), ``>= 0`` or ``None``.
        initial_accumulator_value: AdaGrad/AdaNorm accumulator start, ``>= 0``.
        lr_decay: torch Adagrad's ``lr / (1 + k lr_decay)``, ``>= 0``.
        weight_decay: ``>= 0``; L2 (added to the gradient) or decoupled.
        decoupled_weight_decay: ``x <- (1 - lr_k weight_decay) x`` instead of L2.
        normalization: ``"none"``; ``"exact"`` (``u / ||u||`` per block); ``"inexact"`` (``u / nu`` with
            ``nu`` an estimate forced into ``[kappa_lo, kappa_hi] * ||u||``; realised ratio in state
            ``norm_ratio``).
        kappa_lo: lower tolerance of the inexact norm, in ``(0, 1]``.
        kappa_hi: upper tolerance of the inexact norm, ``>= 1``.
        norm_estimate: the estimate: ``"stale"`` (the previous update's norm) or ``"running"`` (an exponential
            average of previous norms with ``norm_beta``).
        norm_beta: decay of the running norm estimate, in ``[0, 1)``.
        exponent: the power ``mu`` of every adaptive accumulator, in ``(0, 1]``: AdaGrad's
            ``d / ((varsigma + sum g^2) ** mu + eps)``, and likewise AdaNorm, RMSprop, Adam and ``muon_scaling``
            (``0.5``: the square root, torch's rules).
        momentum_schedule: ``"constant"`` (``beta``) or ``"increasing"`` (``beta_k = beta (k + 1) / (k + 2)``, from
            half of ``beta`` towards ``beta``; not with Adam's first moment).
        muon_scaling: ``"none"`` (torch Muon) or ``"adanorm"``: Muon's orthogonalised direction divided by
            ``(varsigma + sum_j ||g_j||^2) ** mu + eps``, AdaGrad-Norm's accumulator over the block (``varsigma``
            and ``eps`` default as for ``adanorm``).
        horizon: ``T`` of ``step_rule="horizon"``: the fixed step ``lr / T ** gamma`` (``T``: the updates the run
            will apply; ``gamma=0.5`` gives ``lr / sqrt(T)``). ``step_rule`` here also accepts ``"horizon"`` and
            ``"delay"``.
        delay_bound: ``tau`` of ``step_rule="delay"``: the fixed step ``lr / (1 + tau) ** gamma``, tied to the
            staleness bound: set it to the run's ``max_staleness`` (``strategy.resolved_max_staleness`` under
            ``"auto"``; the staleness of every applied update is at most that).
        ns_coefficients: Newton-Schulz coefficients ``(a, b, c)``.
        ns_steps: Newton-Schulz iterations, in ``[1, 99]``.
        ns_dtype: Newton-Schulz precision.
        adjust_lr_fn: Muon's shape ratio (``None``/``"original"`` or ``"match_rms_adamw"``).
        muon_fallback: geometry of non-matrix blocks when ``geometry="muon"``.
        maximize: maximize the objective.
        foreach: ``True``/``None`` for the fast path, ``False`` for the literal reference.
    """ + _ASYNC_ARGS_DOC

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        geometry: Geometry = "adagrad",
        momentum: float | None = None,
        momentum_type: MomentumType = "none",
        momentum_form: MomentumForm = "heavy_ball",
        dampening: float = 0.0,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        alpha: float = 0.99,
        centered: bool = False,
        amsgrad: bool = False,
        eps: float | None = None,
        varsigma: float | None = None,
        initial_accumulator_value: float = 0.0,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        normalization: Normalization = "none",
        kappa_lo: float = 0.5,
        kappa_hi: float = 2.0,
        norm_estimate: NormEstimate = "stale",
        norm_beta: float = 0.9,
        step_rule: AdaptiveStepRule = "constant",
        gamma: float = 0.5,
        horizon: int | None = None,
        delay_bound: int | None = None,
        exponent: float = 0.5,
        momentum_schedule: MomentumSchedule = "constant",
        muon_scaling: MuonScaling = "none",
        staleness_policy: StalenessPolicy = "ignore",
        staleness_power: float = 0.5,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
        ns_steps: int = 5,
        ns_dtype: NSDtype = "bfloat16",
        adjust_lr_fn: AdjustLrFn | None = None,
        muon_fallback: FallbackGeometry = "adam",
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(params, dict(
            lr=lr, geometry=geometry, momentum=momentum, momentum_type=momentum_type, momentum_form=momentum_form,
            dampening=dampening, nesterov=nesterov, betas=_tuple(betas), alpha=alpha, centered=centered,
            amsgrad=amsgrad, eps=eps, varsigma=varsigma, initial_accumulator_value=initial_accumulator_value,
            lr_decay=lr_decay, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
            normalization=normalization, kappa_lo=kappa_lo, kappa_hi=kappa_hi, norm_estimate=norm_estimate,
            norm_beta=norm_beta, step_rule=step_rule, gamma=gamma, horizon=horizon, delay_bound=delay_bound,
            exponent=exponent, momentum_schedule=momentum_schedule, muon_scaling=muon_scaling,
            staleness_policy=staleness_policy,
            staleness_power=staleness_power, ns_coefficients=_tuple(ns_coefficients), ns_steps=ns_steps,
            ns_dtype=ns_dtype, adjust_lr_fn=adjust_lr_fn, muon_fallback=muon_fallback, maximize=maximize,
            foreach=foreach,
        ))
