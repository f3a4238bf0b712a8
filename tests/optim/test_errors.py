"""Every invalid argument raises a clear error naming the parameter and its allowed range (one table)."""

from __future__ import annotations

import pytest
import torch

from lightning_async.optim import AsyncAdaptive, AsyncSGD, apply_rule
from tests.optim.cases import ERROR_CASES


@pytest.mark.parametrize(("cls", "kwargs", "error", "pattern"), ERROR_CASES,
                         ids=[f"{c[0].__name__}-{','.join(c[1])}" for c in ERROR_CASES])
def test_invalid_argument_raises(cls: type, kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        cls([torch.zeros(2, 2, requires_grad=True)], **kwargs)


# Constructor-only flags (capturable, fused, ...) are not rule hyper-parameters and are not group keys.
GROUP_ERROR_CASES = [c for c in ERROR_CASES if not set(c[1]) & {"capturable", "differentiable", "fused"}]


@pytest.mark.parametrize(("cls", "kwargs", "error", "pattern"), GROUP_ERROR_CASES,
                         ids=[f"{c[0].__name__}-{','.join(c[1])}" for c in GROUP_ERROR_CASES])
def test_invalid_param_group_override_raises(cls: type, kwargs: dict, error: type, pattern: str) -> None:
    """The same rules hold for a param-group override (messages name the class and parameter too)."""
    opt = cls([torch.zeros(2, 2, requires_grad=True)])
    with pytest.raises(error, match=pattern):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], **kwargs})


def test_group_override_in_constructor_is_validated() -> None:
    with pytest.raises(ValueError, match=r"AsyncAdaptive: geometry must be one of .* got 'lbfgs'"):
        AsyncAdaptive([{"params": [torch.zeros(2, requires_grad=True)], "geometry": "lbfgs"}])


@pytest.mark.parametrize(("staleness", "pattern"), [
    (-1, r"staleness must be a non-negative integer, got -1"),
    (1.5, r"staleness must be a non-negative integer, got 1.5"),
    (True, r"staleness must be a non-negative integer, got True"),
    ([0, 1, 2], r"staleness must have one entry per param group \(2\), got 3 entries"),
    ([0, -2], r"staleness must be a non-negative integer, got -2"),
])
def test_invalid_staleness_raises(staleness: object, pattern: str) -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = AsyncSGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    with pytest.raises(ValueError, match=pattern):
        opt.step(staleness=staleness)  # type: ignore[arg-type]
    assert torch.equal(a, torch.zeros(2)), "a rejected step must not change parameters"


def test_apply_rule_rejects_mismatched_lists_and_sparse_grads() -> None:
    hparams = AsyncSGD([torch.zeros(1)]).param_groups[0]
    p = torch.zeros(3)
    with pytest.raises(ValueError, match=r"params, grads and states must have the same length, got 1, 0, 1"):
        apply_rule([p], [], [{}], hparams)
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        apply_rule([p], [torch.zeros(3).to_sparse()], [{}], hparams)
    with pytest.raises(KeyError, match=r"missing hyper-parameters \['momentum'.*RULE_DEFAULTS"):
        apply_rule([p], [torch.zeros(3)], [{}], {"lr": 0.1})
