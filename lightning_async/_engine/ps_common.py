"""Constants and small helpers shared by the parameter-server engine's modules: counters, statuses, verdict
codes, error classes on the wire.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from lightning_async._engine import ps_wire as wire
from lightning_async.errors import AsyncTrainingError, NonFiniteGradientError, WorkerDiedError, WorkerTimeoutError

#: counters kept by each owner, per worker
OWNER_COUNTERS: tuple[str, ...] = (
    "received", "applied", "rejected_stale", "rejected_nonfinite", "rejected_schema", "rejected_duplicate",
    "rejected_version", "deferred", "samples", "lost", "overlapped",
)
REJECTIONS: tuple[str, ...] = tuple(c for c in OWNER_COUNTERS if c.startswith("rejected_"))
#: values each worker reports with its requests (progress, for telemetry)
_REPORTED = ("gradients", "wait_seconds", "busy_seconds", "started", "heartbeat")
_UNBOUNDED_BINS = 64
_RUNNING, _FINISHED, _EVICTED, _DEAD = 1, 2, 3, 4
_STATUS = {0: "not started", _RUNNING: "running", _FINISHED: "finished", _EVICTED: "evicted", _DEAD: "dead"}
_VERDICTS = ("applied", "deferred", "rejected_stale", "rejected_nonfinite", "rejected_schema", "rejected_duplicate",
             "rejected_version")
_V_CODE = {v: i + 1 for i, v in enumerate(_VERDICTS)}
_CODE_V = {i + 1: v for i, v in enumerate(_VERDICTS)}
_ERRORS = {cls.__name__: cls for cls in (WorkerDiedError, WorkerTimeoutError, NonFiniteGradientError,
                                         AsyncTrainingError)}
ON_WORKER_FAILURE = ("stop", "continue")
_IDLE_TIMEOUT = 7 * 24 * 3600.0


def _versions(reads: list[int]) -> str:
    return str(reads[0]) if len(reads) == 1 else str(reads)


def _error_reply(error: BaseException) -> list[torch.Tensor]:
    return wire.pack(wire.RESPONSE, -1, 0, status=wire.ERROR,
                     meta={"error": type(error).__name__, "message": str(error)})


def _decode_any(message: wire.Message, i: int) -> torch.Tensor:
    row = message.rows[i]
    dtype = wire.CODE_DTYPE[int(row[wire.R_DTYPE])]
    ndim = int(row[wire.R_NDIM])
    shape = tuple(int(v) for v in row[wire.R_DIMS : wire.R_DIMS + ndim])
    if not wire.payload_fits(message, i) or math.prod(shape) != int(row[wire.R_NUMEL]):
        raise AsyncTrainingError("malformed snapshot block")
    return message.block_bytes(i).view(dtype).view(shape).clone()


def _padded(n: int) -> int:
    return (n + 15) // 16 * 16


class GuardedStore:
    """The run's store, whose network errors name their cause: the store lives in rank 0's process, so a lost
    connection means rank 0 died (or its node went down), not a fault of the calling rank."""

    def __init__(self, store: Any, worker: int) -> None:
        self._store = store
        self._worker = worker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except (dist.DistNetworkError, ConnectionError) as error:
                raise WorkerDiedError(
                    f"rank 0, which hosts the run's store, cannot be reached from rank {self._worker} "
                    f"({str(error).splitlines()[0]}): it died or its node is down, so the run stops. Resume with "
                    "Trainer.fit(..., ckpt_path='last')."
                ) from error

        return call
