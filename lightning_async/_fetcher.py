"""Fetch the next training batch when a step ends, not when it starts.

A loader without a length (the shared-cursor loader has none: a worker's share of an epoch is known only when it
ends) is read one batch ahead by Lightning, so that each step knows whether it is the epoch's last. That look-ahead
is made as the step *starts*, and with batches claimed from a shared cursor it claims the next batch a whole step
early: a slow worker always holds one batch more than the one it computes, and at an epoch's end every other worker
waits (at validation's first collective) for it to finish both. :class:`JustInTimeFetcher` makes the same look-ahead
as the step's optimizer step ends, when the worker is about to need the batch: at an epoch's end a slow worker then
finishes only the batch it is computing.
"""

from __future__ import annotations

import contextlib
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loops.fetchers import _DataFetcher, _PrefetchDataFetcher


class JustInTimeFetcher(_PrefetchDataFetcher):
    """Lightning's one-batch look-ahead, made by :meth:`fetch_ahead` at the end of each step.

    The epoch's first batch is still fetched when the epoch starts (as Lightning does). A batch is never fetched
    twice nor skipped: :meth:`__next__` hands out the batch fetched ahead, or fetches one if none was.
    """

    def __next__(self) -> Any:
        if self.batches:
            return self.batches.pop(0)
        if self.done:
            raise StopIteration
        return _DataFetcher.__next__(self)  # nothing fetched ahead (e.g. a restart): fetch now, look ahead later

    def fetch_ahead(self) -> bool:
        """Fetch the next batch unless one already is; returns whether the loader is exhausted (the step that is
        ending is the epoch's last). Idempotent within a step."""
        if not self.batches and not self.done:
            with contextlib.suppress(StopIteration):  # the base class then marks the fetcher done
                self.batches.append(_DataFetcher.__next__(self))
        return self.done


def use_just_in_time_fetcher(trainer: Trainer) -> None:
    """Switch the fit loop's training fetcher to :class:`JustInTimeFetcher` (at an epoch's start, before its first
    step; Lightning builds a new fetcher when it reloads the dataloaders).

    Only Lightning's default fetcher is switched, and only without gradient accumulation: the step before an
    accumulation boundary must know at its start whether it is the last (Lightning then steps the optimizer on it).
    """
    fetcher = trainer.fit_loop._data_fetcher
    if type(fetcher) is _PrefetchDataFetcher and fetcher.length is None and trainer.accumulate_grad_batches == 1:
        fetcher.__class__ = JustInTimeFetcher  # same state, the look-ahead moved; the batch it prefetched is kept


def fetch_ahead(trainer: Trainer) -> bool:
    """At the end of a training step: make the look-ahead if the fetcher is a :class:`JustInTimeFetcher`, and mark
    the step as the epoch's last if the loader is exhausted (Lightning then validates after it). Returns whether
    this call found the epoch's end (``False`` if it had been found already this step, or for any other fetcher)."""
    fetcher = trainer.fit_loop._data_fetcher
    progress = trainer.fit_loop.epoch_loop.batch_progress
    if not isinstance(fetcher, JustInTimeFetcher) or progress.is_last_batch:
        return False
    if fetcher.fetch_ahead():
        progress.is_last_batch = True
        return True
    return False
