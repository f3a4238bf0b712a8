"""Public home of the simulated engine's speeds (the module text is the implementation's docstring)."""

from lightning_async._engine import speeds as _implementation
from lightning_async._engine.speeds import (
    SPEC_HELP,
    SpeedProfile,
    WorkerClock,
)

__doc__ = _implementation.__doc__
__all__ = ["SPEC_HELP", "SpeedProfile", "WorkerClock"]
