"""Restoring a run's engine from a checkpoint: one collective sequence for the Lightning strategy and Accelerate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lightning_async._engine.base import Engine


def restore_engine_state(
    engine: Engine,
    optimizer: torch.optim.Optimizer,
    optimizer_state: dict[str, Any],
    engine_state: dict[str, Any] | None,
    *,
    is_creator: bool,
    barrier: Callable[[], None],
) -> None:
    """Put a checkpoint's parameters, optimizer state, versions and counters into a running engine.

    Call on every worker at the same point, after the model's parameters were loaded on every worker and while no
    worker holds a read. The sequence: every worker loads ``optimizer_state`` into its own optimizer, the engine
    adopts the parameters and that state (the shared-memory creator copies them into shared memory; each
    parameter-server owner takes its blocks), the creator restores versions, counters and the batch cursor from
    ``engine_state``, everyone meets at ``barrier``, and the others attach to the restored state.

    Args:
        engine: this worker's engine.
        optimizer: the user's optimizer over the engine's parameters (not the engine's wrapper).
        optimizer_state: ``optimizer.state_dict()`` as saved.
        engine_state: the ``"engine"`` part of :meth:`Engine.snapshot` as saved, or ``None`` (a checkpoint of
            another strategy: versions and counters start at 0).
        is_creator: ``True`` on exactly one worker (rank 0).
        barrier: meets every worker of the run.
    """
    optimizer.load_state_dict(optimizer_state)
    engine.adopt_optimizer_state(is_creator=is_creator)
    if is_creator and engine_state is not None:
        engine.load_snapshot(engine_state)
    barrier()
    if not is_creator:
        engine.attach_state()
