"""The parameter-server engine's helper threads: reply waiters (gloo works cannot be polled) and background
tasks, and the record of a push in flight.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_async._engine import ps_wire as wire


@dataclass(eq=False)
class _Posted:
    """A pipelined push on its way to a remote owner, and (once ``done``) the owner's reply."""

    parts: wire.Parts
    works: list[Any]
    prelude: tuple[torch.Tensor, Any]
    done: threading.Event = field(default_factory=threading.Event)
    reply: wire.Message | None = None
    error: wire.ChannelError | None = None
    checked: bool = False
    detached: bool = False
    verdict: str = ""
    read: int = -1
    posted_at: float = field(default_factory=time.perf_counter)
    done_at: float = 0.0
    late: bool = False  # a blocking push whose reply is taken at the next begin_step (see _post_late)
    inline: bool = False  # late, and completed by the worker's own thread (no reply-waiter thread)
    base: int = -1  # late: the read the update was computed on (still held if the owner defers it)
    repipe: bool = False  # the push asked for a pair of reads (overlap starts again from its reply)
    pair: bool = False  # the reply granted that pair


class _ReplyWaiter:
    """Waits, off the training thread, for the replies to one remote owner's pipelined pushes.

    The training thread posts the send and the receive itself (so the bytes move as soon as the owner answers);
    this thread only calls the bounded ``wait``s that gloo needs before a work counts as done, and sets
    ``done``. The training thread never touches the channel while a push is in flight.
    """

    def __init__(self, channel: wire.Channel, timeout: float, name: str) -> None:
        self.channel = channel
        self.timeout = timeout
        self.jobs: queue.SimpleQueue[_Posted | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self.channel.complete(job.works, self.timeout)
                job.reply = self.channel.receive(self.timeout, job.prelude)
            except wire.ChannelError as e:
                job.error = e
            except Exception as e:  # noqa: BLE001 - never leave the training thread waiting on a dead waiter
                job.error = wire.ChannelError(f"{type(e).__name__}: {e}")
            finally:
                job.done_at = time.perf_counter()
                job.done.set()

    def stop(self) -> None:
        self.jobs.put(None)


class _Background:
    """One daemon thread that runs submitted calls in order (a daemon, unlike ``ThreadPoolExecutor``'s workers, so
    a call stuck on a dead peer cannot hold up the interpreter's exit)."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[tuple[Any, tuple[Any, ...], concurrent.futures.Future[Any]] | None] = \
            queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.jobs.put((fn, args, future))
        return future

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            fn, args, future = job
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

    def stop(self) -> None:
        self.jobs.put(None)
