"""Wire format of the ``parameter_server`` engine: raw tensors behind a fixed int64 header, nothing pickled.

A message on one channel (a dedicated 2-rank gloo group, used in one direction only: client -> owner requests,
owner -> client responses) is one contiguous byte *frame*, made of, in this order:

1. ``prelude``: ``int64[PRELUDE]`` = ``MAGIC, kind, worker, seq, n_rows, meta_nbytes, payload_nbytes, status``
   followed by kind-specific integers (``samples``, flags, the sender's progress counters, ...);
2. ``rows`` (if ``n_rows``): ``int64[n_rows, ROW]``, one row per block: ``block, version, dtype code, numel,
   byte offset in the payload, ndim, dims...``;
3. ``meta`` (if ``meta_nbytes``): UTF-8 JSON, only for control messages (snapshot, load, telemetry, errors),
   zero-padded to 16 bytes;
4. ``payload`` (if ``payload_nbytes``): the blocks' raw bytes (``uint8``), each block 16-byte aligned.

A frame that fits in the channel's ``inline`` size (any gradient push or parameter reply of the model: both sides
derive it from the same schema) is one point-to-point send, received into a buffer the channel keeps; a larger one
(snapshots) is sent as its prelude, then the rest. One send per message matters: every gloo message costs a
rendezvous between the two processes, and a body announced by a separate prelude costs the receiver a wake-up.

The receiver validates the prelude (magic, kind, sizes within limits) before it allocates anything beyond the
channel's fixed buffer, then receives exactly the announced rest; a prelude it cannot trust makes the channel
unusable (it cannot resynchronise) and is treated like a failure of the peer. Payload bytes are reinterpreted with
``Tensor.view(dtype)`` after the row's dtype code, numel and shape have been checked against the owner's schema.
JSON is parsed with ``json.loads`` (data only, never code). No message is ever unpickled.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lightning_async.errors import AsyncTrainingError

MAGIC = 0x4C41505331  # "LAPS1"
PRELUDE = 16
ROW = 14
MAX_DIMS = ROW - 6
# prelude slots
P_MAGIC, P_KIND, P_WORKER, P_SEQ, P_ROWS, P_META, P_PAYLOAD, P_STATUS = range(8)
P_SAMPLES, P_FLAGS, P_GRADIENTS, P_WAIT_US, P_BUSY_US, P_VERSION, P_EXTRA, P_READS = range(8, 16)
# row slots
R_BLOCK, R_VERSION, R_DTYPE, R_NUMEL, R_OFFSET, R_NDIM, R_DIMS = range(7)

# request kinds
READ, PUSH, BYE, SNAPSHOT, LOAD, TELEMETRY, RESPONSE, CLOSE = 1, 2, 3, 4, 5, 6, 7, 8
KINDS = (READ, PUSH, BYE, SNAPSHOT, LOAD, TELEMETRY, RESPONSE, CLOSE)
# READ modes (in P_FLAGS)
READ_WAIT, READ_TRY, REFRESH, RELEASE_REFRESH, RELEASE, READ_PAIR = 0, 1, 2, 3, 4, 5
# PUSH flags (bits)
F_WANT_READ, F_MUST_APPLY, F_NONFINITE, F_PIPELINED, F_WANT_PAIR = 1, 2, 4, 8, 16
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

    def __post_init__(self) -> None:
        self.header: list[int] = self.prelude.tolist()  # read as Python ints once (the prelude is not changed)

    def __getitem__(self, slot: int) -> int:
        return self.header[slot]

    def block_bytes(self, i: int) -> torch.Tensor:
        """The raw bytes of row ``i`` (validated offset and size)."""
        assert self.payload is not None
        row = self.rows[i].tolist()
        dtype = CODE_DTYPE[row[R_DTYPE]]
        nbytes = row[R_NUMEL] * _ITEMSIZE[dtype]
        start = row[R_OFFSET]
        return self.payload[start : start + nbytes]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_ITEMSIZE = {d: _itemsize(d) for d in _DTYPES}


def _align(n: int) -> int:
    return (n + 15) // 16 * 16


class Parts(list):
    """The views :func:`pack` returns (``prelude``, ``rows``, ``meta``, ``payload``, those present), all into one
    contiguous byte buffer, ``frame`` (what is sent)."""

    frame: torch.Tensor


def _frame_layout(n_rows: int, n_meta: int) -> tuple[int, int, int]:
    """Byte offsets of the rows, the meta and the payload inside a frame."""
    rows_at = PRELUDE * 8
    meta_at = rows_at + n_rows * ROW * 8
    return rows_at, meta_at, _align(meta_at + n_meta)


def pack(
    kind: int,
    worker: int,
    seq: int,
    *,
    blocks: Sequence[tuple[int, int, torch.Tensor]] = (),
    meta: dict[str, Any] | None = None,
    status: int = OK,
    ints: dict[int, int] | None = None,
) -> Parts:
    """Encode a message into one contiguous frame; returns views of its parts, in order (``.frame``: all of it).

    Args:
        blocks: ``(block index, version, tensor)`` triples; tensors are copied into the frame's payload.
        meta: JSON-serialisable control data.
        ints: extra prelude slots (``{P_SAMPLES: 8, ...}``).
    """
    meta_bytes = json.dumps(meta).encode() if meta else b""
    sizes = []
    offset = 0
    for block, _, t in blocks:
        if t.dim() > MAX_DIMS:
            raise ValueError(f"block {block} has {t.dim()} dimensions; the wire format carries at most {MAX_DIMS}")
        n = t.numel() * t.element_size()
        sizes.append((offset, n))
        offset += _align(n)
    rows_at, meta_at, payload_at = _frame_layout(len(blocks), len(meta_bytes))
    # CUDA blocks are staged through page-locked host memory (a faster device-to-host copy), then sent over gloo
    pinned = any(t.is_cuda for _, _, t in blocks)
    frame = torch.empty(payload_at + offset, dtype=torch.uint8, pin_memory=pinned)
    header = [0] * PRELUDE
    header[P_MAGIC], header[P_KIND], header[P_WORKER], header[P_SEQ] = MAGIC, kind, worker, seq
    header[P_ROWS], header[P_META], header[P_PAYLOAD], header[P_STATUS] = len(blocks), len(meta_bytes), offset, status
    for slot, value in (ints or {}).items():
        header[slot] = int(value)
    prelude = frame[:rows_at].view(torch.int64)
    prelude.numpy()[:] = header  # through numpy: no temporary tensor per message
    parts = Parts([prelude])
    if blocks:
        table = []
        for (block, version, t), (start, _) in zip(blocks, sizes):
            row = [block, version, DTYPE_CODE[t.dtype], t.numel(), start, t.dim(), *t.shape]
            table.append(row + [0] * (ROW - len(row)))
        rows = frame[rows_at:meta_at].view(torch.int64).view(len(blocks), ROW)
        rows.numpy()[:] = table
        parts.append(rows)
    if meta_bytes:
        meta_view = frame[meta_at : meta_at + len(meta_bytes)]
        meta_view.copy_(torch.frombuffer(bytearray(meta_bytes), dtype=torch.uint8))
        parts.append(meta_view)
    if offset:
        payload = frame[payload_at:]
        for (_, _, t), (start, n) in zip(blocks, sizes):
            if n:
                payload[start : start + n].view(t.dtype).view(t.shape).copy_(t.detach())
        parts.append(payload)
    frame[meta_at + len(meta_bytes) : payload_at].zero_()  # padding: no stale heap bytes on the wire
    parts.frame = frame
    return parts


class Channel:
    """One direction of one (client, owner) pair: a 2-rank gloo group, used by one thread on each side.

    A message is one send of its whole frame when the frame fits in ``inline`` bytes (the receiver posts one
    receive into a buffer it keeps for the channel); a larger one is sent as its prelude, then the rest (the receiver
    validates the prelude before it allocates the rest). Both sides derive ``inline`` from the same schema. The
    payload of a received message is a view of the channel's buffer: valid until the next receive on the channel.

    Every wait is bounded (``Work.wait(timeout)``); any error or timeout marks the channel broken for good
    (gloo tears a pair down after a timeout), and raises :class:`ChannelError`.
    """

    def __init__(
        self, group: Any, peer: int, max_payload: int, inline: int = 1 << 16, pinned: bool = False,
        peer_in_group: int | None = None,
    ) -> None:
        self.group = group
        self.peer = peer
        self.max_payload = max_payload
        self.inline = max(int(inline), PRELUDE * 8)
        self.pinned = pinned  # receive into page-locked memory (the blocks go on to a GPU)
        # the process group's own send/recv, with the peer's rank in the group: dist.isend/irecv would check and
        # translate the same arguments again on every message
        self._peer_in_group = dist.get_group_rank(group, peer) if peer_in_group is None else peer_in_group
        self.broken: str | None = None
        self._buffer: torch.Tensor | None = None

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

    def post(self, parts: Parts) -> list[Any]:
        """Start sending a packed message; returns the works (keep them, and ``parts``, until done)."""
        self._check()
        frame = parts.frame
        pieces = [frame] if frame.numel() <= self.inline else [frame[: PRELUDE * 8], frame[PRELUDE * 8 :]]
        try:
            return [self.group.send([p], self._peer_in_group, 0) for p in pieces]
        except RuntimeError as e:
            raise self._fail("send", e) from e

    def complete(self, works: list[Any], timeout: float) -> None:
        for w in works:
            self._wait(w, timeout, "send")

    def send(self, parts: Parts, timeout: float) -> None:
        self.complete(self.post(parts), timeout)

    def _wait(self, work: Any, timeout: float, what: str) -> None:
        try:
            work.wait(timeout=datetime.timedelta(seconds=max(timeout, 1e-3)))
        except RuntimeError as e:
            raise self._fail(what, e) from e

    def post_prelude(self) -> tuple[torch.Tensor, Any]:
        """Post the receive of the next message's first piece (its frame, or its prelude)."""
        self._check()
        if self._buffer is None:
            self._buffer = torch.empty(self.inline, dtype=torch.uint8, pin_memory=self.pinned)
        buf = self._buffer
        try:
            return buf, self.group.recv([buf], self._peer_in_group, 0)
        except RuntimeError as e:
            raise self._fail("receive", e) from e

    def receive(self, timeout: float, posted: tuple[torch.Tensor, Any] | None = None) -> Message:
        """Receive one message (waiting at most ``timeout`` for its start and again for its body)."""
        buf, work = posted if posted is not None else self.post_prelude()
        self._wait(work, timeout, "receive")
        prelude = buf[: PRELUDE * 8].view(torch.int64).clone()
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
        rows_at, meta_at, payload_at = _frame_layout(n_rows, n_meta)
        total = payload_at + n_payload
        if total > self.inline:  # sent in two pieces: the rest follows
            frame = torch.empty(total, dtype=torch.uint8)
            frame[: PRELUDE * 8].copy_(buf[: PRELUDE * 8])
            try:
                rest = self.group.recv([frame[PRELUDE * 8 :]], self._peer_in_group, 0)
            except RuntimeError as e:
                raise self._fail("receive", e) from e
            self._wait(rest, timeout, "receive")
        else:
            frame = buf
        rows = frame[rows_at:meta_at].view(torch.int64).view(n_rows, ROW).clone()
        decoded: dict[str, Any] = {}
        if n_meta:
            try:
                decoded = json.loads(bytes(frame[meta_at : meta_at + n_meta].numpy()).decode())
            except (ValueError, UnicodeDecodeError):
                decoded = {"_invalid": True}
            if not isinstance(decoded, dict):
                decoded = {"_invalid": True}
        return Message(prelude, rows, decoded, frame[payload_at:total] if n_payload else None)


def frame_size(sizes: Sequence[int]) -> int:
    """Bytes of a frame that carries blocks of ``sizes`` bytes and no meta (a push, or a reply with parameters)."""
    return _frame_layout(len(sizes), 0)[2] + sum(_align(s) for s in sizes)


def inline_size(sizes: Sequence[int]) -> int:
    """The frame size sent in one piece for blocks of ``sizes`` bytes: any push or parameter reply fits."""
    return min(PRELUDE * 8 + len(sizes) * ROW * 8 + sum(_align(s) for s in sizes) + 4096, 1 << 22)


def row_matches(row: torch.Tensor, reference: torch.Tensor) -> str | None:
    """``None`` if the row describes a tensor of ``reference``'s dtype and shape, else the reason."""
    row = row.tolist() if isinstance(row, torch.Tensor) else row
    code = row[R_DTYPE]
    if code not in CODE_DTYPE or CODE_DTYPE[code] != reference.dtype:
        return f"dtype {CODE_DTYPE.get(code, code)} != {reference.dtype}"
    ndim = row[R_NDIM]
    shape = tuple(row[R_DIMS : R_DIMS + max(0, min(ndim, MAX_DIMS))])
    if ndim != reference.dim() or shape != tuple(reference.shape) or row[R_NUMEL] != reference.numel():
        return f"shape {shape} != {tuple(reference.shape)}"
    return None


def decode_block(message: Message, i: int, reference: torch.Tensor) -> torch.Tensor:
    """Row ``i``'s tensor (a view of the payload) after :func:`row_matches` accepted it."""
    raw = message.block_bytes(i)
    return raw.view(reference.dtype).view(reference.shape)


def payload_fits(message: Message, i: int) -> bool:
    """Whether row ``i``'s byte range lies inside the payload."""
    row = message.rows[i].tolist()
    code = row[R_DTYPE]
    if code not in CODE_DTYPE or message.payload is None:
        return False
    start, nbytes = row[R_OFFSET], row[R_NUMEL] * _ITEMSIZE[CODE_DTYPE[code]]
    return start >= 0 and start % 16 == 0 and nbytes >= 0 and start + nbytes <= message.payload.numel()


class BlockCopier:
    """Copies parameter blocks from messages (or an owner's own tensors) into a worker's parameters.

    Args:
        params: the worker's parameters (the schema every row is checked against).
        owner_of: block index -> the rank that owns it.
    """

    def __init__(self, params: Sequence[torch.Tensor], owner_of: dict[int, int]) -> None:
        self.params = list(params)
        self.owner_of = owner_of
        #: per owner: the layout of its replies' parameter rows, once checked (see :meth:`copy_reply`)
        self.layouts: dict[int, tuple[Any, int, list[tuple[int, int, int]]]] = {}

    @staticmethod
    def copy_in(local_params: Sequence[torch.Tensor], blocks: Any) -> None:
        """Copy ``(block, version, tensor)`` triples into ``local_params``."""
        with torch.no_grad():
            for b, _, t in blocks:
                local_params[b].copy_(t)

    def local_copier(self, local_params: Sequence[torch.Tensor]) -> Any:
        """``out`` for the local owner: copy its blocks straight into ``local_params`` under its lock (one copy,
        no clone); the result ``()`` leaves nothing more to copy."""

        def copy_in(blocks: list[tuple[int, int, torch.Tensor]]) -> tuple[()]:
            self.copy_in(local_params, blocks)
            return ()

        return copy_in

    def copy_reply(self, local_params: Sequence[torch.Tensor], reply: Message, owner: int) -> None:
        """Copy a reply's parameter blocks into ``local_params``, each row checked (block, dtype, shape, bounds).
        An owner's replies carry the same layout every time (only the versions change): a layout checked once is
        then recognised by one comparison instead of checked row by row again."""
        layout = np.delete(reply.rows.numpy(), R_VERSION, axis=1)
        size = 0 if reply.payload is None else reply.payload.numel()
        known = self.layouts.get(owner)
        with torch.no_grad():
            if known is not None and known[1] == size and np.array_equal(known[0], layout):
                assert reply.payload is not None
                for b, start, nbytes in known[2]:
                    local_params[b].copy_(reply.payload[start : start + nbytes].view(self.params[b].dtype)
                                          .view(self.params[b].shape))
                return
            views = []
            for i, row in enumerate(reply.rows.tolist()):
                b = row[R_BLOCK]
                if self.owner_of.get(b) != owner or row_matches(row, self.params[b]) is not None \
                        or not payload_fits(reply, i):
                    raise AsyncTrainingError(f"owner rank {owner} sent a malformed parameter block {b}")
                local_params[b].copy_(decode_block(reply, i, self.params[b]))
                views.append((b, row[R_OFFSET], self.params[b].numel() * self.params[b].element_size()))
            if views:  # (a reply without parameters, e.g. to a release, has no layout worth keeping)
                self.layouts[owner] = (layout, size, views)

    def sent_blocks(self, parts: Parts) -> dict[int, torch.Tensor]:
        """Copies of the blocks a sent push carries, each on its block's device."""
        if len(parts) < 3:  # no rows, or no payload (only empty blocks)
            return {}
        sent = Message(prelude=parts[0], rows=parts[1], payload=parts[-1])
        return {
            row[R_BLOCK]: decode_block(sent, i, self.params[row[R_BLOCK]])
            .to(self.params[row[R_BLOCK]].device, copy=True)
            for i, row in enumerate(sent.rows.tolist())
        }
