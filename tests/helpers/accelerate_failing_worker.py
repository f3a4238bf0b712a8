"""A 2-process AsyncTraining run in which worker 1 raises after its first optimizer step.

Worker 0 keeps training slowly, so it is still running when torchrun stops it (SIGTERM) because worker 1 failed.
Each worker writes ``<out>/worker<rank>.json`` (pid, shared-memory directory) once the engine exists.
Used by tests/test_accelerate.py to check that a failed run leaves no process and no shared memory behind.
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


def main() -> None:
    out = Path(sys.argv[1])
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4096, 8), torch.randn(4096, 1))
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with AsyncTraining(accelerator, model, max_staleness=2) as training:
        optimizer, loader = training.prepare(optimizer, DataLoader(data, batch_size=4))
        (out / f"worker{rank}.json").write_text(
            json.dumps({"pid": os.getpid(), "shm_directory": str(training.engine.directory)})
        )
        for step, (x, y) in enumerate(loader):
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            if rank == 1 and step == 0:
                time.sleep(0.5)  # let worker 0 get going
                raise RuntimeError("worker 1 fails on purpose")
            if rank == 0:
                time.sleep(0.05)
        training.finish()


if __name__ == "__main__":
    main()
