"""Engines: where the authoritative parameters and optimizer state live, and where updates are applied."""

from lightning_async._engine.bound import BOUND_POLICIES, BoundPolicy, StalenessBound, is_feasible

__all__ = ["BOUND_POLICIES", "BoundPolicy", "StalenessBound", "is_feasible"]
