"""Rate measurements on a trajectory: running minimum, log-log slope, and the O(log t / sqrt t) boundedness check.

The quantity the study tracks is ``m(t) = min_{s <= t} ||grad F(X_s)||^2`` (over the evaluated iterates ``s``) and the
ratio ``r(t) = m(t) * sqrt(t) / log(t)``, which stays bounded when ``m(t) = O(log t / sqrt t)``. A finite run can
only show whether ``r`` stops growing over the horizon measured, not a limit; :func:`rate_check` says how it is
judged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

GROWTH_THRESHOLD = 1.5
"""``r`` counts as bounded when its maximum over the last decade of ``t`` is at most this many times its maximum
before (a quantity growing like ``sqrt(t) / log t`` grows by about 2.4x over a decade at t ~ 10^4)."""


def running_min(values: Sequence[float]) -> list[float]:
    """``out[i] = min(values[: i + 1])`` (NaN-safe: a NaN never becomes the minimum)."""
    out: list[float] = []
    best = math.inf
    for v in values:
        if v < best:
            best = v
        out.append(best)
    return out


def loglog_slope(t: Sequence[float], y: Sequence[float], t_from: float, t_to: float | None = None) -> float | None:
    """Least-squares slope of ``log y`` against ``log t`` over ``t_from <= t <= t_to`` (``None`` if < 3 points)."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(t, y)
           if a >= t_from and (t_to is None or a <= t_to) and a > 0 and b > 0 and math.isfinite(b)]
    if len(pts) < 3:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def rate_ratio(t: Sequence[float], min_grad_sq: Sequence[float]) -> list[float | None]:
    """``r(t) = m(t) * sqrt(t) / log(t)`` for ``t >= 3`` (``None`` below, where ``log t`` is too small)."""
    return [m * math.sqrt(a) / math.log(a) if a >= 3 else None for a, m in zip(t, min_grad_sq)]


def rate_check(t: Sequence[float], min_grad_sq: Sequence[float]) -> dict[str, Any]:
    """Judge the rate on a trajectory of ``(t, m(t))``.

    Returns:
        ``slope``: fitted log-log slope of ``m`` over the last two decades ``[T/100, T]`` (``-0.5`` is the rate);
        ``slope_last_decade``: the same over ``[T/10, T]``;
        ``ratio_final``: ``r(T)``; ``ratio_growth``: max of ``r`` over ``[T/10, T]`` divided by its max over
        ``[10, T/10)``; ``bounded``: ``ratio_growth <= GROWTH_THRESHOLD`` (``None`` when the run is too short or
        the values are not finite).
    """
    T = max(t)
    ratios = rate_ratio(t, min_grad_sq)
    late = [r for a, r in zip(t, ratios) if r is not None and a >= T / 10 and math.isfinite(r)]
    early = [r for a, r in zip(t, ratios) if r is not None and 10 <= a < T / 10 and math.isfinite(r)]
    growth = max(late) / max(early) if late and early and max(early) > 0 else None
    return {
        "slope": loglog_slope(t, min_grad_sq, max(10.0, T / 100)),
        "slope_last_decade": loglog_slope(t, min_grad_sq, T / 10),
        "ratio_final": ratios[-1] if ratios else None,
        "ratio_growth": growth,
        "bounded": None if growth is None else growth <= GROWTH_THRESHOLD,
    }


def eval_schedule(steps: int, points: int) -> list[int]:
    """Applied-update counts at which to evaluate: 0 and about ``points`` log-spaced counts up to ``steps``."""
    if steps <= 0:
        return [0]
    points = max(points, 2)
    out = {0, steps}
    for i in range(points):
        out.add(max(1, round(steps ** (i / (points - 1)))))
    return sorted(out)
