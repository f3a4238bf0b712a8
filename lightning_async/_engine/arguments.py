"""Validation of the arguments every front end (the Lightning strategy, ``AsyncTraining``) takes the same way."""

from __future__ import annotations

import math

from lightning_async._engine.bound import validate_bound_policy, validate_max_staleness


def validate_run_arguments(
    max_staleness: int | str | None, bound_policy: str, timeout: float, max_consecutive_nonfinite: int
) -> None:
    """Raise a ``ValueError`` naming the first bad argument, its value and a valid example."""
    validate_max_staleness(max_staleness, allow_auto=True)
    validate_bound_policy(bound_policy)
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if not (number and timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}. For example timeout=300.")
    if isinstance(max_consecutive_nonfinite, bool) or not isinstance(max_consecutive_nonfinite, int) or (
        max_consecutive_nonfinite < 1
    ):
        raise ValueError(
            f"max_consecutive_nonfinite must be an integer >= 1, got {max_consecutive_nonfinite!r}. "
            "For example max_consecutive_nonfinite=5."
        )
