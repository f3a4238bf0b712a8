"""A multilayer perceptron classifier, the model of the embedded default recipe (scikit-learn's digits)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_async.models._base import ClassificationModule, check_positive_int, check_probability


class MLPClassifier(ClassificationModule):
    """Fully connected classifier on flat feature vectors.

    Each hidden layer is ``Linear -> ReLU -> Dropout``; the last layer maps to ``num_classes`` logits. The defaults
    fit scikit-learn's digits (8x8 images flattened to 64 features, 10 classes).

    Args:
        input_dim: Number of input features.
        hidden_dims: Width of each hidden layer, in order. An empty list gives logistic regression.
        num_classes: Number of classes.
        dropout: Dropout probability after each hidden layer.
        optimizer: Callable that builds the optimizer from the parameters (``model.optimizer`` in YAML).
        scheduler: Optional callable that builds a learning-rate scheduler from the optimizer.
        scheduler_interval: Whether the scheduler steps every optimizer ``"step"`` or every ``"epoch"``.

    Example::

        >>> import torch
        >>> MLPClassifier(hidden_dims=[32])(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        input_dim: int = 64,
        hidden_dims: list[int] = [128, 128],  # noqa: B006 (read only; a list so that YAML can set it)
        num_classes: int = 10,
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__(num_classes, optimizer, scheduler, scheduler_interval)
        check_positive_int("input_dim", input_dim)
        for i, width in enumerate(hidden_dims):
            check_positive_int(f"hidden_dims[{i}]", width)
        check_probability("dropout", dropout)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        layers: list[nn.Module] = []
        width_in = input_dim
        for width in hidden_dims:
            layers += [nn.Linear(width_in, width), nn.ReLU(), nn.Dropout(dropout)]
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        self.net = nn.Sequential(nn.Flatten(), *layers)
