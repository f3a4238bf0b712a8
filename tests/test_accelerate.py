"""Tests of ``lightning_async.accelerate.AsyncTraining``.

Single-process tests run in-process (``Accelerator(cpu=True)`` with world size 1: the engine still runs). The
multi-process tests launch ``recipes/accelerate/train_digits.py`` and ``tests/helpers/accelerate_failing_worker.py``
with ``torchrun --standalone`` (which picks a free rendezvous port itself).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_async._engine.shm import pid_alive
from lightning_async.accelerate import AsyncTraining
from lightning_async.optim import AsyncAdam

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "accelerate" / "train_digits.py"
FAILING = ROOT / "tests" / "helpers" / "accelerate_failing_worker.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _data(n: int = 52, dtype: torch.dtype = torch.float64) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    return TensorDataset(x, (x.sum(1, keepdim=True) > 0).to(dtype))


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.01)
    return AsyncAdam(model.parameters(), lr=0.01)


def _train(accelerator: Accelerator, model, optimizer, loader, epochs: int, scheduler=None) -> None:
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for x, y in loader:
            with accelerator.accumulate(model):
                accelerator.backward(loss_fn(model(x), y))
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad()


# ---------------------------------------------------------------------- single process
@pytest.mark.timeout(180)
@pytest.mark.parametrize("accumulation", [1, 3])
@pytest.mark.parametrize("optimizer_name", ["adam", "async_adam"])
def test_one_worker_equals_plain_accelerate_loop(optimizer_name: str, accumulation: int) -> None:
    """Invariant 3 for Accelerate: one worker, max_staleness 0 == a plain Accelerate loop, bit for bit (float64)."""
    data = _data()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    assert accelerator.num_processes == 1

    plain = _model()
    optimizer = _optimizer(optimizer_name, plain)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    p_model, p_opt, p_loader, p_sched = accelerator.prepare(plain, optimizer, DataLoader(data, batch_size=8), scheduler)
    _train(accelerator, p_model, p_opt, p_loader, epochs=3, scheduler=p_sched)

    model = _model()
    optimizer = _optimizer(optimizer_name, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    with AsyncTraining(accelerator, model, max_staleness=0) as training:
        a_opt, a_loader, a_sched = training.prepare(optimizer, DataLoader(data, batch_size=8), scheduler)
        directory = training.engine.directory
        _train(accelerator, model, a_opt, a_loader, epochs=3, scheduler=a_sched)
        telemetry = training.finish()

    for p, q in zip(plain.parameters(), model.parameters()):
        assert p.dtype == torch.float64
        assert torch.equal(p, q)
    steps = 3 * -(-7 // accumulation)  # 7 batches an epoch; Accelerate also steps at the end of each epoch
    c = telemetry.counters
    assert c["applied"] == c["received"] == telemetry.version == steps
    assert c["samples"] == 3 * len(data)
    assert telemetry.staleness_histogram[0] == steps and telemetry.staleness_max == 0
    assert not directory.exists()  # the run's shared memory is gone


@pytest.mark.timeout(180)
def test_checkpoint_is_weights_only_and_resume_is_exact(tmp_path: Path) -> None:
    data = _data()
    float_dtype = torch.float64
    accelerator = Accelerator(cpu=True)

    def run(epochs: int, state=None, save_after: int | None = None):
        model = _model()
        optimizer = AsyncAdam(model.parameters(), lr=0.01)
        with AsyncTraining(accelerator, model, max_staleness=0, seed=3) as training:
            opt, loader = training.prepare(optimizer, DataLoader(data, batch_size=8, shuffle=True))
            if state is not None:
                training.load_state_dict(state)
            for epoch in range(epochs):
                _train(accelerator, model, opt, loader, epochs=1)
                if save_after == epoch:
                    torch.save(training.state_dict(), tmp_path / "ckpt.pt")
            return model, training.finish()

    straight, _ = run(3, save_after=0)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["epoch"] == 1 and state["engine"]["version"] == 7
    assert set(state["model"]) == set(straight.state_dict())
    assert state["model"]["0.weight"].dtype == float_dtype
    resumed, telemetry = run(2, state=state)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert telemetry.version == 21 and telemetry.counters["applied"] == 21  # counters continue from the checkpoint


@pytest.mark.timeout(180)
def test_error_inside_the_block_removes_shared_memory() -> None:
    accelerator = Accelerator(cpu=True)
    model = _model()
    with pytest.raises(ZeroDivisionError), AsyncTraining(accelerator, model) as training:
        training.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
        directory = training.engine.directory
        assert directory.is_dir()
        1 / 0  # noqa: B018
    assert not directory.exists()
    assert not model._forward_pre_hooks  # the read hook is gone: the model is plain again


# ---------------------------------------------------------------------- bad inputs
def _expect(error: type[Exception], *fragments: str):
    return pytest.raises(error, match=".*".join(fragments))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kwargs", "error", "fragments"),
    [
        ({"max_staleness": -1}, ValueError, ["max_staleness", "-1"]),
        ({"max_staleness": 1.5}, ValueError, ["max_staleness", "1.5"]),
        ({"bound_policy": "block"}, ValueError, ["bound_policy", "accumulate", "'block'"]),
        ({"timeout": 0}, ValueError, ["timeout", "positive", "0"]),
        ({"max_consecutive_nonfinite": 0}, ValueError, ["max_consecutive_nonfinite", ">= 1", "0"]),
        ({"seed": "x"}, ValueError, ["seed", "'x'"]),
    ],
)
def test_bad_arguments(kwargs, error, fragments) -> None:
    with _expect(error, *fragments):
        AsyncTraining(Accelerator(cpu=True), _model(), **kwargs)


@pytest.mark.timeout(60)
def test_bad_objects() -> None:
    accelerator = Accelerator(cpu=True)
    with _expect(TypeError, "accelerator must be an accelerate.Accelerator", "str"):
        AsyncTraining("cpu", _model())  # type: ignore[arg-type]
    with _expect(TypeError, "model must be a torch.nn.Module", "dict"):
        AsyncTraining(accelerator, {})  # type: ignore[arg-type]
    frozen = _model().requires_grad_(False)
    with _expect(ValueError, "no trainable parameters"):
        AsyncTraining(accelerator, frozen)

    model = _model()
    data = _data()
    cases = [
        ((), ValueError, ["exactly one optimizer", "got 0"]),
        ((model,), TypeError, ["got the model", "AsyncTraining\\(accelerator, model\\)"]),
        (("loader",), TypeError, ["accepts an optimizer", "str"]),
        (
            (torch.optim.SGD(_model().parameters(), lr=0.1),),
            ValueError,
            ["not a parameter of the model", "model.parameters"],
        ),
        ((torch.optim.LBFGS(model.parameters()),), ValueError, ["LBFGS", "first-order"]),
        ((accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1)),), TypeError, ["already prepared", "plain"]),
        (
            (torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(data, batch_size=4), DataLoader(data)),
            ValueError,
            ["at most one", "got 2"],
        ),
        (
            (torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(_Stream(), batch_size=4)),
            ValueError,
            ["IterableDataset", "map-style"],
        ),
        (
            (torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(data, batch_sampler=[[0, 1], [2, 3]])),
            ValueError,
            ["batch_sampler", "batch_size"],
        ),
    ]
    for objects, error, fragments in cases:
        training = AsyncTraining(accelerator, model)
        with _expect(error, *fragments):
            training.prepare(*objects)
        assert training.engine is None

    with AsyncTraining(accelerator, model) as training:
        optimizer = training.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
        directory = training.engine.directory
        with _expect(RuntimeError, "already called"):
            training.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
        model.zero_grad()
        with _expect(RuntimeError, "without a training forward", "model\\(x\\)"):
            optimizer.step()
        with _expect(ValueError, "format"):
            training.load_state_dict({"model": {}})
    with _expect(RuntimeError, "after finish\\(\\)/close\\(\\)"):
        training.state_dict()
    assert not directory.exists()


class _Stream(IterableDataset):
    def __iter__(self):
        yield from (torch.zeros(6) for _ in range(4))


# ---------------------------------------------------------------------- two processes
def _torchrun(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(script), *args]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout}s\n{out}\n{err}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _records(directory: Path) -> list[dict]:
    return [json.loads((directory / f"worker{r}.json").read_text()) for r in range(2)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("optimizer", "accumulation"),
    [("async_adam", 1), ("adam", 2)],  # torch Adam: its state is created lazily by the first step, under a lock
)
def test_two_workers_recipe(tmp_path: Path, optimizer: str, accumulation: int) -> None:
    """The recipe under torchrun: trains, each sample once per epoch, bound obeyed, clean exit."""
    epochs, k = 3, 2
    ckpt = tmp_path / "ckpt.pt"
    result = _torchrun(
        RECIPE,
        *("--epochs", str(epochs), "--max-staleness", str(k), "--slow-rank", "1", "--slow-seconds", "0.02"),
        *("--optimizer", optimizer, "--gradient-accumulation-steps", str(accumulation)),
        *("--checkpoint", str(ckpt), "--record", str(tmp_path / "record")),
        timeout=150,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    head = "lightning_async: 2 workers, engine 'shared_memory', bound policy 'accumulate', max_staleness 2"
    assert head in result.stdout
    assert "final test accuracy" in result.stdout
    records = _records(tmp_path / "record")

    n_train = int(0.8 * 1797)
    for epoch in range(epochs):
        used = records[0]["epochs"][epoch]["indices"] + records[1]["epochs"][epoch]["indices"]
        assert sorted(used) == list(range(n_train)), f"epoch {epoch}: a sample was skipped or used twice"
    # heterogeneity-aware: the slowed worker 1 took fewer batches
    assert sum(e["batches"] for e in records[0]["epochs"]) > sum(e["batches"] for e in records[1]["epochs"])
    # it trains: the loss falls, and the weights every worker ends with classify well
    for record in records:
        assert record["epochs"][-1]["mean_loss"] < 0.5 * record["epochs"][0]["mean_loss"]
        assert record["final_accuracy"] > 0.85
    assert records[0]["final_accuracy"] == records[1]["final_accuracy"]  # same final weights everywhere
    # the bound: counters add up and no applied update is staler than K
    c = records[0]["counters"]
    assert c["applied"] + c["rejected_stale"] + c["rejected_nonfinite"] == c["received"]
    hist = records[0]["staleness_histogram"]
    assert sum(hist) == c["applied"] == records[0]["version"]
    assert all(n == 0 for n in hist[k + 1 :])
    assert c["samples"] == epochs * n_train
    # the checkpoint loads with weights_only and holds the engine state
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == epochs and state["engine"]["num_workers"] == 2
    # nothing left behind
    for record in records:
        assert not pid_alive(record["pid"])
        assert not Path(record["shm_directory"]).exists()


@pytest.mark.timeout(180)
def test_two_workers_failure_cleans_up(tmp_path: Path) -> None:
    """Worker 1 raises; torchrun stops worker 0: non-zero exit, no process and no shared memory left."""
    result = _torchrun(FAILING, str(tmp_path), timeout=120)
    assert result.returncode != 0
    assert "worker 1 fails on purpose" in result.stderr
    records = _records(tmp_path)
    assert records[0]["shm_directory"] == records[1]["shm_directory"]
    for record in records:
        assert not pid_alive(record["pid"])
    assert not Path(records[0]["shm_directory"]).exists()


def _launch_without_agent(script: Path, *args: str, timeout: float) -> list[subprocess.CompletedProcess]:
    """Two processes with torch.distributed's environment and no torchrun agent, so that nothing but the engine
    stops a worker whose peer failed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(
            os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        )
        procs.append(subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return results


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("failing", "mode"), [(1, "with"), (0, "with"), (1, "bare")])
def test_a_failing_worker_stops_the_other_naming_the_cause(tmp_path: Path, failing: int, mode: str) -> None:
    """No agent to stop the survivor: the failing worker's engine tells it (at its next step) why the run ends;
    before, it trained on alone (the failing worker was 0) or stopped only once it noticed the dead process."""
    started = time.monotonic()
    results = _launch_without_agent(FAILING, str(tmp_path), str(failing), mode, timeout=90)
    elapsed = time.monotonic() - started
    other = 1 - failing
    assert results[failing].returncode != 0 and f"worker {failing} fails on purpose" in results[failing].stderr
    survivor = results[other]
    assert survivor.returncode != 0, survivor.stderr[-2000:]
    cause = f"RuntimeError: worker {failing} fails on purpose"
    if mode == "bare":
        cause = f"worker {failing}'s process exited before AsyncTraining.finish()"
    assert f"RunAbortedError: worker {failing} stopped the run ({cause}" in survivor.stderr, survivor.stderr[-2000:]
    assert elapsed < 40  # the survivor had about 50 s of steps left
    records = _records(tmp_path)
    for record in records:
        assert not pid_alive(record["pid"])
    assert not Path(records[0]["shm_directory"]).exists()


@pytest.mark.timeout(180)
def test_accelerator_save_state_and_load_state(tmp_path: Path) -> None:
    """``accelerator.register_for_checkpointing(training)`` + ``save_state``/``load_state`` resume exactly."""
    data = _data()
    accelerator = Accelerator(cpu=True)

    def run(epochs: int, load: bool = False):
        model = _model()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        with AsyncTraining(accelerator, model, max_staleness=0) as training:
            accelerator.register_for_checkpointing(training)
            opt, loader = training.prepare(optimizer, DataLoader(data, batch_size=8, shuffle=True))
            if load:
                accelerator.load_state(tmp_path / "state")
            for epoch in range(epochs):
                _train(accelerator, model, opt, loader, epochs=1)
                if not load and epoch == 0:
                    accelerator.save_state(tmp_path / "state")
            telemetry = training.finish()
        accelerator._custom_objects.clear()
        accelerator._optimizers.clear()
        return model, telemetry

    straight, t1 = run(3)
    resumed, t2 = run(2, load=True)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert t1.version == t2.version == 21
