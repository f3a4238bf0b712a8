"""lightning_async: asynchronous, bounded-staleness adaptive training for PyTorch Lightning and Accelerate."""

__version__ = "0.1.0"
