"""One worker of a multi-process ParameterServerEngine scenario (run by tests/engine/test_parameter_server.py).

Usage: ``python worker.py CONFIG_JSON RANK`` (or under torchrun, with RANK/WORLD_SIZE from the environment and
``init: "env"``). Writes ``<out>/rank<r>.json`` with the outcome; exits 1 on an error (after writing it).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback

import torch
import torch.distributed as dist

torch.set_num_threads(1)


def _light_package() -> None:
    """Import ``lightning_async`` submodules without the package ``__init__`` (which imports Lightning, ~3 s
    per process): the engine needs torch only."""
    import importlib.util
    import types

    if "lightning_async" not in sys.modules:
        spec = importlib.util.find_spec("lightning_async")
        package = types.ModuleType("lightning_async")
        package.__path__ = list(spec.submodule_search_locations)  # type: ignore[union-attr]
        sys.modules["lightning_async"] = package


_light_package()
from lightning_async._engine.parameter_server import ParameterServerEngine  # noqa: E402


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if cfg.get("init") == "env":
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group("gloo")
    else:
        rank, world = int(sys.argv[2]), cfg["world"]
        dist.init_process_group("gloo", init_method=f"file://{cfg['init_file']}", rank=rank, world_size=world)
    out = os.path.join(cfg["out"], f"rank{rank}.json")
    result: dict = {"rank": rank, "verdicts": [], "pid": os.getpid()}
    engine = None
    t0 = time.monotonic()
    try:
        m = model()
        params = list(m.parameters())
        initial = [p.detach().clone() for p in params]
        # constant_grad: every gradient is all ones and SGD has no momentum, so each applied update moves every
        # parameter of its owner's blocks by exactly -lr, however many gradients it sums (their mean is applied)
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.0 if cfg.get("constant_grad") else 0.5)
        engine = ParameterServerEngine(
            rank, world, params, opt, max_staleness=cfg.get("K", 1), bound_policy=cfg.get("policy", "wait"),
            timeout=cfg.get("timeout", 5.0), hang_timeout=cfg.get("hang_timeout"),
            on_worker_failure=cfg.get("on_failure", "stop"), owner_ranks=cfg.get("owners"),
            max_consecutive_nonfinite=3, overlap=cfg.get("overlap"),
        )
        engine.start()
        engine.refresh(params)
        if cfg.get("pipeline") is False:  # overlap on, but every push to a remote owner takes the blocking path
            engine.client._piped = {o: False for o in engine.client._piped}
        result["late_deferred"] = 0
        resolve_late = engine.client._resolve_late

        def counting(owner, posted):  # the verdicts of replies taken at the next begin_step
            result["late_deferred"] += posted.verdict == "deferred"
            return resolve_late(owner, posted)

        engine.client._resolve_late = counting
        gen = torch.Generator().manual_seed(rank)
        jitter = random.Random(cfg.get("seed", 0) * 100 + rank)
        steps = cfg["steps"][rank] if isinstance(cfg["steps"], list) else cfg["steps"]
        for step in range(steps):
            engine.begin_step(params)
            if cfg.get("crash") == [rank, step]:  # holding a read at every owner, mid-step
                os._exit(3)
            if cfg.get("hang") and cfg["hang"][:2] == [rank, step]:
                time.sleep(cfg["hang"][2])
            if rank == cfg.get("slow_rank"):
                time.sleep(cfg.get("delay", 0.05))
            if cfg.get("jitter"):  # uneven random speeds (seeded): rank r sleeps up to (1 + r) * jitter per step
                time.sleep(jitter.random() * cfg["jitter"] * (1 + rank))
            x = torch.randn(4, 3, dtype=torch.float64, generator=gen)
            m.zero_grad()
            if cfg.get("constant_grad"):
                for p in params:
                    p.grad = torch.ones_like(p)
            else:
                m(x).pow(2).mean().backward()
            if cfg.get("nan") == [rank, step]:
                params[0].grad[0, 0] = float("nan")
            result["verdicts"].append(engine.submit(params, 4))
            if cfg.get("telemetry_every") and step % cfg["telemetry_every"] == 0:
                engine.telemetry()  # a logger's periodic read: its replies must not disturb the overlap rule
            if cfg.get("zero_in_place"):  # as zero_grad(set_to_none=False) right after the step would
                for p in params:
                    p.grad.zero_()
            if cfg.get("duplicate") == [rank, step]:
                result["duplicate_verdict"] = engine.client.debug_resend(0)
            if cfg.get("bad_dtype") == [rank, step]:
                engine.begin_step(params)
                block = engine.ownership[0][0]
                result["bad_dtype_verdict"] = engine.client.debug_push(0, [(block, params[block].grad.float())])
                engine.begin_step(params)
                result["bad_shape_verdict"] = engine.client.debug_push(0, [(block, params[block].grad.reshape(-1))])
        # per remote owner, at the end
        result["overlapping"] = {str(o): on for o, on in engine.client.overlapping.items()}
        # per remote owner: the samples the others processed per sample of this worker's (from the owners' replies)
        result["others_faster"] = {str(o): engine.client.rule.others_faster(o)
                                   for o in engine.client.rule.own_samples}
        engine.finish(params)
        result["finished_at"] = time.monotonic() - t0
        if rank == 0:
            result["all_finished"] = engine.wait_for_workers(cfg.get("wait", 20.0))
            tele = engine.telemetry()
            result["counters"] = tele.counters
            result["histogram"] = tele.staleness_histogram
            result["per_worker"] = tele.per_worker
            snap = engine.snapshot()
            engine.refresh(params)
            result["snapshot_matches_params"] = all(torch.equal(a, b) for a, b in zip(snap["params"], params))
            result["snapshot_engine"] = snap["engine"]
            result["snapshot_state_keys"] = sorted(snap["optimizer"]["state"])
            result["finite"] = all(bool(torch.isfinite(p).all()) for p in params)
            if cfg.get("constant_grad"):
                version = {o["rank"]: o["version"] for o in snap["engine"]["owners"]}
                result["sgd_exact"] = all(
                    torch.allclose(snap["params"][b], initial[b] - 0.05 * version[o], rtol=0, atol=1e-12)
                    for o, blocks in engine.ownership.items() for b in blocks
                )
        engine.close()
        result["threads_alive"] = engine.threads_alive()
        result["elapsed"] = time.monotonic() - t0
        with open(out, "w") as f:
            json.dump(result, f)
    except BaseException as e:  # noqa: BLE001 - report whatever stopped the worker
        result["error"] = type(e).__name__
        result["message"] = str(e)
        result["elapsed"] = time.monotonic() - t0
        result["traceback"] = traceback.format_exc()
        with open(out, "w") as f:
            json.dump(result, f)
        sys.stdout.flush()
        os._exit(1)  # do not wait for process-group teardown with a broken peer
    os._exit(0)


if __name__ == "__main__":
    main()
