"""Heterogeneity-aware data assignment: workers claim batches from one shared cursor.

Every worker walks the same seeded permutation of the dataset, and each batch index is claimed by exactly one
worker, whichever asks first. A fast worker therefore takes more batches than a slow one, every sample is used
once per epoch across all workers, and all workers run out of batches within one batch of each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler


class BatchCursor(Protocol):
    def next_batch(self, epoch: int, num_batches: int) -> int | None: ...


class SharedCursorBatchSampler(Sampler[list[int]]):
    """Yields the batches of one epoch that this worker wins from the shared cursor.

    Args:
        num_samples: dataset length.
        batch_size: samples per batch.
        drop_last: drop the last incomplete batch.
        shuffle: draw a new permutation each epoch (seeded by ``seed + epoch``, identical in every worker).
        seed: base seed of the permutation.
        cursor: the engine's shared batch cursor.
    """

    def __init__(
        self, num_samples: int, batch_size: int, drop_last: bool, shuffle: bool, seed: int, cursor: BatchCursor
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.seed = seed
        self.cursor = cursor
        self.epoch = 0
        self.workers = 1  # set by the strategy: the first estimate of this worker's share is 1 / workers
        self._won = 0  # batches this worker took so far this epoch
        self._claimed = 0  # batches all workers had taken when this worker took its last one
        # Lightning sets the epoch on `batch_sampler.sampler`, not on the batch sampler itself
        self.sampler = _EpochSetter(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # No __len__ on purpose: a worker's share of an epoch is only known when it ends. Without a length, Lightning
    # validates when the iterator is exhausted instead of after a fixed count of batches that a worker may not reach.
    def num_batches(self) -> int:
        """All batches of the epoch over all workers."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def estimated_length(self) -> int:
        """This worker's batches in the epoch, estimated from its share so far (for the progress bar).

        With ``n`` of the first ``c`` batches taken, the rest of the epoch's ``B`` batches is split in the same
        proportion: ``n + (B - c) n / c``; before the first batch, ``B / workers``. Exact once the epoch ends.
        """
        total = self.num_batches()
        if self._claimed == 0:
            return max(1, -(-total // max(1, self.workers)))
        share = self._won / self._claimed
        return max(self._won, round(self._won + (total - self._claimed) * share))

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        num_batches = self.num_batches()
        self._won = self._claimed = 0
        while (index := self.cursor.next_batch(self.epoch, num_batches)) is not None:
            self._won += 1
            self._claimed = index + 1
            yield order[index * self.batch_size : (index + 1) * self.batch_size].tolist()
        self._claimed = num_batches  # the epoch is over: the estimate is now this worker's count


class _EpochSetter:
    def __init__(self, owner: SharedCursorBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


def dynamic_batch_loader_kwargs(dataloader: DataLoader, cursor: BatchCursor, seed_offset: int = 0) -> dict[str, Any]:
    """The arguments that rebuild ``dataloader`` with dynamic batches from ``cursor``, keeping its other settings.

    Shuffling and its seed come from the loader's sampler (``RandomSampler``, or a ``DistributedSampler`` as
    Lightning injects); the batch size and ``drop_last`` from the loader; worker processes, collation, pinning
    and prefetching are kept as they were.
    """
    if dataloader.batch_size is None:
        raise ValueError("dynamic batches need the DataLoader's batch_size (it has a custom batch_sampler).")
    sampler = dataloader.sampler
    shuffle = bool(getattr(sampler, "shuffle", isinstance(sampler, RandomSampler)))
    seed = seed_offset + (int(getattr(sampler, "seed", 0)) if isinstance(sampler, DistributedSampler) else 0)
    kwargs: dict[str, Any] = dict(
        batch_sampler=SharedCursorBatchSampler(
            num_samples=len(dataloader.dataset),  # type: ignore[arg-type]
            batch_size=dataloader.batch_size,
            drop_last=dataloader.drop_last,
            shuffle=shuffle,
            seed=seed,
            cursor=cursor,
        ),
        num_workers=dataloader.num_workers,
        collate_fn=dataloader.collate_fn,
        pin_memory=dataloader.pin_memory,
        timeout=dataloader.timeout,
        worker_init_fn=dataloader.worker_init_fn,
        multiprocessing_context=dataloader.multiprocessing_context,
        generator=dataloader.generator,
        persistent_workers=dataloader.persistent_workers,
    )
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
    return kwargs
