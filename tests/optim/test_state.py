"""State: init_state equals a lazy first update, state-dict round trip and exact resume, torch checkpoints load
into the matching preset, dtypes are kept, and state takes no more memory than torch's."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch

from lightning_async.optim import AsyncOptimizer
from tests.optim.cases import ALL_PRESETS, TORCH_CASES, TorchCase
from tests.optim.helpers import assert_states_close, compute_grads, lockstep, make_model, param_groups, twin

PRESET_IDS = [c[0].__name__ for c in ALL_PRESETS]


@pytest.mark.parametrize(("cls", "kwargs"), ALL_PRESETS, ids=PRESET_IDS)
def test_init_state_equals_lazy_first_update(cls: type, kwargs: dict[str, Any]) -> None:
    model_a = make_model()
    model_b = twin(model_a)
    eager = cls(param_groups(model_a), **kwargs)
    lazy = cls(param_groups(model_b), **kwargs)
    before = [p.clone() for p in model_a.parameters()]
    eager.init_state()
    assert all(torch.equal(p, q) for p, q in zip(before, model_a.parameters())), "init_state changed parameters"
    for p in model_a.parameters():
        assert all(isinstance(v, torch.Tensor) for v in eager.state[p].values())
        assert eager.state[p]["step"].item() == 0
    # the first (and later) updates after eager init equal lazy ones, bit for bit
    lockstep(model_a, eager, model_b, lazy, steps=3, check_every=1, rtol=0.0, staleness=lambda k: k)
    # and eager init created exactly the keys/dtypes/shapes a lazy first update creates
    fresh = cls(param_groups(twin(model_a)), **kwargs)
    fresh.init_state()
    for pa, pf in zip(model_a.parameters(), fresh.param_groups[0]["params"] + fresh.param_groups[1]["params"]):
        assert {k: (v.dtype, v.shape, v.device) for k, v in eager.state[pa].items()} == {
            k: (v.dtype, v.shape, v.device) for k, v in fresh.state[pf].items()}


def test_sgd_eager_init_reproduces_torch_clone_with_dampening() -> None:
    """torch.optim.SGD's first update sets the buffer to clone(grad) even with dampening != 0."""
    model_a = make_model()
    model_b = twin(model_a)
    from lightning_async.optim import AsyncSGD

    ours = AsyncSGD(model_a.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    ours.init_state()
    theirs = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9, dampening=0.5, foreach=True)
    lockstep(model_a, ours, model_b, theirs, steps=5, check_every=1, rtol=0.0, ignore=("step",))


@pytest.mark.parametrize(("cls", "kwargs"), ALL_PRESETS, ids=PRESET_IDS)
def test_state_dict_round_trip_and_exact_resume(cls: type, kwargs: dict[str, Any]) -> None:
    """Prime with staleness, save (through torch.save / weights_only load), load into a fresh optimizer, and
    continue both in lockstep: identical parameters, state and state_dict."""
    model_a = make_model()
    opt_a = cls(param_groups(model_a), **kwargs)
    for step in range(6):
        compute_grads(model_a, step)
        opt_a.step(staleness=[step % 3, 1])
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model_b = twin(model_a)
    opt_b = cls(param_groups(model_b), **kwargs)
    opt_b.load_state_dict(saved)
    assert_states_close(opt_a, opt_b, list(model_a.parameters()), list(model_b.parameters()), rtol=0.0)

    params_a, params_b = list(model_a.parameters()), list(model_b.parameters())
    for step in range(6, 12):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            compute_grads(model, step)
            opt.step(staleness=[step % 4, 0])
    assert_states_close(opt_a, opt_b, params_a, params_b, rtol=0.0)
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    for i in sd_a["state"]:
        assert sd_a["state"][i].keys() == sd_b["state"][i].keys()
        assert all(torch.equal(sd_a["state"][i][k], sd_b["state"][i][k]) for k in sd_a["state"][i])


@pytest.mark.parametrize("case", [c for c in TORCH_CASES if not c.kwargs.get("maximize")], ids=lambda c: c.id)
def test_torch_checkpoint_loads_into_preset(case: TorchCase) -> None:
    """A torch optimizer's state_dict, taken mid-run, loads into the matching preset, which then continues
    exactly like the torch optimizer."""
    model_t = make_model(bias=case.bias)
    torch_opt = case.theirs(param_groups(model_t, ({}, case.group1)), **case.kwargs)
    for step in range(5):
        compute_grads(model_t, step)
        torch_opt.step()
    model_a = twin(model_t)
    ours = case.ours(param_groups(model_a, ({}, case.group1)), **case.kwargs)
    ours.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    for p in model_a.parameters():
        if ours.state[p]:  # torch.optim.SGD without momentum keeps no state at all
            # versions: torch's count, or 1 where torch keeps none (SGD/Muon: "at least one update")
            expected = 1.0 if case.theirs in (torch.optim.SGD, torch.optim.Muon) else 5.0
            assert ours.state[p]["step"].item() == expected
    ignore = ("step",) if case.theirs in (torch.optim.SGD, torch.optim.Muon) else ()
    lockstep(model_a, ours, model_t, torch_opt, steps=10, check_every=5, ignore=ignore)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("cls", "kwargs"), ALL_PRESETS, ids=PRESET_IDS)
def test_low_precision_params_keep_dtype(cls: type, kwargs: dict[str, Any], dtype: torch.dtype) -> None:
    model = make_model(dtype=dtype)
    opt = cls(param_groups(model), **kwargs)
    for step in range(3):
        compute_grads(model, step)
        opt.step(staleness=step)
    for p in model.parameters():
        assert p.dtype == dtype and torch.isfinite(p).all()
        for key, value in opt.state[p].items():
            expected = torch.float32 if key == "step" else dtype  # torch's rule: step is a float32 scalar
            assert value.dtype == expected, (key, value.dtype)


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.id)
def test_state_memory_not_above_torch(case: TorchCase) -> None:
    """Non-scalar state bytes equal torch's; the only addition is one scalar `step` where torch has none."""
    model_a = make_model(bias=case.bias, dtype=torch.float32)
    model_b = twin(model_a)
    ours = case.ours(param_groups(model_a, ({}, case.group1)), **case.kwargs)
    theirs = case.theirs(param_groups(model_b, ({}, case.group1)), **case.kwargs)
    for model, opt in ((model_a, ours), (model_b, theirs)):
        compute_grads(model, 0)
        opt.step()

    def tensor_bytes(opt: torch.optim.Optimizer) -> tuple[int, int]:
        big = scalars = 0
        for state in opt.state.values():
            for v in state.values():
                if v.dim() == 0:
                    scalars += 1
                else:
                    big += v.numel() * v.element_size()
        return big, scalars

    (ours_big, ours_scalars), (theirs_big, theirs_scalars) = tensor_bytes(ours), tensor_bytes(theirs)
    n_params = len(list(model_a.parameters()))
    assert ours_big == theirs_big
    assert ours_scalars == (theirs_scalars if theirs_scalars else n_params)


def test_every_state_value_is_a_tensor_and_updates_in_place() -> None:
    """Engines move state to shared memory by replacing tensors in place: the rule must never rebind them."""
    from lightning_async.optim import AsyncAdaptive

    model = make_model()
    opt = AsyncAdaptive(param_groups(model, ({"geometry": "muon"}, {"geometry": "adanorm"})), momentum_type="scaled",
                        momentum=0.5, normalization="inexact")
    opt.init_state()
    ids = {(id(p), k): v.data_ptr() for p in model.parameters() for k, v in opt.state[p].items()}
    for step in range(3):
        compute_grads(model, step)
        opt.step(staleness=step)
    assert {(id(p), k): v.data_ptr() for p in model.parameters() for k, v in opt.state[p].items()} == ids
    assert isinstance(opt, AsyncOptimizer)
