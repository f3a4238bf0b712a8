"""The benchmarks' own machinery, where a bug would make a figure wrong or leave something behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import links  # noqa: E402


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].startswith(prefix)]


@pytest.mark.timeout(60)
@pytest.mark.skipif(links.missing_requirements() is not None,
                    reason=f"emulated links need root and iproute2: {links.missing_requirements()}")
def test_emulated_nodes_are_shaped_reachable_and_always_torn_down():
    prefix = f"lat{os.getpid() % 10000}"
    with pytest.raises(RuntimeError, match="on purpose"), links.EmulatedNodes(3, prefix=prefix) as net:
        net.shape(1000)
        assert len(_namespaces(prefix)) == 4  # three nodes and the switch
        for i, ns in enumerate(net.namespaces):  # both ends of every link carry the token bucket at the rate
            for where, dev in ((ns, net.iface(i)), (net.switch, net.port(i))):
                qdisc = subprocess.run(["ip", "netns", "exec", where, "tc", "qdisc", "show", "dev", dev],
                                       capture_output=True, text=True, check=True).stdout
                assert "tbf" in qdisc and "rate 1Gbit" in qdisc
        before = net.switched_bytes()
        # node 0 reaches node 2 through the switch (a TCP connection to a closed port is refused, not lost)
        probe = (f"import socket\ntry:\n    socket.create_connection(('{net.address(2)}', 9), timeout=5)\n"
                 "except ConnectionRefusedError:\n    print('refused')\n")
        reached = subprocess.run(net.command(0, [sys.executable, "-c", probe]), capture_output=True, text=True,
                                 timeout=30)
        assert reached.stdout.strip() == "refused"
        assert net.switched_bytes() > before
        raise RuntimeError("fails on purpose inside the block")
    assert _namespaces(prefix) == []


@pytest.mark.timeout(60)
@pytest.mark.skipif(links.missing_requirements() is not None, reason="emulated links need root and iproute2")
def test_namespaces_left_by_a_killed_run_are_removed_first():
    prefix = f"lak{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", f"{prefix}-n0"], check=True)
    with links.EmulatedNodes(1, prefix=prefix) as net:
        assert sorted(_namespaces(prefix)) == sorted([net.switch, *net.namespaces])
    assert _namespaces(prefix) == []
