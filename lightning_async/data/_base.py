"""Helpers shared by the recipe data modules: input validation, loaders and synthetic images."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def check_positive_int(name: str, value: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def check_non_negative_int(name: str, value: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer greater than or equal to zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")


def check_fractions(**fractions: float) -> None:
    """Raise a ``ValueError`` unless every fraction is in ``[0, 1)`` and their sum is below 1."""
    for name, value in fractions.items():
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
    if sum(fractions.values()) >= 1.0:
        listed = ", ".join(f"{name}={value!r}" for name, value in fractions.items())
        raise ValueError(f"The held-out fractions must sum to less than 1 to leave training data, got {listed}.")


def require_setup(dataset: Dataset[Any] | None, owner: object) -> Dataset[Any]:
    """Return ``dataset``, or raise a ``RuntimeError`` telling the user to call ``setup()`` first."""
    if dataset is None:
        raise RuntimeError(f"{type(owner).__name__}: call `setup(stage)` before asking for a dataloader.")
    return dataset


def make_loader(dataset: Dataset[Any], batch_size: int, shuffle: bool, num_workers: int) -> DataLoader[Any]:
    """A ``DataLoader`` with the recipe defaults (the strategy may replace the sampler)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def import_torchvision(owner: str) -> Any:
    """Import torchvision, or raise an error telling the user how to install it or avoid it.

    Args:
        owner: Name of the data module that needs it, for the message.
    """
    try:
        import torchvision  # noqa: PLC0415 (optional dependency, imported only on the real-data path)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{owner}(synthetic=False) reads the real dataset through torchvision, which is not installed. "
            f"Install a matching torch and torchvision pair with `pip install 'lightning-async[vision]'`, or pass "
            f"`--data.synthetic=true` to train on generated data of the same shape."
        ) from err
    return torchvision


def synthetic_images(
    num_samples: int,
    shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    noise: float = 1.0,
) -> TensorDataset:
    """Generated, learnable image classification data: one fixed random prototype per class plus noise.

    The prototypes depend only on ``seed`` (so train, validation and test share them); the samples depend on
    ``seed`` and ``num_samples``. Images are roughly standardised (zero mean, unit variance), like normalised real
    images.

    Args:
        num_samples: Number of images.
        shape: ``(channels, height, width)`` of each image.
        num_classes: Number of classes; labels are balanced and shuffled.
        seed: Seed of the prototypes.
        noise: Standard deviation of the per-sample noise (relative to unit-variance prototypes).

    Returns:
        A ``TensorDataset`` of ``float32`` images of ``shape`` and ``int64`` labels.
    """
    prototypes = torch.randn((num_classes, *shape), generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + num_samples)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=generator)]
    images = prototypes[labels] + noise * torch.randn((num_samples, *shape), generator=generator)
    images = images / (1.0 + noise**2) ** 0.5
    return TensorDataset(images.float(), labels.long())


class SplitDataModule(pl.LightningDataModule):
    """Base for the recipe data modules: ``setup`` fills ``train_set``, ``val_set`` and ``test_set``.

    Args:
        batch_size: Samples per batch, per worker.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        check_non_negative_int("num_workers", num_workers)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Dataset[Any] | None = None
        self.val_set: Dataset[Any] | None = None
        self.test_set: Dataset[Any] | None = None

    def train_dataloader(self) -> DataLoader[Any]:
        return make_loader(require_setup(self.train_set, self), self.batch_size, True, self.num_workers)

    def val_dataloader(self) -> DataLoader[Any]:
        return make_loader(require_setup(self.val_set, self), self.batch_size, False, self.num_workers)

    def test_dataloader(self) -> DataLoader[Any]:
        return make_loader(require_setup(self.test_set, self), self.batch_size, False, self.num_workers)
