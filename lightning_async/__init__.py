"""lightning_async: asynchronous, bounded-staleness adaptive training for PyTorch Lightning and Accelerate.

Importing the package registers the strategy names (``"async_adaptive"`` and its launcher variants) in
Lightning's strategy registry; an installed package also registers them in a fresh interpreter without the
import (see ``lightning_async_autoload``).
"""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_async._engine.base import Telemetry
from lightning_async.callbacks import StalenessHistogram
from lightning_async.errors import (
    AsyncTrainingError,
    NonFiniteGradientError,
    RunAbortedError,
    WorkerDiedError,
    WorkerTimeoutError,
)
from lightning_async.strategy import AsyncAdaptiveStrategy

__version__ = "0.1.0"

# Subpackages load on first attribute access (``lightning_async.optim.AsyncAdagrad``, as with ``torch.optim``),
# so that ``import lightning_async`` stays as light as the strategy registration needs.
_LAZY_SUBMODULES = frozenset({"optim", "data", "models", "sim", "accelerate", "callbacks", "cli", "testing"})


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)


AsyncAdaptiveStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "AsyncAdaptiveStrategy",
    "StalenessHistogram",
    "AsyncTrainingError",
    "NonFiniteGradientError",
    "RunAbortedError",
    "Telemetry",
    "WorkerDiedError",
    "WorkerTimeoutError",
]
