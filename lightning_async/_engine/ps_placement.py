"""Where blocks live and how ranks connect: block ownership, the per-pair process groups, an owner's optimizer."""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from lightning_async._engine.ps_common import _IDLE_TIMEOUT


def assign_blocks(sizes: Sequence[int], owners: Sequence[int]) -> dict[int, list[int]]:
    """Greedy size balancing: largest block first, to the owner with the fewest bytes so far (ties: lowest rank).

    Returns ``{owner rank: sorted block indices}`` (every owner present, possibly with no block).
    """
    load = {o: 0 for o in owners}
    owned: dict[int, list[int]] = {o: [] for o in owners}
    for block in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owner = min(owners, key=lambda o: (load[o], o))
        owned[owner].append(block)
        load[owner] += sizes[block]
    return {o: sorted(b) for o, b in owned.items()}


def pair_groups(
    rank: int, world_size: int, owners: Sequence[int], store: Any, namespace: str
) -> dict[tuple[int, int], Any]:
    """This rank's 2-rank gloo groups, one per (client, owner) direction it takes part in.

    Each group is made by its two ranks alone (a ``ProcessGroupGloo`` over its own prefix of ``store``), so a rank
    makes at most ``2 (N - 1)`` groups with one connection each, and no rank takes part in the others' set-up
    (``dist.new_group`` needs every rank to enter every group's creation: ``N (N - 1)`` calls on each rank). A
    group's creation waits for its peer, so every rank makes its groups in one global order, the pairs
    ``(min, max)`` in lexicographic order: the first unmade pair always has both its ranks at it, so the set-up
    cannot deadlock. A group per pair keeps a peer's failure to that pair (gloo tears a group down on error).

    Returns:
        ``{(client, owner): group}``; the group rank of each side is its order in the pair (lower rank first).
    """
    timeout = datetime.timedelta(seconds=_IDLE_TIMEOUT)  # every wait on a channel passes its own bound
    groups: dict[tuple[int, int], Any] = {}
    owner_set = set(owners)
    for peer in range(world_size):
        if peer == rank:
            continue
        low, high = min(rank, peer), max(rank, peer)
        for client, owner in ((low, high), (high, low)):
            if owner not in owner_set:
                continue
            prefix = dist.PrefixStore(f"{namespace.rstrip('/')}/pair/{client}-{owner}/", store)
            groups[(client, owner)] = dist.ProcessGroupGloo(prefix, int(rank == high), 2, timeout)
    return groups


def _optimizer_index(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[int]:
    """For each of ``params``, its index in ``optimizer.state_dict()`` (the order of the param groups)."""
    order: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            order.setdefault(id(p), len(order))
    missing = [i for i, p in enumerate(params) if id(p) not in order]
    if missing:
        raise ValueError(f"parameters {missing} are not in the optimizer's param groups")
    return [order[id(p)] for p in params]


def _restricted_optimizer(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], shadows: dict[int, torch.nn.Parameter]
) -> tuple[torch.optim.Optimizer, list[int]]:
    """A shallow copy of ``optimizer`` whose param groups hold only ``shadows`` (owned blocks) and whose state is
    its own. Returns it and, for each of its groups, the index of the user's group it mirrors."""
    block_of = {id(p): i for i, p in enumerate(params)}
    restricted = object.__new__(type(optimizer))
    # instance attributes that override a method are wrappers bound to the user's object (an LR scheduler patches
    # ``optimizer.step`` with one that calls the *user's* step through a weakref): copying them would make every
    # owner step the user's optimizer, i.e. the worker's live local parameters, instead of the owned blocks
    cls = type(optimizer)
    restricted.__dict__.update(
        {k: v for k, v in optimizer.__dict__.items() if not (callable(v) and callable(getattr(cls, k, None)))}
    )
    restricted.state = defaultdict(dict)
    groups, group_of = [], []
    for gi, group in enumerate(optimizer.param_groups):
        owned = [shadows[block_of[id(p)]] for p in group["params"] if block_of.get(id(p)) in shadows]
        if owned:
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": owned})
            group_of.append(gi)
    restricted.param_groups = groups
    return restricted, group_of
