"""Callbacks that report what the asynchronous engine measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_async._engine.base import Telemetry


class StalenessHistogram(Callback):
    """Writes the staleness histogram (and per-worker throughput) of a fit as a PNG, on rank 0.

    How to read it: the left panel counts applied updates by their staleness (updates other workers applied between
    this update's read and its application); everything sits at or left of the dashed ``max_staleness`` line. The
    right panel shows each worker's applied samples per second and the share of its time spent waiting for the bound.

    Args:
        path: where to write the PNG (relative paths go under ``trainer.default_root_dir``).
        every_n_epochs: also rewrite it every n training epochs (0: only at the end of fit).
    """

    def __init__(self, path: str = "staleness.png", every_n_epochs: int = 0) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}.")
        self.path = path
        self.every_n_epochs = every_n_epochs
        self.written: Path | None = None

    def _target(self, trainer: Trainer) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else Path(trainer.default_root_dir) / path

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        engine = getattr(trainer.strategy, "engine", None)
        if self.every_n_epochs and engine is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._write(trainer, engine.telemetry())

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        telemetry = getattr(trainer.strategy, "telemetry", None)
        if telemetry is not None:
            self._write(trainer, telemetry)

    def _write(self, trainer: Trainer, telemetry: Telemetry) -> None:
        if trainer.is_global_zero:
            self.written = plot_telemetry(telemetry, self._target(trainer))


def plot_telemetry(telemetry: Telemetry, path: Path | str, title: str | None = None) -> Path:
    """Draw the staleness histogram and per-worker throughput of ``telemetry`` into the PNG ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # matplotlib is an optional dependency
        raise ImportError("StalenessHistogram needs matplotlib: pip install 'lightning-async[recipes]'") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hist = telemetry.staleness_histogram
    last = max((s for s, n in enumerate(hist) if n), default=0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.bar(range(last + 1), hist[: last + 1], color="tab:blue")
    if telemetry.max_staleness is not None:
        left.axvline(telemetry.max_staleness + 0.5, color="black", linestyle="--", label="max_staleness")
        left.legend()
    left.set_xlabel("staleness (updates applied by others since the read)")
    left.set_ylabel("applied updates")
    left.set_title(f"staleness: mean {telemetry.staleness_mean:.2f}, max {telemetry.staleness_max}")
    workers = range(len(telemetry.per_worker))
    speeds = [row["samples_per_s"] for row in telemetry.per_worker]
    waits = [100 * row["wait_fraction"] for row in telemetry.per_worker]
    right.bar(workers, speeds, color="tab:green")
    right.set_xlabel("worker")
    right.set_ylabel("applied samples / s")
    right.set_xticks(list(workers))
    for w, (speed, wait) in enumerate(zip(speeds, waits)):
        right.annotate(f"wait {wait:.0f}%", (w, speed), ha="center", va="bottom", fontsize=8)
    right.set_title(f"{telemetry.bound_policy!r} policy, {telemetry.counters['applied']} updates applied")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def telemetry_from_dict(data: dict[str, Any]) -> Telemetry:
    """Rebuild a :class:`Telemetry` saved with ``dataclasses.asdict``."""
    return Telemetry(**data)
