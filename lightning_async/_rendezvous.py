"""The run's c10d store and where it, and gloo, listen: never on more network interfaces than the run needs.

c10d's ``TCPStore`` listens on every interface of rank 0's machine by default, and the store holds the run's keys
(its namespace token, the live collectives' payloads): anyone who can reach the port can list and write them.
Here rank 0 opens the listening socket itself, bound to ``MASTER_ADDR`` only (``127.0.0.1`` on one node under
Lightning's launcher), and hands it to the store. On one node, gloo's own connections go over the loopback
interface too, unless ``GLOO_SOCKET_IFNAME`` says otherwise. Under torchrun, torchrun's agent hosts the store
(``TORCHELASTIC_USE_AGENT_STORE``) and every rank is a client: where it listens is torchrun's ``--master-addr``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

_IFF_LOOPBACK = 0x8


def uses_agent_store() -> bool:
    """Whether torchrun's agent hosts the store (every rank then connects as a client), as torch decides it."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)


def create_store(address: str, port: int, world_size: int, rank: int, timeout: timedelta) -> dist.TCPStore:
    """The run's store: rank 0 serves it on ``address`` only, the other ranks connect to it."""
    if uses_agent_store():
        return dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout, wait_for_workers=False)
    if rank != 0:
        return dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout, wait_for_workers=True)
    listener = listen_on(address, port)
    # the store takes over the socket (detach: Python must not close the descriptor when the object goes)
    return dist.TCPStore(
        address, port, world_size, is_master=True, timeout=timeout, wait_for_workers=True,
        master_listen_fd=listener.detach(),
    )


def listen_on(address: str, port: int) -> socket.socket:
    """A listening TCP socket bound to ``address`` (one of this machine's addresses), or, when ``address`` is not
    one of them (a name behind NAT, a load balancer), to every interface with a warning that says so."""
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    last_error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(socket.SOMAXCONN)
            return sock
        except OSError as error:
            sock.close()
            last_error = error
            if error.errno == 98:  # EADDRINUSE: the port is taken; another address would not help
                raise
    warnings.warn(
        f"lightning_async: MASTER_ADDR={address!r} is not an address of this machine ({last_error}), so the run's "
        "store listens on every interface. Firewall the port, or set MASTER_ADDR to this machine's address on the "
        "network the nodes share (see docs/multinode.md).",
        stacklevel=2,
    )
    sock = socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", port))
    sock.listen(socket.SOMAXCONN)
    return sock


def is_loopback(address: str) -> bool:
    """Whether ``address`` (a name or an IP) resolves to a loopback address only."""
    try:
        infos = socket.getaddrinfo(address, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def loopback_interface() -> str | None:
    """The name of the loopback network interface (``lo`` on Linux), or ``None`` if none is found."""
    root = Path("/sys/class/net")
    if not root.is_dir():
        return None
    for iface in sorted(root.iterdir()):
        try:
            if int((iface / "flags").read_text(), 16) & _IFF_LOOPBACK:
                return iface.name
        except (OSError, ValueError):
            continue
    return None


def keep_gloo_on_loopback(num_nodes: int, address: str) -> None:
    """On one node, make gloo listen on the loopback interface (it otherwise binds the address the machine's
    host name resolves to, reachable from the network). A user's ``GLOO_SOCKET_IFNAME`` is left alone."""
    if num_nodes != 1 or "GLOO_SOCKET_IFNAME" in os.environ or not is_loopback(address):
        return
    iface = loopback_interface()
    if iface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = iface
