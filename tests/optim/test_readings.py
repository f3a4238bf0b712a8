"""The readings beyond torch's rules, each checked against its formula written out by hand (the lockstep test then
holds the fast path to the reference): accumulator exponents, AdaGrad-Norm's step on Muon's direction, a
time-varying momentum, and fixed steps tied to the horizon or to the delay bound."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_async.optim import AsyncAdaptive
from lightning_async.optim.parts import newton_schulz
from lightning_async.optim.spec import RuleSpec


def _one_block(shape=(3, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64))
    grads = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
    return x, grads


def _run(x, grads, foreach, **kwargs):
    opt = AsyncAdaptive([x], foreach=foreach, **kwargs)
    out = []
    for grad in grads:
        x.grad = grad.clone()
        opt.step()
        out.append(x.detach().clone())
    return out


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("geometry", ["adagrad", "adanorm"])
@pytest.mark.parametrize("exponent", [0.25, 0.5, 1.0])
def test_accumulator_exponent(foreach, geometry, exponent):
    x, grads = _one_block()
    start = x.detach().clone()
    got = _run(x, grads, foreach, lr=0.1, geometry=geometry, exponent=exponent, varsigma=0.01)
    expected, acc = start, torch.zeros_like(start) if geometry == "adagrad" else torch.zeros(())
    for grad, after in zip(grads, got):
        acc = acc + (grad * grad if geometry == "adagrad" else grad.pow(2).sum())
        expected = expected - 0.1 * grad / (0.01 + acc) ** exponent
        torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_adanorm_step_on_muons_orthogonalised_direction(foreach):
    x, grads = _one_block()
    start = x.detach().clone()
    got = _run(x, grads, foreach, lr=0.05, geometry="muon", muon_scaling="adanorm", exponent=0.5, ns_dtype="param",
               momentum_type="none")
    spec = RuleSpec.from_group(AsyncAdaptive([torch.nn.Parameter(torch.zeros(3, 4))], geometry="muon",
                                             ns_dtype="param").param_groups[0])
    expected, acc = start, 0.0
    ratio = math.sqrt(max(1, 3 / 4))
    for grad, after in zip(grads, got):
        acc += float(grad.pow(2).sum())
        polar = newton_schulz(grad, spec, 1e-7, torch.float64)
        expected = expected - 0.05 * ratio * polar / math.sqrt(0.01 + acc)  # varsigma as adanorm's default
        torch.testing.assert_close(after, expected, rtol=1e-10, atol=1e-12)
    # the accumulator shrinks later steps: the third step is shorter than the first
    assert (got[2] - got[1]).norm() < (got[0] - start).norm()


@pytest.mark.parametrize("foreach", [False, True])
def test_increasing_momentum_schedule(foreach):
    x, grads = _one_block()
    start = x.detach().clone()
    got = _run(x, grads, foreach, lr=0.1, geometry="sgd", momentum_type="raw", momentum_form="heavy_ball",
               momentum=0.9, momentum_schedule="increasing")
    expected, buf = start, None
    for k, (grad, after) in enumerate(zip(grads, got)):
        beta_k = 0.9 * (k + 1) / (k + 2)
        buf = grad.clone() if buf is None else beta_k * buf + grad
        expected = expected - 0.1 * buf
        torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("rule", "extra", "factor"), [
    ("horizon", dict(horizon=400), 400 ** -0.5),
    ("delay", dict(delay_bound=3), 4 ** -0.5),
    ("delay", dict(delay_bound=0), 1.0),
])
def test_fixed_steps_tied_to_the_horizon_or_the_delay_bound(foreach, rule, extra, factor):
    x, grads = _one_block()
    start = x.detach().clone()
    got = _run(x, grads, foreach, lr=0.2, geometry="sgd", step_rule=rule, gamma=0.5, **extra)
    torch.testing.assert_close(got[-1], start - 0.2 * factor * sum(grads), rtol=1e-12, atol=1e-12)


def test_new_parts_reach_the_state_and_checkpoints():
    x = torch.nn.Parameter(torch.ones(2, 3))
    opt = AsyncAdaptive([x], geometry="muon", muon_scaling="adanorm", ns_dtype="param")
    x.grad = torch.ones(2, 3)
    opt.step()
    assert float(opt.state[x]["sum_norm_sq"]) == pytest.approx(6.0)
    state = opt.state_dict()
    fresh = AsyncAdaptive([torch.nn.Parameter(torch.ones(2, 3))], geometry="muon", ns_dtype="param")
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["muon_scaling"] == "adanorm"
    # an old checkpoint without the new keys loads with their defaults
    for key in ("exponent", "momentum_schedule", "muon_scaling", "horizon", "delay_bound"):
        del state["param_groups"][0][key]
    fresh.load_state_dict(state)
    group = fresh.param_groups[0]
    assert (group["exponent"], group["muon_scaling"], group["momentum_schedule"]) == (0.5, "none", "constant")
    assert group["horizon"] is None and group["delay_bound"] is None
