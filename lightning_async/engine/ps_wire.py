"""Wire format of the ``parameter_server`` engine: raw tensors behind a fixed int64 header, nothing pickled.

A message on one channel (a dedicated 2-rank gloo group, used in one direction only: client -> owner requests,
owner -> client responses) is up to four point-to-point sends, always in this order:

1. ``prelude``: ``int64[PRELUDE]`` = ``MAGIC, kind, worker, seq, n_rows, meta_nbytes, payload_nbytes, status``
   followed by kind-specific integers (``samples``, flags, the sender's progress counters, ...);
2. ``rows`` (if ``n_rows``): ``int64[n_rows, ROW]``, one row per block: ``block, version, dtype code, numel,
   byte offset in the payload, ndim, dims...``;
3. ``meta`` (if ``meta_nbytes``): UTF-8 JSON, only for control messages (snapshot, load, telemetry, errors);
4. ``payload`` (if ``payload_nbytes``): the blocks' raw bytes (``uint8``), each block 16-byte aligned.

The receiver validates the prelude (magic, kind, sizes within limits) before it allocates anything, then
receives exactly the announced sizes; a prelude it cannot trust makes the channel unusable (it cannot resynchronise)
and is treated like a failure of the peer. Payload bytes are reinterpreted with ``Tensor.view(dtype)`` after the
row's dtype code, numel and shape have been checked against the owner's schema. JSON is parsed with ``json.loads``
(data only, never code). No message is ever unpickled.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

MAGIC = 0x4C41505331  # "LAPS1"
PRELUDE = 16
ROW = 14
MAX_DIMS = ROW - 6
# prelude slots
P_MAGIC, P_KIND, P_WORKER, P_SEQ, P_ROWS, P_META, P_PAYLOAD, P_STATUS = range(8)
P_SAMPLES, P_FLAGS, P_GRADIENTS, P_WAIT_US, P_BUSY_US, P_VERSION, P_EXTRA = range(8, 15)
# row slots
R_BLOCK, R_VERSION, R_DTYPE, R_NUMEL, R_OFFSET, R_NDIM, R_DIMS = range(7)

# request kinds
READ, PUSH, BYE, SNAPSHOT, LOAD, TELEMETRY, RESPONSE, CLOSE = 1, 2, 3, 4, 5, 6, 7, 8
KINDS = (READ, PUSH, BYE, SNAPSHOT, LOAD, TELEMETRY, RESPONSE, CLOSE)
# READ modes (in P_FLAGS)
READ_WAIT, READ_TRY, REFRESH, RELEASE_REFRESH, RELEASE = 0, 1, 2, 3, 4
# PUSH flags (bits)
F_WANT_READ, F_MUST_APPLY, F_NONFINITE = 1, 2, 4
# response status
OK, ERROR = 0, 1

MAX_META = 1 << 24

_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
)
DTYPE_CODE = {d: i + 1 for i, d in enumerate(_DTYPES)}
CODE_DTYPE = {i + 1: d for i, d in enumerate(_DTYPES)}


class ChannelError(RuntimeError):
    """A channel failed: the peer closed it (died), did not answer in time (hung), or sent garbage."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class Message:
    """One decoded message. ``blocks`` are views into ``payload`` (row order)."""

    prelude: torch.Tensor
    rows: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    payload: torch.Tensor | None = None

    def __getitem__(self, slot: int) -> int:
        return int(self.prelude[slot])

    def block_bytes(self, i: int) -> torch.Tensor:
        """The raw bytes of row ``i`` (validated offset and size)."""
        assert self.payload is not None
        row = self.rows[i]
        dtype = CODE_DTYPE[int(row[R_DTYPE])]
        nbytes = int(row[R_NUMEL]) * _itemsize(dtype)
        start = int(row[R_OFFSET])
        return self.payload[start : start + nbytes]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _align(n: int) -> int:
    return (n + 15) // 16 * 16


def pack(
    kind: int,
    worker: int,
    seq: int,
    *,
    blocks: Sequence[tuple[int, int, torch.Tensor]] = (),
    meta: dict[str, Any] | None = None,
    status: int = OK,
    ints: dict[int, int] | None = None,
) -> list[torch.Tensor]:
    """Encode a message as the list of contiguous CPU tensors to send, in order.

    Args:
        blocks: ``(block index, version, tensor)`` triples; tensors are copied into one payload buffer.
        meta: JSON-serialisable control data.
        ints: extra prelude slots (``{P_SAMPLES: 8, ...}``).
    """
    prelude = torch.zeros(PRELUDE, dtype=torch.int64)
    rows = torch.zeros(len(blocks), ROW, dtype=torch.int64)
    offset = 0
    for i, (block, version, t) in enumerate(blocks):
        if t.dim() > MAX_DIMS:
            raise ValueError(f"block {block} has {t.dim()} dimensions; the wire format carries at most {MAX_DIMS}")
        rows[i, R_BLOCK], rows[i, R_VERSION] = block, version
        rows[i, R_DTYPE], rows[i, R_NUMEL] = DTYPE_CODE[t.dtype], t.numel()
        rows[i, R_OFFSET], rows[i, R_NDIM] = offset, t.dim()
        for d, size in enumerate(t.shape):
            rows[i, R_DIMS + d] = size
        offset += _align(t.numel() * t.element_size())
    payload = torch.empty(offset, dtype=torch.uint8)
    for i, (_, _, t) in enumerate(blocks):
        start, n = int(rows[i, R_OFFSET]), t.numel() * t.element_size()
        if n:
            payload[start : start + n].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
    meta_bytes = json.dumps(meta).encode() if meta else b""
    prelude[P_MAGIC], prelude[P_KIND], prelude[P_WORKER], prelude[P_SEQ] = MAGIC, kind, worker, seq
    prelude[P_ROWS], prelude[P_META], prelude[P_PAYLOAD], prelude[P_STATUS] = (
        len(blocks), len(meta_bytes), offset, status,
    )
    for slot, value in (ints or {}).items():
        prelude[slot] = int(value)
    parts = [prelude]
    if len(blocks):
        parts.append(rows)
    if meta_bytes:
        parts.append(torch.frombuffer(bytearray(meta_bytes), dtype=torch.uint8))
    if offset:
        parts.append(payload)
    return parts


class Channel:
    """One direction of one (client, owner) pair: a 2-rank gloo group, used by one thread on each side.

    Every wait is bounded (``Work.wait(timeout)``); any error or timeout marks the channel broken for good
    (gloo tears a pair down after a timeout), and raises :class:`ChannelError`.
    """

    def __init__(self, group: Any, peer: int, max_payload: int) -> None:
        self.group = group
        self.peer = peer
        self.max_payload = max_payload
        self.broken: str | None = None

    def _check(self) -> None:
        if self.broken is not None:
            raise ChannelError(f"channel to rank {self.peer} is broken: {self.broken}")

    def _fail(self, what: str, error: BaseException) -> ChannelError:
        text = str(error)
        timed_out = "Timed out" in text or "timeout" in text.lower()
        self.broken = f"{what}: {text.splitlines()[0] if text else type(error).__name__}"
        return ChannelError(
            f"rank {self.peer} {'did not answer in time' if timed_out else 'closed the connection'} ({what})",
            timed_out=timed_out,
        )

    def post(self, parts: list[torch.Tensor]) -> list[Any]:
        """Start sending a packed message; returns the works (keep them, and ``parts``, until done)."""
        self._check()
        try:
            return [dist.isend(p, dst=self.peer, group=self.group) for p in parts]
        except RuntimeError as e:
            raise self._fail("send", e) from e

    def complete(self, works: list[Any], timeout: float) -> None:
        for w in works:
            self._wait(w, timeout, "send")

    def send(self, parts: list[torch.Tensor], timeout: float) -> None:
        self.complete(self.post(parts), timeout)

    def _wait(self, work: Any, timeout: float, what: str) -> None:
        try:
            work.wait(timeout=datetime.timedelta(seconds=max(timeout, 1e-3)))
        except RuntimeError as e:
            raise self._fail(what, e) from e

    def post_prelude(self) -> tuple[torch.Tensor, Any]:
        self._check()
        buf = torch.empty(PRELUDE, dtype=torch.int64)
        try:
            return buf, dist.irecv(buf, src=self.peer, group=self.group)
        except RuntimeError as e:
            raise self._fail("receive", e) from e

    def receive(self, timeout: float, posted: tuple[torch.Tensor, Any] | None = None) -> Message:
        """Receive one message (waiting at most ``timeout`` for its start and again for its body)."""
        prelude, work = posted if posted is not None else self.post_prelude()
        self._wait(work, timeout, "receive")
        if int(prelude[P_MAGIC]) != MAGIC or int(prelude[P_KIND]) not in KINDS:
            self.broken = "bad prelude"
            raise ChannelError(f"rank {self.peer} sent a message with a bad header; the channel is closed")
        n_rows, n_meta, n_payload = int(prelude[P_ROWS]), int(prelude[P_META]), int(prelude[P_PAYLOAD])
        if not (0 <= n_rows <= 1 << 20 and 0 <= n_meta <= MAX_META and 0 <= n_payload <= self.max_payload):
            self.broken = "sizes out of range"
            raise ChannelError(
                f"rank {self.peer} announced sizes out of range (rows {n_rows}, meta {n_meta}, payload {n_payload} "
                f"bytes, limit {self.max_payload}); the channel is closed"
            )
        bufs = []
        rows = torch.empty(n_rows, ROW, dtype=torch.int64)
        meta = torch.empty(n_meta, dtype=torch.uint8)
        payload = torch.empty(n_payload, dtype=torch.uint8)
        works = []
        try:
            for buf, n in ((rows, n_rows), (meta, n_meta), (payload, n_payload)):
                if n:
                    works.append(dist.irecv(buf, src=self.peer, group=self.group))
                    bufs.append(buf)
        except RuntimeError as e:
            raise self._fail("receive", e) from e
        for w in works:
            self._wait(w, timeout, "receive")
        decoded: dict[str, Any] = {}
        if n_meta:
            try:
                decoded = json.loads(bytes(meta.numpy()).decode())
            except (ValueError, UnicodeDecodeError):
                decoded = {"_invalid": True}
            if not isinstance(decoded, dict):
                decoded = {"_invalid": True}
        return Message(prelude, rows, decoded, payload if n_payload else None)


def row_matches(row: torch.Tensor, reference: torch.Tensor) -> str | None:
    """``None`` if the row describes a tensor of ``reference``'s dtype and shape, else the reason."""
    code = int(row[R_DTYPE])
    if code not in CODE_DTYPE or CODE_DTYPE[code] != reference.dtype:
        return f"dtype {CODE_DTYPE.get(code, code)} != {reference.dtype}"
    ndim = int(row[R_NDIM])
    shape = tuple(int(v) for v in row[R_DIMS : R_DIMS + max(0, min(ndim, MAX_DIMS))])
    if ndim != reference.dim() or shape != tuple(reference.shape) or int(row[R_NUMEL]) != reference.numel():
        return f"shape {shape} != {tuple(reference.shape)}"
    return None


def decode_block(message: Message, i: int, reference: torch.Tensor) -> torch.Tensor:
    """Row ``i``'s tensor (a view of the payload) after :func:`row_matches` accepted it."""
    raw = message.block_bytes(i)
    return raw.view(reference.dtype).view(reference.shape)


def payload_fits(message: Message, i: int) -> bool:
    """Whether row ``i``'s byte range lies inside the payload."""
    row = message.rows[i]
    code = int(row[R_DTYPE])
    if code not in CODE_DTYPE or message.payload is None:
        return False
    start, nbytes = int(row[R_OFFSET]), int(row[R_NUMEL]) * _itemsize(CODE_DTYPE[code])
    return start >= 0 and start % 16 == 0 and nbytes >= 0 and start + nbytes <= message.payload.numel()
