"""Named shared-memory tensors and a cross-process lock, for processes started independently.

Lightning's launchers start workers as fresh interpreters (``popen``) or un-share module memory (``spawn`` on
CPU), so sharing goes through files under ``/dev/shm`` mapped with ``torch.from_file(..., shared=True)``: every
process that maps the same file sees the same memory, with no server in between.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lightning_async.errors import WorkerTimeoutError

DEFAULT_ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
_PREFIX = "lightning_async-"


def run_directory(token: int, root: Path | None = None) -> Path:
    """The directory holding one run's shared tensors, named by a token all workers agree on."""
    return (root or DEFAULT_ROOT) / f"{_PREFIX}{token:016x}"


def remove_stale_runs(root: Path | None = None) -> None:
    """Delete run directories whose creating process is gone (left behind by a killed run)."""
    for path in (root or DEFAULT_ROOT).glob(f"{_PREFIX}*"):
        owner = path / "owner"
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running. A zombie (dead, not yet reaped by its parent: a worker killed under
    Lightning's launcher stays one until the launcher polls) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ')'
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def make_private_directory(path: Path) -> None:
    """Create ``path`` readable by its owner only (0700), whatever the umask."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _create_private_file(path: Path, nbytes: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


def map_tensor(path: Path, shape: tuple[int, ...], dtype: torch.dtype, create: bool = False) -> torch.Tensor:
    """Map (and with ``create``, allocate zero-filled) a shared tensor stored in ``path``."""
    numel = 1
    for size in shape:
        numel *= size
    if create:
        _create_private_file(path, max(numel, 1) * torch.empty((), dtype=dtype).element_size())
    flat = torch.from_file(str(path), shared=True, size=max(numel, 1), dtype=dtype)
    return flat[:numel].view(shape)


def map_array(path: Path, shape: tuple[int, ...], dtype: type, create: bool = False) -> np.ndarray:
    """Map a small shared numpy array (control words, counters): cheaper than tensors for scalar access."""
    if create:
        _create_private_file(path, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)


class FileLock:
    """An exclusive lock shared by independent processes (``flock``), with a bounded wait.

    The kernel drops the lock when its holder dies, so a crashed worker never leaves it held.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def hold(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WorkerTimeoutError(
                        f"could not take the shared lock {self.path} within {self.timeout:.1f}s "
                        "(another worker holds it and is not progressing)"
                    ) from None
                time.sleep(0.0002)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
