"""Blocks of parameters, their overlap, and which blocks a worker selects at each step.

A *block* (design vocabulary) is a set of parameter tensors; it is the unit of versions, of staleness and of
selection. :func:`make_blocks` builds them from a model:

* ``"all"``: one block holding every parameter;
* ``"tensor"``: one block per parameter tensor (the default of the design);
* ``"layer"``: one block per module that owns parameters (e.g. ``fc1.weight`` and ``fc1.bias`` together);
* user groups: a sequence of sequences of parameter names (``[["fc1.weight", "fc1.bias"], ["fc1.bias", ...]]``),
  or the same written as text, ``"fc1.weight,fc1.bias;fc1.bias,fc2.weight"``. Groups may overlap.

The rule for overlapping coordinates (blocks that share a tensor):

* the optimizer state of a shared tensor is one state (one accumulator per coordinate, invariant 1);
* an update of a block writes every tensor of the block, so it advances the version of every block that shares a
  tensor with it (its *touched* blocks), and the staleness bound is checked on each touched block;
* ``overlap="sum"``: each update applies the optimizer's full step to a shared tensor;
  ``overlap="average"``: the step on a tensor that lies in ``m`` blocks is divided by ``m`` (its multiplicity).

Selection per step (:class:`BlockSelector`): ``"all"`` (every block at every step), ``"cyclic"`` (worker ``p`` at its
``n``-th step takes block ``(p + n) mod m``) or ``"random"`` (uniform over the ``m`` blocks, from the run's
generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

SELECTIONS: tuple[str, ...] = ("all", "cyclic", "random")
OVERLAPS: tuple[str, ...] = ("sum", "average")
BLOCK_SCHEMES: tuple[str, ...] = ("all", "tensor", "layer")

BlocksSpec = str | Sequence[Sequence[str]]


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of one model.

    Attributes:
        param_names: names of the model's parameters, in ``model.named_parameters()`` order.
        names: a readable name per block.
        members: parameter indices of each block.
        multiplicity: number of blocks each parameter belongs to.
        touching: for each block, the blocks that share at least one parameter with it (itself included), sorted.
    """

    param_names: tuple[str, ...]
    names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    multiplicity: tuple[int, ...]
    touching: tuple[tuple[int, ...], ...]

    @property
    def num_blocks(self) -> int:
        return len(self.members)

    @property
    def overlapping(self) -> bool:
        """Whether some parameter lies in more than one block."""
        return max(self.multiplicity) > 1

    def as_dict(self) -> dict[str, object]:
        return {"names": list(self.names), "members": [[self.param_names[i] for i in m] for m in self.members]}


def parse_block_groups(text: str) -> list[list[str]]:
    """Parse ``"a.weight,a.bias;b.weight"`` into ``[["a.weight", "a.bias"], ["b.weight"]]``."""
    groups = [[n.strip() for n in g.split(",") if n.strip()] for g in text.split(";")]
    return [g for g in groups if g]


def make_blocks(model: nn.Module, blocks: BlocksSpec = "tensor") -> BlockLayout:
    """Build the blocks of ``model``.

    Args:
        model: the model whose trainable parameters are split.
        blocks: ``"all"``, ``"tensor"``, ``"layer"``, groups of parameter names, or groups written as text
            (``"n1,n2;n3"``).

    Raises:
        ValueError: if the spec is unknown, a name is not a trainable parameter, a group is empty or repeated,
            or a parameter is in no group.
    """
    names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    if not names:
        raise ValueError("model has no trainable parameters: the simulated engine has nothing to update.")
    if isinstance(blocks, str) and blocks not in BLOCK_SCHEMES:
        if ";" in blocks or "," in blocks or blocks in names:
            blocks = parse_block_groups(blocks)
        else:
            raise ValueError(
                f"blocks must be one of {BLOCK_SCHEMES} or groups of parameter names like 'a.weight,a.bias;b.weight', "
                f"got {blocks!r}. Parameter names: {list(names)}."
            )
    if blocks == "all":
        groups: list[list[str]] = [list(names)]
        block_names = ["all"]
    elif blocks == "tensor":
        groups = [[n] for n in names]
        block_names = list(names)
    elif blocks == "layer":
        by_owner: dict[str, list[str]] = {}
        for n in names:
            by_owner.setdefault(n.rsplit(".", 1)[0] if "." in n else "", []).append(n)
        groups = list(by_owner.values())
        block_names = [owner or "<root>" for owner in by_owner]
    else:
        groups = [list(g) for g in blocks]  # type: ignore[union-attr]
        block_names = [",".join(g) for g in groups]
    index = {n: i for i, n in enumerate(names)}
    members: list[tuple[int, ...]] = []
    for g in groups:
        if not g:
            raise ValueError(f"blocks: a group is empty in {blocks!r}; give at least one parameter name per group.")
        unknown = [n for n in g if n not in index]
        if unknown:
            raise ValueError(f"blocks: {unknown} are not trainable parameters of the model; names are {list(names)}.")
        if len(set(g)) != len(g):
            raise ValueError(f"blocks: group {g} names a parameter twice.")
        members.append(tuple(sorted(index[n] for n in g)))
    if len(set(members)) != len(members):
        raise ValueError(f"blocks: two groups hold the same parameters in {blocks!r}; merge them.")
    multiplicity = [0] * len(names)
    for m in members:
        for i in m:
            multiplicity[i] += 1
    missing = [names[i] for i, c in enumerate(multiplicity) if c == 0]
    if missing:
        raise ValueError(
            f"blocks: parameters {missing} are in no group and would never be updated; add them to a group "
            f"or use blocks='tensor'."
        )
    touching = tuple(
        tuple(j for j, other in enumerate(members) if set(other) & set(m)) for m in members
    )
    return BlockLayout(names, tuple(block_names), tuple(members), tuple(multiplicity), touching)


class BlockSelector:
    """Which blocks a worker updates at each of its steps.

    Args:
        selection: ``"all"``, ``"cyclic"`` or ``"random"``.
        num_blocks: number of blocks.
        generator: source of the ``"random"`` draws.
    """

    def __init__(self, selection: str, num_blocks: int, generator: torch.Generator) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
        self.selection = selection
        self.num_blocks = num_blocks
        self._gen = generator
        self._all = tuple(range(num_blocks))
        self._pool: list[int] = []

    def select(self, worker: int, step: int) -> tuple[int, ...]:
        """Blocks updated by ``worker`` at its ``step``-th computation (0-based)."""
        if self.selection == "all" or self.num_blocks == 1:
            return self._all
        if self.selection == "cyclic":
            return ((worker + step) % self.num_blocks,)
        if not self._pool:
            self._pool = torch.randint(self.num_blocks, (4096,), generator=self._gen).tolist()[::-1]
        return (self._pool.pop(),)
