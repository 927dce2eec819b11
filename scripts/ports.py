"""Free loopback ports for the servers that development, the tests and the bench start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A free loopback port for a server to listen on, below the kernel's ephemeral range if it can.

    A port the kernel handed out as ephemeral may be given again, meanwhile, to some client
    connection as its local port, and then a server started (or restarted) on it cannot bind.
    """
    low = ephemeral_ports_start()
    candidates = range(max(1024, low - 12_000), low)
    for port in random.sample(candidates, min(len(candidates), 50)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ephemeral_ports_start() -> int:
    """The first port of the range the kernel picks client connections' local ports from."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
