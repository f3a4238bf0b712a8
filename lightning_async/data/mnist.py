"""MNIST handwritten digits (1x28x28, 10 classes), through torchvision, or generated data of the same shape."""

from __future__ import annotations

from lightning_async.data._vision import VisionDataModule


class MNISTDataModule(VisionDataModule):
    """MNIST: 60,000 training and 10,000 test images of 1x28x28 pixels, 10 classes.

    The real data is read with ``torchvision.datasets.MNIST`` (``pip install torchvision``), downloaded into
    ``data_dir`` when ``download=True``. The last ``val_size`` images of a seeded permutation of the official
    training set are held out for validation; the official test set is the test split. Images are normalised with
    the usual mean 0.1307 and standard deviation 0.3081.

    ``synthetic=True`` replaces all of this with generated images of the same shape (one random prototype per
    class plus noise; ``synthetic_size`` training images, a quarter as many for validation and test). It needs no
    torchvision and no download; the tests use it.

    Args:
        data_dir: Directory holding (or receiving) the dataset files.
        batch_size: Samples per batch, per worker.
        val_size: Number of training images held out for validation.
        split_seed: Seed of the train/validation split (and of the synthetic data).
        download: Download the dataset if it is not in ``data_dir``.
        synthetic: Use generated data of the same shape instead of MNIST.
        synthetic_size: Number of generated training images when ``synthetic=True``.
        num_workers: DataLoader worker processes.

    Example::

        >>> dm = MNISTDataModule(synthetic=True, synthetic_size=8, batch_size=4)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((4, 1, 28, 28), (4,))
    """

    dataset_name = "MNIST"
    image_shape = (1, 28, 28)
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        val_size: int = 5000,
        split_seed: int = 0,
        download: bool = True,
        synthetic: bool = False,
        synthetic_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        super().__init__(data_dir, batch_size, val_size, split_seed, download, synthetic, synthetic_size, num_workers)
        self.save_hyperparameters()
