"""The progress bar's length under dynamic batches: each worker's share of the epoch, estimated as it goes.

A loader fed by the shared cursor has no length (a worker's share is known only when the epoch ends), so
Lightning's bars would show ``21/?`` and no ETA. The strategy sets the bar's total to the sampler's running
estimate (:meth:`~lightning_async._sampler.SharedCursorBatchSampler.estimated_length`) instead.
"""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from lightning_async._sampler import SharedCursorBatchSampler


def shared_cursor_sampler(trainer: Trainer) -> SharedCursorBatchSampler | None:
    """The shared-cursor batch sampler of the running fit's training loader, if it has one."""
    loader = trainer.fit_loop._combined_loader
    if loader is None:
        return None
    for dataloader in loader.flattened:
        sampler = getattr(dataloader, "batch_sampler", None)
        if isinstance(sampler, SharedCursorBatchSampler):
            return sampler
    return None


def show_estimated_length(trainer: Trainer) -> None:
    """Set the training progress bar's total to this worker's estimated batches in the epoch."""
    bar = trainer.progress_bar_callback
    sampler = shared_cursor_sampler(trainer)
    if bar is None or sampler is None or not bar.is_enabled:
        return
    total = sampler.estimated_length()
    if isinstance(bar, TQDMProgressBar):
        tqdm_bar = getattr(bar, "_train_progress_bar", None)
        if tqdm_bar is not None and tqdm_bar.total != total:
            tqdm_bar.total = total
            tqdm_bar.refresh()
    elif isinstance(bar, RichProgressBar):
        task = getattr(bar, "train_progress_bar_id", None)
        if bar.progress is not None and task is not None:
            bar.progress.update(task, total=total)
