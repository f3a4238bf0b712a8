"""Collectives among the ranks still alive, over the c10d store: what the strategy uses once a worker may have died.

With ``on_worker_failure="continue"`` a pure worker (a rank that owns no blocks) can die while the others train on.
Every later collective of the default process group would then fail or hang on the dead rank, and Lightning calls
several at epoch ends (metric reduction, checkpoint barriers and broadcasts, the stop decision). This module
replaces them: each collective is a numbered exchange of keys in the store that ``init_process_group`` made (the
one the engine already uses), in which a rank that the owners have declared gone (its connection closed, or it
was evicted as hung) is skipped instead of awaited. Every wait is bounded by ``timeout`` and names the ranks it
waited for.

Every rank calls the same collectives in the same order (as with torch.distributed), so the ``n``-th call of each
rank meets the ``n``-th call of the others. Tensors travel as raw bytes behind a JSON header (dtype, shape);
``broadcast`` sends plain data (what Lightning broadcasts: paths, numbers, flags) as JSON, with tuples, paths and
tensors tagged. Nothing received is ever unpickled: a value in the store may have been written by anyone who can
reach it, and unpickling runs code.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import torch
from torch.distributed import ReduceOp

from lightning_async.errors import WorkerTimeoutError

_POLL_SECONDS = 0.005


def _encode(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().to("cpu").contiguous()
    header = json.dumps({"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}).encode()
    return len(header).to_bytes(4, "little") + header + t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _decode(data: bytes) -> torch.Tensor:
    n = int.from_bytes(data[:4], "little")
    header = json.loads(data[4 : 4 + n].decode())
    dtype = getattr(torch, header["dtype"])
    raw = torch.frombuffer(bytearray(data[4 + n :]), dtype=torch.uint8) if len(data) > 4 + n else torch.empty(
        0, dtype=torch.uint8
    )
    return raw.view(dtype).reshape(header["shape"])


_TAG = "__lightning_async__"


def _to_plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return {_TAG: "tuple", "items": [_to_plain(v) for v in obj]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k != _TAG for k in obj):
            return {k: _to_plain(v) for k, v in obj.items()}
        return {_TAG: "dict", "items": [[_to_plain(k), _to_plain(v)] for k, v in obj.items()]}
    if isinstance(obj, PurePath):
        return {_TAG: "path", "value": str(obj)}
    if isinstance(obj, torch.Tensor):
        return {_TAG: "tensor", "value": base64.b64encode(_encode(obj)).decode()}
    raise TypeError(
        f"cannot broadcast a {type(obj).__name__} among the live ranks: only plain data travels (None, bool, int, "
        "float, str, lists, tuples, dicts, paths, tensors), because nothing received is unpickled. Broadcast the "
        "plain values it is made of."
    )


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_from_plain(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj.get(_TAG)
    if tag is None:
        return {k: _from_plain(v) for k, v in obj.items()}
    if tag == "tuple":
        return tuple(_from_plain(v) for v in obj["items"])
    if tag == "dict":
        return {_from_plain(k): _from_plain(v) for k, v in obj["items"]}
    if tag == "path":
        return Path(obj["value"])
    if tag == "tensor":
        return _decode(base64.b64decode(obj["value"]))
    raise ValueError(f"unknown tag {tag!r} in a broadcast value")


def _pack_object(obj: Any) -> bytes:
    return json.dumps(_to_plain(obj), allow_nan=True).encode()


def _unpack_object(data: bytes) -> Any:
    return _from_plain(json.loads(data.decode()))


def _op_name(reduce_op: Any) -> str:
    if isinstance(reduce_op, str):
        name = reduce_op.lower()
    else:
        name = {ReduceOp.SUM: "sum", ReduceOp.MAX: "max", ReduceOp.MIN: "min", ReduceOp.AVG: "mean"}.get(
            reduce_op, ""
        )
    name = {"avg": "mean"}.get(name, name)
    if name not in ("sum", "mean", "max", "min"):
        raise ValueError(f"reduce_op {reduce_op!r} is not supported among live ranks; use sum, mean, max or min.")
    return name


class LiveCollectives:
    """Barrier, broadcast, reduce and gather among the ranks that are not gone.

    Args:
        store: a store shared by every rank (a ``PrefixStore`` unique to this run).
        rank: this rank.
        world_size: the number of ranks at start.
        timeout: seconds one collective may wait for a live rank.
        is_gone: whether a rank is known dead or evicted (it is then skipped, not awaited).
    """

    def __init__(
        self, store: Any, rank: int, world_size: int, timeout: float, is_gone: Callable[[int], bool]
    ) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.timeout = float(timeout)
        self.is_gone = is_gone
        self._calls = 0
        self._published: list[str] = []  # this rank's keys that others may still read

    def _exchange(self, payload: bytes | None, what: str, sources: list[int] | None = None) -> dict[int, bytes]:
        """Publish ``payload`` (unless ``None``) as this call's contribution; collect those of ``sources`` (default:
        every rank) that are not gone."""
        self._calls += 1
        key = f"c{self._calls}"
        if payload is not None:
            self.store.set(f"{key}/{self.rank}", payload)
        pending = set(range(self.world_size) if sources is None else sources)
        received: dict[int, bytes] = {}
        deadline = time.monotonic() + self.timeout
        while True:
            for r in sorted(pending):
                if self.store.check([f"{key}/{r}"]):
                    received[r] = bytes(self.store.get(f"{key}/{r}"))
                    pending.discard(r)
                elif self.is_gone(r):
                    pending.discard(r)
            if not pending:
                if sources is None and payload is not None:
                    # every live rank published this call, so each is done reading the earlier ones: drop ours
                    for earlier in self._published:
                        self.store.delete_key(earlier)
                    self._published = []
                if payload is not None:
                    self._published.append(f"{key}/{self.rank}")
                return received
            if time.monotonic() > deadline:
                raise WorkerTimeoutError(
                    f"rank {self.rank} waited {self.timeout:.1f}s for rank(s) {sorted(pending)} at {what} (collective "
                    f"{self._calls} among the live ranks); they are neither there nor known gone."
                )
            time.sleep(_POLL_SECONDS)

    def barrier(self, name: str | None = None) -> None:
        self._exchange(b"", f"barrier {name or ''}".strip())

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        payload = _pack_object(obj) if self.rank == src else None
        received = self._exchange(payload, f"broadcast from rank {src}", sources=[src])
        if src not in received:
            raise WorkerTimeoutError(f"rank {src} is gone: it cannot broadcast to rank {self.rank}.")
        return obj if self.rank == src else _unpack_object(received[src])

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The tensors of the live ranks, in rank order (shapes may differ)."""
        received = self._exchange(_encode(tensor), "all_gather")
        return [_decode(received[r]).to(tensor.device) for r in sorted(received)]

    def gather_tensors(self, tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
        """``dist_sync_fn`` for torchmetrics: as :meth:`all_gather` (``group`` is ignored: the live ranks)."""
        del group
        return self.all_gather(tensor)

    def reduce(self, tensor: torch.Tensor, reduce_op: Any = "mean") -> torch.Tensor:
        op = _op_name(reduce_op)
        stacked = torch.stack([t.to(torch.float64 if op == "mean" else t.dtype) for t in self.all_gather(tensor)])
        if op == "sum":
            out = stacked.sum(0)
        elif op == "mean":
            out = stacked.mean(0)
        elif op == "max":
            out = stacked.amax(0)
        else:
            out = stacked.amin(0)
        return out.to(tensor.dtype)

    def all_true(self, decision: bool) -> bool:
        """Whether ``decision`` holds on every live rank."""
        received = self._exchange(b"1" if decision else b"0", "a boolean decision")
        return all(v == b"1" for v in received.values())

    def any_true(self, decision: bool) -> bool:
        received = self._exchange(b"1" if decision else b"0", "a boolean decision")
        return any(v == b"1" for v in received.values())


__all__ = ["LiveCollectives"]
