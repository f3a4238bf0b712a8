"""Creating a run's engine on every process: one sequence for the Lightning strategy and the Accelerate integration."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from lightning_async._engine.base import Engine
from lightning_async._engine.parameter_server import ParameterServerEngine
from lightning_async._engine.shared_memory import SharedMemoryEngine
from lightning_async._engine.shm import remove_stale_runs, run_directory

ENGINES = ("shared_memory", "parameter_server")


def run_token(rank: int, *, clean_shared_memory: bool) -> int:
    """A random 62-bit token naming this run (its ``/dev/shm`` directory, its store namespace), drawn by rank 0 and
    broadcast to every rank. Collective when torch.distributed is initialized. ``clean_shared_memory``: rank 0 first
    removes the directories of earlier runs whose creating process is gone."""
    token = torch.zeros(1, dtype=torch.int64)
    if rank == 0:
        if clean_shared_memory:
            remove_stale_runs()
        token[0] = secrets.randbits(62)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(token, src=0)
    return int(token[0])


def create_engine(
    kind: str,
    token: int,
    *,
    worker: int,
    num_workers: int,
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    max_staleness: int | None,
    bound_policy: str,
    timeout: float,
    max_consecutive_nonfinite: int,
    barrier: Callable[[], None],
    **options: Any,
) -> Engine:
    """Create the engine on this process; every process of the run calls it at the same point.

    ``shared_memory``: worker 0 creates the run's directory, everyone meets at ``barrier``, the others attach
    (``options``: ``lock_free``). ``parameter_server``: built collectively (it makes its process groups in the same
    order on every rank; ``options``: ``overlap``, ``on_worker_failure``, ``owner_ranks``), in the store namespace
    ``parameter_server_namespace(token)``.
    """
    common: dict[str, Any] = dict(
        worker=worker, num_workers=num_workers, params=params, optimizer=optimizer, max_staleness=max_staleness,
        bound_policy=bound_policy, timeout=timeout, max_consecutive_nonfinite=max_consecutive_nonfinite,
    )
    if kind == "parameter_server":
        return ParameterServerEngine(**common, namespace=parameter_server_namespace(token), **options)
    if kind != "shared_memory":
        raise ValueError(f"engine must be one of {ENGINES}, got {kind!r}.")
    kwargs = dict(common, directory=run_directory(token), **options)
    engine = SharedMemoryEngine(create=True, **kwargs) if worker == 0 else None
    barrier()  # the directory exists before anyone attaches
    if engine is None:
        engine = SharedMemoryEngine(create=False, **kwargs)
        engine.attach_state()
    return engine


def parameter_server_namespace(token: int) -> str:
    """The store prefix of a parameter-server run's keys."""
    return f"lightning_async/ps/{token:016x}"
