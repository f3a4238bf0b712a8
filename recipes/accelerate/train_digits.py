"""Asynchronous bounded-staleness training in a plain Accelerate loop: an MLP on scikit-learn's digits.

Launch (2 worker processes on one CPU node)::

    torchrun --standalone --nproc-per-node 2 recipes/accelerate/train_digits.py
    accelerate launch --multi_gpu --num_processes 2 --main_process_port 0 recipes/accelerate/train_digits.py

(``accelerate launch --cpu --num_processes 2`` starts only ONE process on CPU; see docs/accelerate.md.)
A single process (``python recipes/accelerate/train_digits.py``) works too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_async.accelerate import AsyncTraining
from lightning_async.optim import AsyncAdam


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--optimizer", choices=("async_adam", "adam"), default="async_adam")
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--bound-policy", choices=("accumulate", "wait", "drop"), default="accumulate")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--slow-rank", type=int, default=-1, help="make this rank slower (heterogeneous workers)")
    parser.add_argument("--slow-seconds", type=float, default=0.0, help="extra seconds per batch on --slow-rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None, help="save a checkpoint here after each epoch")
    parser.add_argument("--record", type=Path, default=None, help="write a per-worker JSON record in this directory")
    return parser.parse_args()


def digits_datasets(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Standardised 64-feature digits; 80/20 train/test split. Train samples carry their index (for the record)."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(x))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    return (
        TensorDataset(x[train], y[train], torch.arange(n_train)),
        TensorDataset(x[test], y[test]),
    )


def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        x, y = dataset.tensors
        correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def main() -> None:
    args = parse_args()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.gradient_accumulation_steps)
    torch.manual_seed(args.seed)  # rank 0's initial weights are broadcast anyway
    train_set, test_set = digits_datasets(args.seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if args.optimizer == "async_adam":
        optimizer = AsyncAdam(model.parameters(), lr=args.lr)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    rank = accelerator.process_index
    record: dict = {"rank": rank, "pid": os.getpid(), "epochs": []}

    with AsyncTraining(
        accelerator, model, max_staleness=args.max_staleness, bound_policy=args.bound_policy, seed=args.seed
    ) as training:
        optimizer, loader = training.prepare(optimizer, loader)
        record["shm_directory"] = str(training.engine.directory)
        for epoch in range(args.epochs):
            losses, indices = [], []
            for x, y, index in loader:
                with accelerator.accumulate(model):
                    loss = loss_fn(model(x), y)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                losses.append(loss.item())
                indices += index.tolist()
                if rank == args.slow_rank and args.slow_seconds > 0:
                    time.sleep(args.slow_seconds)
            # the loader ended the epoch on the engine: the model now holds the current authoritative weights
            mean_loss = sum(losses) / max(len(losses), 1)
            record["epochs"].append({"batches": len(losses), "mean_loss": mean_loss, "indices": indices})
            print(
                f"[worker {rank}] epoch {epoch}: {len(losses)} batches, mean loss {mean_loss:.4f}, "
                f"test accuracy {accuracy(model, test_set):.4f}, version {training.version}",
                flush=True,
            )
            if args.checkpoint is not None and accelerator.is_main_process:
                accelerator.save(training.state_dict(), args.checkpoint)
        telemetry = training.finish()  # waits (bounded) for the other workers; the model holds the final weights

    final_accuracy = accuracy(model, test_set)
    if accelerator.is_main_process:
        print(telemetry.summary(), flush=True)
        print(f"final test accuracy {final_accuracy:.4f}", flush=True)
    if args.record is not None:
        args.record.mkdir(parents=True, exist_ok=True)
        record.update(
            final_accuracy=final_accuracy,
            counters=telemetry.counters,
            staleness_histogram=telemetry.staleness_histogram,
            max_staleness=telemetry.max_staleness,
            version=telemetry.version,
        )
        (args.record / f"worker{rank}.json").write_text(json.dumps(record))
    accelerator.end_training()


if __name__ == "__main__":
    main()
