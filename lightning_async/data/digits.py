"""scikit-learn's bundled handwritten digits: the embedded default data set (no download)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import TensorDataset

from lightning_async.data._base import SplitDataModule, check_fractions


class DigitsDataModule(SplitDataModule):
    """The 1797 8x8 handwritten digits shipped with scikit-learn, as flat 64-feature vectors and 10 classes.

    The split is deterministic (a stratified shuffle seeded by ``split_seed``). Features are standardised with the
    mean and standard deviation of the training split only. Nothing is downloaded.

    Args:
        batch_size: Samples per batch, per worker.
        val_fraction: Fraction of the samples held out for validation.
        test_fraction: Fraction of the samples held out for testing.
        split_seed: Seed of the train/validation/test split.
        num_workers: DataLoader worker processes.

    Example::

        >>> dm = DigitsDataModule(batch_size=16)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((16, 64), (16,))
    """

    num_features = 64
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if value <= 0:
                raise ValueError(f"`{name}` must be in (0, 1) for the digits split, got {value!r}.")
        self.save_hyperparameters()
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        """Load, split and standardise the digits (cheap; done on every worker)."""
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits  # noqa: PLC0415 (keeps `import lightning_async` light)
        from sklearn.model_selection import train_test_split  # noqa: PLC0415

        features, labels = load_digits(return_X_y=True)
        held_out = self.val_fraction + self.test_fraction
        x_train, x_rest, y_train, y_rest = train_test_split(
            features, labels, test_size=held_out, random_state=self.split_seed, stratify=labels
        )
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest, y_rest, test_size=self.test_fraction / held_out, random_state=self.split_seed, stratify=y_rest
        )
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0  # constant border pixels

        def to_dataset(x: Any, y: Any) -> TensorDataset:
            return TensorDataset(
                torch.as_tensor((x - mean) / std, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
            )

        self.train_set = to_dataset(x_train, y_train)
        self.val_set = to_dataset(x_val, y_val)
        self.test_set = to_dataset(x_test, y_test)
