"""Shared test helpers: a tiny non-convex model, deterministic batches, lockstep runs and strict comparison."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lightning_async.optim import AsyncOptimizer

STEPS = 100
RTOL = 1e-12


def make_model(bias: bool = True, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """Two tanh layers: small, non-convex, with matrices and (optionally) vectors."""
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=bias), torch.nn.Tanh(), torch.nn.Linear(5, 3, bias=bias))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.to(dtype)


def param_groups(model: torch.nn.Module, overrides: Sequence[dict[str, Any]] = ({}, {})) -> list[dict[str, Any]]:
    """One param group per layer, each with its own hyper-parameter overrides."""
    layers = [model[0], model[2]]
    return [{"params": list(layer.parameters()), **o} for layer, o in zip(layers, overrides)]


def batch(step: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 6, generator=gen).to(dtype), torch.randn(8, 3, generator=gen).to(dtype)


def compute_grads(model: torch.nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step, next(model.parameters()).dtype)
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = ((out - y) ** 2).mean() + 0.3 * torch.cos(3 * out).mean()  # non-convex, bounded below
    loss.backward()
    return loss.detach()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    """Normwise relative comparison: max |a - e| <= rtol * max(max |e|, tiny); exact dtype and shape."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(expected.detach().abs().max().item(), 1e-300) if expected.numel() else 1.0
    err = (actual.detach().double() - expected.detach().double()).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3e} > {rtol:g} * {scale:.3e}"


def assert_states_close(opt_a: torch.optim.Optimizer, opt_b: torch.optim.Optimizer, params_a: list, params_b: list,
                        rtol: float = RTOL, ignore: Sequence[str] = ()) -> None:
    """Every parameter and every state tensor (same keys) agree."""
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        assert_close(pa, pb, f"param {i}", rtol)
        sa = {k: v for k, v in opt_a.state[pa].items() if k not in ignore}
        sb = {k: v for k, v in opt_b.state[pb].items() if k not in ignore}
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in sa:
            assert_close(sa[key], sb[key], f"param {i} state {key!r}", rtol)


def lockstep(model_a: torch.nn.Module, opt_a: torch.optim.Optimizer, model_b: torch.nn.Module,
             opt_b: torch.optim.Optimizer, steps: int = STEPS, staleness: Callable[[int], Any] | None = None,
             check_every: int = 10, rtol: float = RTOL, ignore: Sequence[str] = (),
             step_b: Callable[[torch.optim.Optimizer, Any], None] | None = None) -> None:
    """Run two optimizers side by side, each on its own model copy, comparing params and state as they go."""
    params_a, params_b = list(model_a.parameters()), list(model_b.parameters())
    for step in range(steps):
        s = 0 if staleness is None else staleness(step)
        compute_grads(model_a, step)
        compute_grads(model_b, step)
        opt_a.step(staleness=s)
        if step_b is None:
            opt_b.step(staleness=s) if isinstance(opt_b, AsyncOptimizer) else opt_b.step()
        else:
            step_b(opt_b, s)
        if step % check_every == check_every - 1 or step == steps - 1:
            assert_states_close(opt_a, opt_b, params_a, params_b, rtol, ignore)


def twin(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)
