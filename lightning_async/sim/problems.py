"""Non-convex test problems with exact full gradients, and the way to plug in one's own.

A :class:`Problem` is a finite-sum objective ``F(X) = loss_fn(model, full_batch)`` (the mean of the per-sample loss
over a generated dataset, plus any regularizer), sampled by mini-batches drawn uniformly with replacement, so that
the stochastic gradient is unbiased and ``||grad F(X)||^2`` is computed exactly by :meth:`Problem.objective`.

Built-in problems (see :data:`PROBLEMS`):

* ``"regression"``: robust linear regression with the non-convex Geman-McClure loss ``r^2 / (1 + r^2)`` on data with
  10% gross outliers, plus the non-convex penalty ``lam * sum w^2 / (1 + w^2)``; the weight vector is split into
  several tensors so that blocks are meaningful.
* ``"mlp"``: a 8-32-32-1 tanh network fitted by mean squared error to a random 8-16-1 teacher network plus noise.

Your own problem: write a function ``make(seed: int, dtype: torch.dtype, batch_size: int) -> Problem`` and pass
``"package.module:make"`` wherever a problem name is accepted (``--problem`` of ``python -m lightning_async.sim``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Problem:
    """A finite-sum objective with an exact full gradient.

    Attributes:
        name: short name.
        model: the model; its parameters are ``X``.
        loss_fn: ``loss_fn(model, batch) -> scalar``; on a mini-batch it is ``f(X, xi)``, on ``full_batch`` it is
            ``F(X)``.
        sample: ``sample(generator) -> batch``: a mini-batch drawn uniformly with replacement.
        full_batch: the whole dataset.
        description: one line for reports.
    """

    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    sample: Callable[[torch.Generator], Any]
    full_batch: Any
    description: str = ""

    def objective(self) -> tuple[float, float]:
        """Return ``(F(X), ||grad F(X)||^2)`` at the model's current parameters, computed on the full dataset."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            loss = self.loss_fn(self.model, self.full_batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        sq = sum(float((g.double() * g.double()).sum()) for g in grads if g is not None)
        return float(loss.detach()), sq


def _sampler(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Callable[[torch.Generator], Any]:
    n = x.shape[0]
    if not batch_size >= 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")

    def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(n, (batch_size,), generator=generator)
        return x[idx], y[idx]

    return sample


class ChunkedLinear(nn.Module):
    """``x -> x @ w + b`` with ``w`` stored as ``chunks`` separate tensors (one block each under ``"tensor"``)."""

    def __init__(self, features: int, chunks: int, dtype: torch.dtype) -> None:
        super().__init__()
        sizes = [features // chunks + (1 if i < features % chunks else 0) for i in range(chunks)]
        self.sizes = sizes
        self.w = nn.ParameterList(nn.Parameter(torch.zeros(s, dtype=dtype)) for s in sizes)
        self.b = nn.Parameter(torch.zeros((), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.cat(list(self.w)) + self.b


def make_regression(
    seed: int = 0, dtype: torch.dtype = torch.float64, batch_size: int = 16, *, samples: int = 512,
    features: int = 20, chunks: int = 4, penalty: float = 1e-3,
) -> Problem:
    """Robust regression with the Geman-McClure loss and a non-convex penalty (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=g, dtype=dtype)
    w_true = torch.randn(features, generator=g, dtype=dtype) / features**0.5
    y = x @ w_true + 0.1 * torch.randn(samples, generator=g, dtype=dtype)
    outliers = torch.rand(samples, generator=g) < 0.1
    y[outliers] = 5.0 * torch.randn(int(outliers.sum()), generator=g, dtype=dtype)
    model = ChunkedLinear(features, chunks, dtype)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        r2 = (m(xb) - yb).square()
        w2 = torch.cat(list(m.w)).square()
        return (r2 / (1 + r2)).mean() + penalty * (w2 / (1 + w2)).sum()

    return Problem(
        "regression", model, loss_fn, _sampler(x, y, batch_size), (x, y),
        f"Geman-McClure robust regression, n={samples}, d={features} in {chunks} tensors, 10% outliers",
    )


def make_mlp(
    seed: int = 0, dtype: torch.dtype = torch.float64, batch_size: int = 16, *, samples: int = 512,
    features: int = 8, hidden: int = 32,
) -> Problem:
    """A small tanh MLP fitted to a random teacher network by mean squared error."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=g, dtype=dtype)
    teacher = [torch.randn(features, 16, generator=g, dtype=dtype) / features**0.5,
               torch.randn(16, 1, generator=g, dtype=dtype) / 4.0]
    y = torch.tanh(x @ teacher[0]) @ teacher[1] + 0.05 * torch.randn(samples, 1, generator=g, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        ).to(dtype)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        return (m(xb) - yb).square().mean()

    return Problem(
        "mlp", model, loss_fn, _sampler(x, y, batch_size), (x, y),
        f"{features}-{hidden}-{hidden}-1 tanh MLP, MSE to a random teacher, n={samples}",
    )


PROBLEMS: dict[str, Callable[..., Problem]] = {"regression": make_regression, "mlp": make_mlp}
"""Built-in problems by name."""


def get_problem(name: str, seed: int = 0, dtype: torch.dtype = torch.float64, batch_size: int = 16) -> Problem:
    """Build a built-in problem by name, or a user problem from ``"package.module:function"``.

    Raises:
        ValueError: for an unknown name, or a ``module:function`` that cannot be imported or returns no Problem.
    """
    if name in PROBLEMS:
        return PROBLEMS[name](seed, dtype, batch_size)
    if ":" not in name:
        raise ValueError(
            f"problem must be one of {sorted(PROBLEMS)} or 'package.module:function', got {name!r}."
        )
    module_name, func_name = name.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"problem {name!r}: cannot load {func_name!r} from {module_name!r} ({err}).") from err
    problem = factory(seed, dtype, batch_size)
    if not isinstance(problem, Problem):
        raise ValueError(f"problem {name!r}: {func_name}(seed, dtype, batch_size) returned "
                         f"{type(problem).__name__}, expected lightning_async.sim.problems.Problem.")
    return problem
