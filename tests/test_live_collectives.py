"""LiveCollectives: store-based collectives that skip ranks known gone (threads stand in for ranks)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist

from lightning_async._live_collectives import LiveCollectives
from lightning_async.errors import WorkerTimeoutError


def _run_ranks(world: int, body, gone: set[int] = frozenset(), timeout: float = 5.0) -> dict[int, object]:
    """Run ``body(collectives, rank)`` for every rank not in ``gone``, each in its own thread, on one store."""
    store = dist.HashStore()
    results: dict[int, object] = {}

    def run(rank: int) -> None:
        live = LiveCollectives(store, rank, world, timeout, is_gone=lambda r: r in gone)
        try:
            results[rank] = body(live, rank)
        except Exception as e:  # noqa: BLE001 - returned for the assertion
            results[rank] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world) if r not in gone]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_reduce_gather_broadcast_and_decisions_among_all_ranks():
    def body(live: LiveCollectives, rank: int):
        live.barrier("start")
        x = torch.tensor([float(rank), 10.0 * rank])
        return (
            live.reduce(x, "sum"), live.reduce(x, "mean"), live.reduce(x, dist.ReduceOp.MAX),
            live.all_gather(torch.arange(rank + 1)),  # shapes differ per rank
            live.broadcast({"path": f"from {rank}"}, src=0),
            live.broadcast(("a", 1) if rank == 0 else None, src=0),  # a tuple: tagged in JSON, type kept
            live.all_true(rank != 2), live.any_true(rank == 2),
        )

    results = _run_ranks(3, body)
    for rank in range(3):
        total, mean, largest, gathered, obj, pair, all_true, any_true = results[rank]
        assert pair == ("a", 1)
        assert torch.equal(total, torch.tensor([3.0, 30.0]))
        assert torch.allclose(mean, torch.tensor([1.0, 10.0]))
        assert torch.equal(largest, torch.tensor([2.0, 20.0]))
        assert [g.tolist() for g in gathered] == [[0], [0, 1], [0, 1, 2]]
        assert obj == {"path": "from 0"}
        assert all_true is False and any_true is True


def test_each_rank_drops_its_key_of_the_previous_call():
    store = dist.HashStore()

    def body(live: LiveCollectives, rank: int):
        for _ in range(5):
            live.barrier()
        return store.num_keys()

    results = {}
    threads = []
    for rank in range(2):
        live = LiveCollectives(store, rank, 2, 5.0, is_gone=lambda r: False)
        threads.append(threading.Thread(target=lambda lv=live, r=rank: results.__setitem__(r, body(lv, r))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert store.num_keys() <= 2 * 2  # the last call's keys and, at most, the one before: not 5 calls' worth


def test_a_gone_rank_is_skipped_not_awaited():
    def body(live: LiveCollectives, rank: int):
        return live.reduce(torch.tensor(float(rank + 1)), "mean"), live.all_true(True)

    results = _run_ranks(3, body, gone={1}, timeout=2.0)
    assert set(results) == {0, 2}
    for mean, decision in results.values():
        assert float(mean) == pytest.approx((1 + 3) / 2) and decision is True


def test_a_missing_live_rank_times_out_naming_it():
    store = dist.HashStore()
    live = LiveCollectives(store, 0, 2, timeout=0.2, is_gone=lambda r: False)
    with pytest.raises(WorkerTimeoutError, match=r"rank\(s\) \[1\] at barrier epoch_end"):
        live.barrier("epoch_end")


def test_unsupported_reduce_op_names_it():
    live = LiveCollectives(dist.HashStore(), 0, 1, timeout=1.0, is_gone=lambda r: False)
    with pytest.raises(ValueError, match="reduce_op 'product'"):
        live.reduce(torch.ones(2), "product")
    assert torch.equal(live.reduce(torch.tensor([1, 2], dtype=torch.int64), "sum"), torch.tensor([1, 2]))
    assert live.reduce(torch.tensor(2.0, dtype=torch.bfloat16), "mean").dtype == torch.bfloat16


def test_broadcast_values_round_trip_as_plain_data():
    from pathlib import Path

    from lightning_async._live_collectives import _pack_object, _unpack_object

    value = {"a": (1, 2.5, None), "b": [True, "x"], 3: Path("/tmp/ckpt"), "t": torch.arange(3)}
    back = _unpack_object(_pack_object(value))
    assert back["a"] == (1, 2.5, None) and back["b"] == [True, "x"] and back[3] == Path("/tmp/ckpt")
    assert torch.equal(back["t"], torch.arange(3))


def test_nothing_received_is_unpickled():
    import pickle

    from lightning_async._live_collectives import _pack_object, _unpack_object

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    with pytest.raises(TypeError, match="only plain data travels"):
        _pack_object(object())
    for payload in (pickle.dumps(Evil()), b"P" + pickle.dumps(Evil())):  # what a peer on the network could write
        with pytest.raises(ValueError):  # not JSON: refused, never executed
            _unpack_object(payload)
