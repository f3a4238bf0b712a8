"""At staleness 0 every preset matches its torch counterpart: parameters and every state tensor, float64,
100 steps, two param groups with different hyper-parameters, to 1e-12 (normwise relative)."""

from __future__ import annotations

import pytest
import torch

from lightning_async.optim import AsyncAdaptive, AsyncSGD
from tests.optim.cases import EQUIVALENT_COMPOSITIONS, TORCH_CASES, TorchCase
from tests.optim.helpers import assert_states_close, compute_grads, lockstep, make_model, param_groups, twin

# torch.optim.SGD and Muon keep no `step`; ours counts the block's version in it (contract: every block has one).
NO_TORCH_STEP = (torch.optim.SGD, torch.optim.Muon)


def _pair(case: TorchCase, foreach: bool) -> tuple:
    model_a = make_model(bias=case.bias)
    model_b = twin(model_a)
    opt_a = case.ours(param_groups(model_a, ({}, case.group1)), **case.kwargs)
    torch_kwargs = dict(case.kwargs)
    if case.theirs is not torch.optim.Muon:
        torch_kwargs["foreach"] = foreach
    opt_b = case.theirs(param_groups(model_b, ({}, case.group1)), **torch_kwargs)
    return model_a, opt_a, model_b, opt_b


# torch.optim.Muon has a single (for-loop) implementation; the others are compared with both of torch's.
TORCH_IMPLS = [(c, f) for c in TORCH_CASES for f in c.torch_foreach]


@pytest.mark.parametrize(("case", "foreach"), TORCH_IMPLS,
                         ids=[f"{c.id}-{'torch_foreach' if f else 'torch_forloop'}" for c, f in TORCH_IMPLS])
def test_preset_staleness0_matches_torch(case: TorchCase, foreach: bool) -> None:
    model_a, opt_a, model_b, opt_b = _pair(case, foreach)
    ignore = ("step",) if case.theirs in NO_TORCH_STEP else ()
    lockstep(model_a, opt_a, model_b, opt_b, ignore=ignore)
    if ignore:  # our version count is the number of updates
        assert all(opt_a.state[p]["step"].item() == 100 for p in model_a.parameters())


@pytest.mark.parametrize("case", [c for c in TORCH_CASES if c.theirs is torch.optim.SGD], ids=lambda c: c.id)
def test_sgd_is_bit_exact_with_torch_foreach(case: TorchCase) -> None:
    """Same kernels in the same order: SGD (momentum, dampening, Nesterov) agrees bit for bit."""
    model_a, opt_a, model_b, opt_b = _pair(case, True)
    lockstep(model_a, opt_a, model_b, opt_b, steps=30, rtol=0.0, ignore=("step",))


@pytest.mark.parametrize(("preset", "kwargs", "general"), EQUIVALENT_COMPOSITIONS,
                         ids=[c[0].__name__ for c in EQUIVALENT_COMPOSITIONS])
def test_preset_matches_its_composition(preset: type, kwargs: dict, general: dict) -> None:
    bias = preset.__name__ != "AsyncMuon"
    model_a = make_model(bias=bias)
    model_b = twin(model_a)
    lockstep(model_a, preset(model_a.parameters(), **kwargs), model_b, AsyncAdaptive(model_b.parameters(), **general),
             steps=30, rtol=0.0, staleness=lambda k: k % 3)


def test_lr_scheduler_keeps_working() -> None:
    """torch schedulers change group['lr']; the rule reads it at every step."""
    model_a = make_model()
    model_b = twin(model_a)
    opt_a = AsyncSGD(model_a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=7, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=7, gamma=0.5)
    for step in range(30):
        for model, opt, sched in ((model_a, opt_a, sched_a), (model_b, opt_b, sched_b)):
            compute_grads(model, step)
            opt.step()
            sched.step()
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == 0.1 * 0.5**4
    assert_states_close(opt_a, opt_b, list(model_a.parameters()), list(model_b.parameters()), 0.0, ("step",))
