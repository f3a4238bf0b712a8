"""ResNet-18 for 32x32 images (CIFAR-10), in plain torch.

The CIFAR variant of He et al. (2016): a 3x3 stride-1 stem and no max-pooling, then four stages of two
:class:`BasicBlock` each, with ``width``, ``2 width``, ``4 width`` and ``8 width`` channels, global average pooling and
a linear head. With ``width=64`` this is the usual 11.2M-parameter ResNet-18. Written here because torchvision is
not a dependency.

BatchNorm running statistics are buffers, not parameters: the async strategy does not average them between
workers, so each worker's validation uses its own statistics.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_async.models._base import ClassificationModule, check_positive_int


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        stride: Stride of the first convolution (2 halves the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet18_cifar(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Sequential:
    """Build the CIFAR ResNet-18 network (no Lightning), mapping ``(N, C, H, W)`` images to ``(N, classes)`` logits.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        width: Channels of the first stage (64 in the paper); the stages have ``1, 2, 4, 8`` times as many.
    """
    check_positive_int("in_channels", in_channels)
    check_positive_int("num_classes", num_classes)
    check_positive_int("width", width)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    channels = width
    for stage, multiplier in enumerate((1, 2, 4, 8)):
        out_channels = width * multiplier
        stride = 1 if stage == 0 else 2
        layers += [BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)]
        channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


class ResNet18Classifier(ClassificationModule):
    """ResNet-18 (CIFAR variant) as a LightningModule.

    Args:
        in_channels: Channels of the input images (3 for CIFAR-10).
        num_classes: Number of classes.
        width: Channels of the first stage; 64 is the standard ResNet-18, smaller values give a thinner network
            with the same depth (the tests use 4).
        optimizer: Callable that builds the optimizer from the parameters (``model.optimizer`` in YAML).
        scheduler: Optional callable that builds a learning-rate scheduler from the optimizer.
        scheduler_interval: Whether the scheduler steps every optimizer ``"step"`` or every ``"epoch"``.

    Example::

        >>> import torch
        >>> ResNet18Classifier(width=4)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 64,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__(num_classes, optimizer, scheduler, scheduler_interval)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = resnet18_cifar(in_channels, num_classes, width)
