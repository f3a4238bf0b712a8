"""A 2-process AsyncTraining run in which one worker raises after its first optimizer step.

Usage: ``accelerate_failing_worker.py OUT [FAILING_RANK [with|bare]]``. The other worker keeps training slowly (about
50 s of steps), so it is still running when the failure happens; ``with`` runs the loop in ``with AsyncTraining(...)``,
``bare`` without it (the interpreter's exit closes the engine). Each worker writes ``<out>/worker<rank>.json`` (pid,
shared-memory directory) once the engine exists. Used by tests/test_accelerate.py to check that a failure stops the
other worker at once, naming the cause, and leaves no process and no shared memory behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_async.accelerate import AsyncTraining


def train(training: AsyncTraining, accelerator: Accelerator, model: nn.Module, out: Path, failing: int) -> None:
    rank = accelerator.process_index
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4096, 8), torch.randn(4096, 1))
    optimizer, loader = training.prepare(torch.optim.SGD(model.parameters(), lr=0.01), DataLoader(data, batch_size=4))
    (out / f"worker{rank}.json").write_text(
        json.dumps({"pid": os.getpid(), "shm_directory": str(training.engine.directory)})
    )
    for step, (x, y) in enumerate(loader):
        accelerator.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
        if rank == failing and step == 0:
            time.sleep(0.5)  # let the other worker get going
            raise RuntimeError(f"worker {rank} fails on purpose")
        if rank != failing:
            time.sleep(0.05)
    training.finish()


def main() -> None:
    out = Path(sys.argv[1])
    failing = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    mode = sys.argv[3] if len(sys.argv) > 3 else "with"
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(8, 1)
    if mode == "with":
        with AsyncTraining(accelerator, model, max_staleness=2) as training:
            train(training, accelerator, model, out, failing)
    else:
        train(AsyncTraining(accelerator, model, max_staleness=2), accelerator, model, out, failing)


if __name__ == "__main__":
    main()
