"""Recipe models: LightningModules whose ``__init__`` signatures are their YAML schema.

=====================  ============================================  ==========================
class                  model                                         data module
=====================  ============================================  ==========================
``MLPClassifier``      MLP on flat features                          ``DigitsDataModule``
``CNNClassifier``      small CNN                                     ``MNISTDataModule``
``ResNet18Classifier`` ResNet-18, CIFAR variant (plain torch)        ``CIFAR10DataModule``
``CharGPT``            byte-level GPT (causal SDPA)                  ``TextDataModule``
=====================  ============================================  ==========================

Each takes ``optimizer: OptimizerCallable`` and ``scheduler: LRSchedulerCallable | None`` (dependency injection,
``model.optimizer`` in YAML).
"""

from lightning_async.models._base import ClassificationModule
from lightning_async.models.cnn import CNNClassifier
from lightning_async.models.gpt import CharGPT
from lightning_async.models.mlp import MLPClassifier
from lightning_async.models.resnet import ResNet18Classifier

__all__ = ["CNNClassifier", "CharGPT", "ClassificationModule", "MLPClassifier", "ResNet18Classifier"]
