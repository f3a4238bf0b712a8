"""Speed SPEC parsing, worker clocks, blocks and block selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_async.sim.blocks import BlockSelector, make_blocks, parse_block_groups
from lightning_async.sim.speeds import SpeedProfile


def test_base_durations() -> None:
    assert SpeedProfile.parse("const:2").base_durations(3) == [2.0, 2.0, 2.0]
    assert SpeedProfile.parse("linear:1:3").base_durations(3) == [1.0, 2.0, 3.0]
    assert SpeedProfile.parse("linear:1:3").base_durations(1) == [1.0]
    assert SpeedProfile.parse("list:1,2").base_durations(3) == [1.0, 2.0, 1.0]
    assert SpeedProfile.parse("slow:1:5").base_durations(3) == [1.0, 1.0, 5.0]
    assert SpeedProfile.parse("exponential").base == ("const", (1.0,))


def test_noise_is_deterministic_and_mean_one() -> None:
    profile = SpeedProfile.parse("const:1+lognormal:0.5")
    a = profile.bind(2, torch.Generator().manual_seed(3))
    b = profile.bind(2, torch.Generator().manual_seed(3))
    da = [a.duration(i % 2) for i in range(5000)]
    assert da == [b.duration(i % 2) for i in range(5000)]
    assert sum(da) / len(da) == pytest.approx(1.0, abs=0.05)
    for spec in ("exponential", "uniform:0.5:1.5"):
        clock = SpeedProfile.parse(spec).bind(1, torch.Generator().manual_seed(0))
        d = [clock.duration(0) for _ in range(5000)]
        assert sum(d) / len(d) == pytest.approx(1.0, abs=0.05) and min(d) > 0


def test_straggler_episodes() -> None:
    clock = SpeedProfile.parse("const:1+straggler:0.1:10:4").bind(1, torch.Generator().manual_seed(0))
    d = [clock.duration(0) for _ in range(400)]
    assert set(d) == {1.0, 10.0}
    runs, n = [], 0
    for x in d + [1.0]:
        if x == 10.0:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert runs and all(r % 4 == 0 for r in runs)  # whole episodes of 4 steps (back-to-back ones merge)
    assert clock.straggling_steps == d.count(10.0)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "it is empty"),
        ("fast:2", "unknown part 'fast'"),
        ("linear:1", "takes 2 argument"),
        ("const:x", "non-numeric"),
        ("const:0", "durations must be > 0"),
        ("const:1+linear:1:2", "more than one base part"),
        ("lognormal:-1", "SIGMA must be >= 0"),
        ("uniform:2:1", "0 < LO <= HI"),
        ("straggler:2:10:5", "0 <= PROB <= 1"),
        ("straggler:0.1:10:2.5", "integer LENGTH"),
        ("slow:1.5:2", "N must be a non-negative integer"),
    ],
)
def test_bad_specs_name_the_spec_and_the_fix(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        SpeedProfile.parse(spec)
    assert "--speeds" in str(info.value) and "straggler:PROB:FACTOR:LENGTH" in str(info.value)


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))


def test_block_schemes() -> None:
    m = model()
    assert make_blocks(m, "all").members == ((0, 1, 2, 3),)
    assert make_blocks(m, "tensor").members == ((0,), (1,), (2,), (3,))
    layer = make_blocks(m, "layer")
    assert layer.members == ((0, 1), (2, 3)) and layer.names == ("0", "2")
    assert not layer.overlapping


def test_overlapping_groups() -> None:
    layout = make_blocks(model(), "0.weight,0.bias;0.bias,2.weight;2.weight,2.bias")
    assert layout.multiplicity == (1, 2, 2, 1)
    assert layout.touching == ((0, 1), (0, 1, 2), (1, 2))
    assert layout.overlapping
    assert parse_block_groups(" a , b ;; c ") == [["a", "b"], ["c"]]


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ("rows", "blocks must be one of"),
        ([["0.weight"], []], "a group is empty"),
        ([["0.weight", "0.weight"], ["0.bias", "2.weight", "2.bias"]], "names a parameter twice"),
        ([["0.weight", "0.bias", "2.weight", "2.bias"]] * 2, "two groups hold the same parameters"),
    ],
)
def test_bad_blocks(blocks: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_blocks(model(), blocks)  # type: ignore[arg-type]


def test_selector() -> None:
    g = torch.Generator().manual_seed(0)
    assert BlockSelector("all", 3, g).select(0, 5) == (0, 1, 2)
    cyc = BlockSelector("cyclic", 3, g)
    assert [cyc.select(1, s) for s in range(4)] == [(1,), (2,), (0,), (1,)]
    rnd = BlockSelector("random", 3, torch.Generator().manual_seed(0))
    counts = [0, 0, 0]
    for s in range(3000):
        counts[rnd.select(0, s)[0]] += 1
    assert min(counts) > 900
    with pytest.raises(ValueError, match="selection must be one of"):
        BlockSelector("some", 3, g)
