"""CIFAR-10 (3x32x32, 10 classes), through torchvision, or generated data of the same shape."""

from __future__ import annotations

from typing import Any

from lightning_async.data._base import import_torchvision
from lightning_async.data._vision import VisionDataModule


class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10: 50,000 training and 10,000 test colour images of 3x32x32 pixels, 10 classes.

    The real data is read with ``torchvision.datasets.CIFAR10`` (``pip install torchvision``), downloaded into
    ``data_dir`` when ``download=True``. ``val_size`` images of a seeded permutation of the official training set
    are held out for validation (without augmentation); the official test set is the test split. Images are
    normalised per channel; training images are augmented with a 4-pixel padded random crop and a horizontal flip
    when ``augment=True``.

    ``synthetic=True`` replaces all of this with generated images of the same shape (one random prototype per
    class plus noise; ``synthetic_size`` training images, a quarter as many for validation and test). It needs no
    torchvision and no download; the tests use it.

    Args:
        data_dir: Directory holding (or receiving) the dataset files.
        batch_size: Samples per batch, per worker.
        val_size: Number of training images held out for validation.
        split_seed: Seed of the train/validation split (and of the synthetic data).
        download: Download the dataset if it is not in ``data_dir``.
        augment: Random crop and horizontal flip on training images (real data only).
        synthetic: Use generated data of the same shape instead of CIFAR-10.
        synthetic_size: Number of generated training images when ``synthetic=True``.
        num_workers: DataLoader worker processes.

    Example::

        >>> dm = CIFAR10DataModule(synthetic=True, synthetic_size=8, batch_size=4)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((4, 3, 32, 32), (4,))
    """

    dataset_name = "CIFAR10"
    image_shape = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        download: bool = True,
        augment: bool = True,
        synthetic: bool = False,
        synthetic_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        super().__init__(data_dir, batch_size, val_size, split_seed, download, synthetic, synthetic_size, num_workers)
        self.augment = augment
        self.save_hyperparameters()

    def train_transforms(self) -> Any:
        """Padded random crop and horizontal flip (if ``augment``), then the evaluation transforms."""
        if not self.augment:
            return self.eval_transforms()
        transforms = import_torchvision(type(self).__name__).transforms
        return transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), self.eval_transforms()]
        )
