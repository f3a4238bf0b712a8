"""Shared implementation of the torchvision-backed image data modules (MNIST, CIFAR-10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, Subset

from lightning_async.data._base import SplitDataModule, check_positive_int, import_torchvision, synthetic_images


class VisionDataModule(SplitDataModule):
    """Base of :class:`MNISTDataModule` and :class:`CIFAR10DataModule`.

    Real data: ``prepare_data`` downloads the torchvision dataset into ``data_dir`` (once, on one process);
    ``setup`` splits the official training set into train and validation (``val_size`` images, seeded by
    ``split_seed``) and uses the official test set for testing. Synthetic data (``synthetic=True``): images of the
    same shape and normalisation, generated from one random prototype per class plus noise, so models can learn
    them; nothing is downloaded and torchvision is not needed.

    Subclasses set the class attributes below and may override :meth:`train_transforms`.
    """

    dataset_name: ClassVar[str]
    image_shape: ClassVar[tuple[int, int, int]]
    num_classes: ClassVar[int] = 10
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        val_size: int,
        split_seed: int,
        download: bool,
        synthetic: bool,
        synthetic_size: int,
        num_workers: int,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_positive_int("val_size", val_size)
        check_positive_int("synthetic_size", synthetic_size)
        self.data_dir = Path(data_dir).expanduser()
        self.val_size = val_size
        self.split_seed = split_seed
        self.download = download
        self.synthetic = synthetic
        self.synthetic_size = synthetic_size
        if not synthetic:
            import_torchvision(type(self).__name__)  # fail here, before any worker process starts

    def _dataset_class(self) -> Any:
        return getattr(import_torchvision(type(self).__name__).datasets, self.dataset_name)

    def eval_transforms(self) -> Any:
        """``ToTensor`` then per-channel normalisation."""
        transforms = import_torchvision(type(self).__name__).transforms
        return transforms.Compose([transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def train_transforms(self) -> Any:
        """Transforms of the training images; no augmentation unless a subclass adds it."""
        return self.eval_transforms()

    def prepare_data(self) -> None:
        """Download the real dataset if needed (called by Lightning on one process per node)."""
        if self.synthetic:
            return
        dataset_class = self._dataset_class()
        for train in (True, False):
            try:
                dataset_class(str(self.data_dir), train=train, download=self.download)
            except RuntimeError as err:
                raise RuntimeError(
                    f"{type(self).__name__}: {self.dataset_name} not found under data_dir={str(self.data_dir)!r} "
                    f"and download={self.download!r}. Pass `--data.download=true`, point `--data.data_dir` at an "
                    f"existing copy, or use `--data.synthetic=true`."
                ) from err

    def setup(self, stage: str | None = None) -> None:
        """Build the train/validation/test datasets (real or synthetic)."""
        if self.train_set is not None:
            return
        if self.synthetic:
            held_out = max(1, self.synthetic_size // 4)
            seed = self.split_seed
            self.train_set = synthetic_images(self.synthetic_size, self.image_shape, self.num_classes, seed)
            self.val_set = synthetic_images(held_out, self.image_shape, self.num_classes, seed)
            self.test_set = synthetic_images(held_out + 1, self.image_shape, self.num_classes, seed)
            return
        dataset_class = self._dataset_class()
        root = str(self.data_dir)
        train_full: Dataset[Any] = dataset_class(root, train=True, transform=self.train_transforms())
        val_full: Dataset[Any] = dataset_class(root, train=True, transform=self.eval_transforms())
        total = len(train_full)  # type: ignore[arg-type]
        if self.val_size >= total:
            raise ValueError(
                f"`val_size` must be smaller than the {total} training images of {self.dataset_name}, "
                f"got {self.val_size!r}."
            )
        order = torch.randperm(total, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        # Two views of the same files so that validation images are not augmented.
        self.train_set = Subset(train_full, order[self.val_size :])
        self.val_set = Subset(val_full, order[: self.val_size])
        self.test_set = dataset_class(root, train=False, transform=self.eval_transforms())
