"""The one restore sequence both front ends use, on two shared-memory engine objects in one process."""

from __future__ import annotations

import secrets
import shutil

import pytest
import torch

from lightning_async._engine.restore import restore_engine_state
from lightning_async._engine.shared_memory import SharedMemoryEngine
from lightning_async._engine.shm import run_directory


@pytest.fixture
def directory():
    path = run_directory(secrets.randbits(62))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _engines(directory):
    models, engines = [], []
    for w in range(2):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2).double()
        params = list(model.parameters())
        engines.append(SharedMemoryEngine(
            directory, w, 2, params, torch.optim.Adam(params, lr=0.1), create=(w == 0),
            max_staleness=1, bound_policy="accumulate", timeout=5.0, max_consecutive_nonfinite=3,
        ))
        models.append(model)
    engines[1].attach_state()
    for e in engines:
        e.start()
    return engines, models


def _train(engine, model, steps):
    for _ in range(steps):
        engine.begin_step(list(model.parameters()))
        model.zero_grad()
        model(torch.ones(4, 3, dtype=torch.float64)).pow(2).sum().backward()
        engine.submit(list(model.parameters()), 4)
    engine.end_epoch(list(model.parameters()))


def test_restore_puts_the_saved_parameters_state_and_versions_back_on_every_worker(directory):
    engines, models = _engines(directory)
    _train(engines[0], models[0], 3)
    saved = engines[0].snapshot()
    saved_params = [p.clone() for p in saved["params"]]
    _train(engines[1], models[1], 2)  # moves parameters, Adam's moments and the version on
    assert engines[0].version == 5
    # what a front end does before the sequence: load the checkpoint's weights into every worker's model
    with torch.no_grad():
        for model in models:
            for p, value in zip(model.parameters(), saved_params):
                p.copy_(value)
    calls = []
    for w, engine in enumerate(engines):  # the creator first: the barrier orders them
        restore_engine_state(
            engine, engine.optimizer, saved["optimizer"], saved["engine"], is_creator=(w == 0),
            barrier=lambda w=w: calls.append(w),
        )
    assert calls == [0, 1]
    for engine in engines:
        assert engine.version == 3
        after = engine.snapshot()
        for p, q in zip(after["params"], saved_params):
            assert torch.equal(p, q)
        saved_moments = [s["exp_avg"] for s in saved["optimizer"]["state"].values()]
        moments = [s["exp_avg"] for s in after["optimizer"]["state"].values()]
        assert all(torch.equal(a, b) for a, b in zip(moments, saved_moments))


def test_a_checkpoint_without_engine_state_keeps_the_versions(directory):
    engines, models = _engines(directory)
    _train(engines[0], models[0], 2)
    saved = engines[0].snapshot()
    for w, engine in enumerate(engines):
        restore_engine_state(engine, engine.optimizer, saved["optimizer"], None, is_creator=(w == 0),
                             barrier=lambda: None)
    assert [e.version for e in engines] == [2, 2]
