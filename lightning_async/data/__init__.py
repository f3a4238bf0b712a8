"""Recipe data modules.

========================  ===========================================  ==============================
class                     data                                          test data
========================  ===========================================  ==============================
``DigitsDataModule``      scikit-learn's bundled 8x8 digits (default)   the real data (no download)
``MNISTDataModule``       MNIST via torchvision (downloads)              ``synthetic=True``
``CIFAR10DataModule``     CIFAR-10 via torchvision (downloads)           ``synthetic=True``
``TextDataModule``        a text file the user names, as bytes           ``synthetic=True``
========================  ===========================================  ==============================
"""

from lightning_async.data.cifar10 import CIFAR10DataModule
from lightning_async.data.digits import DigitsDataModule
from lightning_async.data.mnist import MNISTDataModule
from lightning_async.data.text import TextDataModule, generate_text

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "MNISTDataModule", "TextDataModule", "generate_text"]
