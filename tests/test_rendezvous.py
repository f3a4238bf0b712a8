"""The run's store listens on ``MASTER_ADDR`` only; its network errors name rank 0."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import torch.distributed as dist

from lightning_async._engine.ps_common import GuardedStore
from lightning_async._engine.ps_owner import _version_number
from lightning_async._rendezvous import create_store, is_loopback, listen_on
from lightning_async.errors import WorkerDiedError


def _external_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_the_store_listens_on_loopback_only():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = create_store("127.0.0.1", port, 1, 0, timedelta(seconds=10))
    store.set("k", "v")
    assert store.get("k") == b"v"
    external = _external_address()
    if external is None:
        pytest.skip("this machine has no non-loopback address to try")
    with socket.socket() as client, pytest.raises(OSError):
        client.settimeout(2)
        client.connect((external, port))


def test_a_master_address_that_is_not_local_falls_back_with_a_warning():
    with pytest.warns(UserWarning, match="listens on every interface"):
        sock = listen_on("192.0.2.1", 0)  # TEST-NET-1: never an address of this machine
    sock.close()


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("localhost")
    assert not is_loopback("192.0.2.1")


def test_a_lost_store_connection_names_rank_0():
    class Broken:
        def add(self, key, value):
            raise dist.DistNetworkError("Connection reset by peer")

    with pytest.raises(WorkerDiedError, match="rank 0, which hosts the run's store, cannot be reached from rank 3"):
        GuardedStore(Broken(), 3).add("cursor/0", 1)


@pytest.mark.parametrize("value", [1e400, float("nan"), -1, 2.5, "7", True, 2**63])
def test_a_load_request_with_a_bad_version_is_refused(value):
    with pytest.raises(ValueError, match="version"):
        _version_number(value)
    assert _version_number(12) == 12 and _version_number(12.0) == 12
