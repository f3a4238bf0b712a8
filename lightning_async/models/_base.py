"""Shared training logic for the recipe models.

Every recipe model is a :class:`~lightning.pytorch.LightningModule` whose ``__init__`` signature is its YAML schema.
The optimizer and the learning-rate scheduler are injected as callables (``model.optimizer`` and
``model.scheduler`` in YAML), never through LightningCLI's top-level ``optimizer:`` key, which is silently lost
under spawn-based start methods (Lightning-AI/pytorch-lightning#16489).

Logging:

- ``train/loss`` every step, on this rank only (no ``sync_dist``). See NOTE [no collectives in training_step].
- ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` per epoch, averaged over ranks (``sync_dist=True``,
  torchmetrics accuracy synchronised by torchmetrics).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


def check_positive_int(name: str, value: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def check_probability(name: str, value: float) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``0 <= value < 1``."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")


class ClassificationModule(pl.LightningModule):
    """Base class: cross-entropy training, accuracy metrics and injected optimizer/scheduler.

    Subclasses build ``self.net`` (any module mapping a batch of inputs to logits of shape ``(batch, classes)``
    or ``(batch, ..., classes)``) and call ``super().__init__`` first.

    Args:
        num_classes: Number of classes scored by the accuracy metric.
        optimizer: Callable that builds the optimizer from the parameters (``model.optimizer`` in YAML).
        scheduler: Optional callable that builds a learning-rate scheduler from the optimizer.
        scheduler_interval: Whether the scheduler steps every optimizer ``"step"`` or every ``"epoch"``.
    """

    def __init__(
        self,
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"`scheduler_interval` must be 'step' or 'epoch', got {scheduler_interval!r}.")
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_fn = nn.CrossEntropyLoss()
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of inputs."""
        return self.net(x)

    def _loss_and_logits(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_y = y.reshape(-1)
        return self.loss_fn(flat_logits, flat_y), flat_logits, flat_y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._loss_and_logits(batch)
        # NOTE [no collectives in training_step]: under the async strategy, workers take different numbers of
        # training steps, so a per-step (or per-epoch) all-reduce of the training loss would force them back into
        # lockstep or hang. The training loss is logged per rank; validation and test are synchronised.
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits, y = self._loss_and_logits(batch)
        self.val_acc(logits, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits, y = self._loss_and_logits(batch)
        self.test_acc(logits, y)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True)
        self.log("test/acc", self.test_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        """Build the injected optimizer (and scheduler, if any) over all parameters."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
