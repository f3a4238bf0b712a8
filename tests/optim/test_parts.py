"""Properties of single parts: staleness policy, step rule keyed on the block version, inexact normalization
tolerance, per-group geometries, the closure, and configuration from LightningCLI-style YAML."""

from __future__ import annotations

import pytest
import torch

from lightning_async.optim import AsyncAdaptive, AsyncMuon, AsyncSGD
from tests.optim.helpers import compute_grads, make_model, param_groups


def _sgd_step(param_value: float, grad: float, **kwargs) -> AsyncAdaptive:
    p = torch.tensor([param_value], dtype=torch.float64, requires_grad=True)
    return p, AsyncAdaptive([p], geometry="sgd", **kwargs), torch.tensor([grad], dtype=torch.float64)


@pytest.mark.parametrize(("policy", "power", "staleness", "expected_scale"), [
    ("ignore", 0.5, 7, 1.0),
    ("power", 0.5, 0, 1.0),
    ("power", 0.5, 3, 0.5),
    ("power", 1.0, 4, 0.2),
    ("power", 0.0, 9, 1.0),
])
def test_staleness_policy_scales_the_step(policy: str, power: float, staleness: int, expected_scale: float) -> None:
    p, opt, g = _sgd_step(1.0, 2.0, lr=0.1, staleness_policy=policy, staleness_power=power)
    p.grad = g
    opt.step(staleness=staleness)
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 0.1 * 2.0 * expected_scale], dtype=torch.float64),
                               rtol=1e-15, atol=0)


def test_staleness_per_group_and_decoupled_decay_not_damped() -> None:
    a = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = AsyncAdaptive([{"params": [a]}, {"params": [b]}], geometry="sgd", lr=0.1, staleness_policy="power",
                        staleness_power=1.0, weight_decay=0.5, decoupled_weight_decay=True)
    a.grad = b.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step(staleness=[0, 1])
    # decay uses lr_k (no staleness factor); the gradient step uses lr_k / (1 + s)
    assert a.item() == pytest.approx((1 - 0.05) - 0.1, rel=1e-15)
    assert b.item() == pytest.approx((1 - 0.05) - 0.05, rel=1e-15)


def test_diminishing_step_is_keyed_on_the_block_version() -> None:
    """lr0 / (k + 1) ** gamma with k the block's own count of applied updates, not a global step."""
    a = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = AsyncAdaptive([a, b], geometry="sgd", lr=1.0, step_rule="diminishing", gamma=0.5)
    one = torch.ones(1, dtype=torch.float64)
    moves_a, moves_b = [], []
    for i in range(4):
        before_a, before_b = a.item(), b.item()
        a.grad = one
        b.grad = one if i % 2 else None  # b is updated every other step only
        opt.step()
        moves_a.append(before_a - a.item())
        moves_b.append(before_b - b.item())
    assert moves_a == pytest.approx([1.0, 2**-0.5, 3**-0.5, 4**-0.5], rel=1e-15)
    assert moves_b == pytest.approx([0.0, 1.0, 0.0, 2**-0.5], rel=1e-15)
    assert opt.state[b]["step"].item() == 2


@pytest.mark.parametrize("estimate", ["stale", "running"])
@pytest.mark.parametrize(("kappa_lo", "kappa_hi"), [(0.9, 1.05), (0.5, 2.0), (1.0, 1.0)])
def test_inexact_normalization_respects_the_tolerance(estimate: str, kappa_lo: float, kappa_hi: float) -> None:
    model = make_model()
    opt = AsyncAdaptive(model.parameters(), lr=0.01, geometry="adagrad", normalization="inexact",
                        norm_estimate=estimate, kappa_lo=kappa_lo, kappa_hi=kappa_hi)
    ratios = []
    for step in range(15):
        compute_grads(model, step)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        for p, q in zip(model.parameters(), before):
            ratio = opt.state[p]["norm_ratio"].item()
            ratios.append(ratio)
            assert kappa_lo - 1e-12 <= ratio <= kappa_hi + 1e-12
            # the realised step length is lr / ratio (the direction has norm 1 before the estimate's error)
            assert (p - q).norm().item() == pytest.approx(0.01 / ratio, rel=1e-10)
    if kappa_lo < 1.0 or kappa_hi > 1.0:
        assert any(abs(r - 1.0) > 1e-6 for r in ratios), "the estimate never differed from the true norm"


def test_exact_normalization_gives_unit_steps() -> None:
    model = make_model()
    opt = AsyncAdaptive(model.parameters(), lr=0.03, geometry="rmsprop", momentum_type="raw", momentum=0.5,
                        normalization="exact")
    for step in range(5):
        compute_grads(model, step)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        for p, q in zip(model.parameters(), before):
            assert (p - q).norm().item() == pytest.approx(0.03, rel=1e-12)


def test_per_group_geometries_adagrad_and_muon() -> None:
    """One optimizer, AdaGrad on one group and Muon on another (the predecessor paper's mixed geometries)."""
    model = make_model()
    opt = AsyncAdaptive(param_groups(model, ({"geometry": "adagrad"}, {"geometry": "muon", "lr": 0.02,
                                                                         "momentum_type": "raw",
                                                                         "momentum_form": "ema", "momentum": 0.9})))
    for step in range(3):
        compute_grads(model, step)
        opt.step(staleness=[0, 2])
    w0, b0, w1, b1 = model.parameters()
    assert set(opt.state[w0]) == {"step", "sum"} and set(opt.state[b0]) == {"step", "sum"}
    assert set(opt.state[w1]) == {"step", "momentum_buffer"}
    # the vector of the Muon group falls back to Adam, whose first moment is torch's `exp_avg`
    assert set(opt.state[b1]) == {"step", "exp_avg", "exp_avg_sq"}


def test_muon_fallback_geometry_is_configurable() -> None:
    model = make_model()
    opt = AsyncMuon(model.parameters(), lr=0.02, muon_fallback="adagrad")
    compute_grads(model, 0)
    opt.step()
    assert set(opt.state[model[0].bias]) == {"step", "momentum_buffer", "sum"}


def test_step_runs_the_closure_with_grad_enabled() -> None:
    model = make_model()
    opt = AsyncSGD(model.parameters(), lr=0.1)

    def closure() -> torch.Tensor:
        assert torch.is_grad_enabled()
        return compute_grads(model, 0)

    loss = opt.step(closure, staleness=1)
    assert isinstance(loss, torch.Tensor) and opt.state[model[0].weight]["step"].item() == 1


def test_configurable_from_lightning_cli_yaml() -> None:
    """LightningCLI builds the YAML schema from the signatures: class_path + init_args must instantiate."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(torch.optim.Optimizer, "optimizer", skip={"params"}, instantiate=False)
    yaml = """
optimizer:
  class_path: lightning_async.optim.AsyncAdaptive
  init_args:
    lr: 0.05
    geometry: muon
    momentum: 0.9
    momentum_type: raw
    momentum_form: ema
    normalization: inexact
    kappa_lo: 0.8
    betas: [0.8, 0.99]
    staleness_policy: power
"""
    cfg = parser.parse_string(yaml)
    init = cfg.optimizer.init_args
    opt = AsyncAdaptive(make_model().parameters(), **dict(init))
    assert opt.defaults["geometry"] == "muon" and opt.defaults["betas"] == (0.8, 0.99)
    with pytest.raises(Exception, match="geometry"):
        parser.parse_string(yaml.replace("geometry: muon", "geometry: shampoo"))
