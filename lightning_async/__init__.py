"""lightning_async: asynchronous, bounded-staleness adaptive training for PyTorch Lightning and Accelerate.

Importing the package registers the strategy names (``"async_adaptive"`` and its launcher variants) in
Lightning's strategy registry; an installed package also registers them in a fresh interpreter without the
import (see ``lightning_async_autoload``).
"""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_async.callbacks import StalenessHistogram
from lightning_async.engine.base import Telemetry
from lightning_async.errors import AsyncTrainingError, NonFiniteGradientError, WorkerDiedError, WorkerTimeoutError
from lightning_async.strategy import AsyncAdaptiveStrategy

__version__ = "0.1.0"

AsyncAdaptiveStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "AsyncAdaptiveStrategy",
    "StalenessHistogram",
    "AsyncTrainingError",
    "NonFiniteGradientError",
    "Telemetry",
    "WorkerDiedError",
    "WorkerTimeoutError",
]
