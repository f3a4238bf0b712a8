"""Figures of simulation results (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_result(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Plot one run: ``F`` and ``||grad F||^2`` (with its running minimum and a ``t^{-1/2}`` guide) against applied
    updates, and the staleness histogram. Returns the path written."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    traj = result["trajectory"]
    t = [a for a in traj["applied"] if a > 0]
    k = len(traj["applied"]) - len(t)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].loglog(t, traj["loss"][k:], color="C0")
    axes[0].set(xlabel="applied updates t", ylabel="F(X_t)", title="objective")
    axes[1].loglog(t, traj["grad_norm_sq"][k:], color="C1", alpha=0.5, label="||grad F(X_t)||^2")
    axes[1].loglog(t, traj["min_grad_norm_sq"][k:], color="C1", label="min_{s<=t} ||grad F(X_s)||^2")
    if t:
        m0 = traj["min_grad_norm_sq"][k]
        axes[1].loglog(t, [m0 * math.sqrt(t[0] / a) for a in t], "k--", lw=1, label="slope -1/2")
    axes[1].set(xlabel="applied updates t", title="stationarity")
    axes[1].legend(fontsize=8)
    hist = result["staleness_histogram"]
    axes[2].bar([int(s) for s in hist], list(hist.values()), color="C2")
    axes[2].set(xlabel="staleness", ylabel="applied updates", title="staleness histogram")
    eng = result["engine"]
    fig.suptitle(title or (
        f"{result['problem']['name']}: {eng['optimizer']}, P={eng['workers']}, K={eng['max_staleness']}, "
        f"{eng['bound_policy']}, speeds {eng['speeds']}"
    ))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
