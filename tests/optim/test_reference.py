"""The fast ``_foreach`` path equals the literal reference, in lockstep, for every combination of parts, with and
without staleness (float64, 1e-12 normwise relative, params and every state tensor)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_async.optim import AsyncAdaptive, apply_rule, reference_update
from tests.optim.cases import COMBINATIONS, combination_id
from tests.optim.helpers import compute_grads, lockstep, make_model, param_groups, twin

STALENESS_SCRIPT = [0, 3, 1, 0, 2, 5, 0, 1]


def _staleness(step: int) -> list[int]:
    """A scripted staleness per param group (two groups, different values, zeros included)."""
    return [STALENESS_SCRIPT[step % 8], STALENESS_SCRIPT[(step + 3) % 8]]


@pytest.mark.parametrize("config", COMBINATIONS, ids=combination_id)
def test_fast_matches_reference(config: dict[str, Any]) -> None:
    model_a = make_model()
    model_b = twin(model_a)
    group1 = {"lr": config["lr"] / 2}
    fast = AsyncAdaptive(param_groups(model_a, ({}, group1)), foreach=True, **config)
    ref = AsyncAdaptive(param_groups(model_b, ({}, group1)), foreach=False, **config)
    lockstep(model_a, fast, model_b, ref, steps=12, staleness=_staleness, check_every=4)


def test_combination_table_covers_every_part() -> None:
    """Guard against a table edit silently dropping a part value."""
    seen: dict[str, set] = {}
    for c in COMBINATIONS:
        for key in ("geometry", "momentum_type", "momentum_form", "nesterov", "normalization", "staleness_policy",
                    "step_rule", "decoupled_weight_decay", "amsgrad", "centered", "maximize", "norm_estimate",
                    "exponent", "muon_scaling", "momentum_schedule"):
            seen.setdefault(key, set()).add(c.get(key))
    assert seen["geometry"] == {"sgd", "adagrad", "adanorm", "rmsprop", "adam", "muon"}
    assert seen["momentum_type"] == {"none", "raw", "scaled"}
    assert seen["momentum_form"] >= {"heavy_ball", "ema"}
    assert seen["normalization"] == {"none", "exact", "inexact"}
    assert seen["staleness_policy"] == {"ignore", "power"}
    for key in ("nesterov", "decoupled_weight_decay", "amsgrad", "centered", "maximize"):
        assert True in seen[key], key
    assert seen["step_rule"] >= {"diminishing", "horizon", "delay"} and seen["norm_estimate"] >= {"running"}
    assert seen["exponent"] >= {0.3, 0.8} and seen["muon_scaling"] >= {"adanorm"}
    assert seen["momentum_schedule"] >= {"increasing"}
    muon_readings = {(c.get("muon_scaling"), c["momentum_type"]) for c in COMBINATIONS if c["geometry"] == "muon"}
    assert ("adanorm", "scaled") in muon_readings and ("adanorm", "raw") in muon_readings


def test_apply_rule_on_blocks_outside_an_optimizer() -> None:
    """The engines' entry point: plain lists and state dicts, no optimizer object, same result as the class."""
    model_a = make_model()
    model_b = twin(model_a)
    opt = AsyncAdaptive(model_a.parameters(), lr=0.05, geometry="adam", momentum_type="raw", momentum_form="ema",
                        staleness_policy="power")
    hparams = dict(opt.param_groups[0])
    params_b = list(model_b.parameters())
    states: list[dict[str, torch.Tensor]] = [{} for _ in params_b]
    for step in range(5):
        compute_grads(model_a, step)
        compute_grads(model_b, step)
        opt.step(staleness=step)
        grads = [p.grad.clone() for p in params_b]
        apply_rule(params_b, [p.grad for p in params_b], states, hparams, staleness=step)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, params_b)), "grads must not be modified"
    for pa, pb, st in zip(model_a.parameters(), params_b, states):
        assert torch.equal(pa, pb)
        assert opt.state[pa].keys() == st.keys()
        assert all(torch.equal(opt.state[pa][k], st[k]) for k in st)


def test_reference_update_single_block() -> None:
    """The reference on one block by hand: AdaGrad in the authors' convention, w = sqrt(varsigma + sum g^2)."""
    param = torch.tensor([1.0, -2.0], dtype=torch.float64)
    hparams = dict(AsyncAdaptive([torch.zeros(1)], lr=0.5, geometry="adagrad", varsigma=0.25).param_groups[0])
    state: dict[str, torch.Tensor] = {}
    g1 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    g2 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    reference_update(param, g1, state, hparams)
    reference_update(param, g2, state, hparams)
    w1 = torch.sqrt(0.25 + g1**2)
    w2 = torch.sqrt(0.25 + g1**2 + g2**2)
    expected = torch.tensor([1.0, -2.0], dtype=torch.float64) - 0.5 * g1 / w1 - 0.5 * g2 / w2
    torch.testing.assert_close(param, expected, rtol=1e-15, atol=0)
    assert state["step"].item() == 2
    torch.testing.assert_close(state["sum"], g1**2 + g2**2, rtol=0, atol=0)
