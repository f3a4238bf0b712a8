"""LR schedulers that advance on global progress (applied updates) rather than on a worker's own steps."""

from __future__ import annotations

from typing import Any

from lightning_async._engine.base import Engine


class GlobalProgressScheduler:
    """Steps a per-step LR scheduler once for every update applied by any worker.

    Lightning calls ``step()`` after each local optimizer step; this proxy then advances the wrapped scheduler
    until its count of steps matches the engine's version, so the learning rate follows the global count of
    applied updates (with one worker, exactly the plain schedule). Everything else is delegated.
    """

    def __init__(self, scheduler: Any, engine: Engine) -> None:
        self.scheduler = scheduler
        self.engine = engine
        self._base = int(getattr(scheduler, "last_epoch", 0)) - engine.version

    def step(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:  # a metric-driven scheduler (ReduceLROnPlateau): its own logic decides
            self.scheduler.step(*args, **kwargs)
            return
        while self.scheduler.last_epoch - self._base < self.engine.version:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)
        self._base = int(getattr(self.scheduler, "last_epoch", 0)) - self.engine.version

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["scheduler"], name)
