"""``trainer.global_step`` under this strategy: the run's count of applied updates, the same on every worker.

Lightning counts a worker's own optimizer steps; asynchronous workers take different numbers of them, so
``max_steps``, checkpoint names (``step=...``) and the logger's x-axis would each mean something different on
each rank. After every step the strategy sets the step counter to the engine's version (updates applied by all
workers), which is what a DDP user's ``max_steps`` and schedules count: one optimizer update per step.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector


def follow_global_progress(trainer: Trainer, version: int) -> None:
    """Set ``trainer.global_step`` to ``version`` (the engine's count of applied updates)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    module = trainer.lightning_module
    if module is None or module.automatic_optimization:
        counter = epoch_loop.automatic_optimization.optim_progress.optimizer.step.total
    else:
        counter = epoch_loop.manual_optimization.optim_step_progress.total
    counter.ready = counter.completed = int(version)


class GlobalStepLoggerConnector(_LoggerConnector):
    """Logs training metrics at ``trainer.global_step`` (the global count), not at the worker's own step count;
    how often to log (``log_every_n_steps``) still follows the worker's own steps, so logs stay evenly spaced."""

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        if step is None and "step" not in metrics and self.trainer.training:
            step = self.trainer.global_step
            metrics = {**metrics, "epoch": self.trainer.current_epoch}
        super().log_metrics(metrics, step)


def use_global_step_logging(trainer: Trainer) -> None:
    """Switch the trainer's logger connector to :class:`GlobalStepLoggerConnector` (same state, one method)."""
    if type(trainer._logger_connector) is _LoggerConnector:
        trainer._logger_connector.__class__ = GlobalStepLoggerConnector
