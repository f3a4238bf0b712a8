"""A small convolutional classifier for MNIST-shaped images (1x28x28)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_async.models._base import ClassificationModule, check_positive_int, check_probability


class CNNClassifier(ClassificationModule):
    """Two conv blocks and a linear head.

    ``[Conv3x3 -> ReLU -> Conv3x3 -> ReLU -> MaxPool2] x 2 -> Flatten -> Linear -> ReLU -> Dropout -> Linear``.
    Works for any square input whose side is divisible by 4 (28 for MNIST, 32 for CIFAR-10).

    Args:
        in_channels: Number of input channels (1 for MNIST).
        image_size: Side of the square input images, in pixels; must be divisible by 4.
        num_classes: Number of classes.
        channels: Channels of the first block; the second block has twice as many.
        hidden_dim: Width of the hidden linear layer of the head.
        dropout: Dropout probability in the head.
        optimizer: Callable that builds the optimizer from the parameters (``model.optimizer`` in YAML).
        scheduler: Optional callable that builds a learning-rate scheduler from the optimizer.
        scheduler_interval: Whether the scheduler steps every optimizer ``"step"`` or every ``"epoch"``.

    Example::

        >>> import torch
        >>> CNNClassifier(channels=4, hidden_dim=16)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        channels: int = 32,
        hidden_dim: int = 128,
        dropout: float = 0.25,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__(num_classes, optimizer, scheduler, scheduler_interval)
        for name, value in (("in_channels", in_channels), ("image_size", image_size), ("channels", channels),
                            ("hidden_dim", hidden_dim)):
            check_positive_int(name, value)
        if image_size % 4:
            raise ValueError(f"`image_size` must be divisible by 4 (two 2x2 poolings), got {image_size!r}.")
        check_probability("dropout", dropout)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        c1, c2 = channels, 2 * channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (image_size // 4) ** 2, hidden_dim), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )
