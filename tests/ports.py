"""Free loopback ports for the servers a test starts.

Ports come from below the kernel's ephemeral range: a port picked there cannot be taken, in
the moment between picking it and a server binding it, by the local end of some other
process's outgoing connection (a pooled database connection holds one for minutes).

Each pytest-xdist worker picks from a slice of that range of its own (`port_slice`). A port
is free when picked, not when its server binds it: a test that reserved a block for
processes that bind it later (an autoscaled worker's metrics ports) or whose server is still
starting leaves a window in which a test of another worker could pick the same port, and
then the first server to bind answers the other test's requests (a Flask example's login
once reached a worker's metrics endpoint and got 405). Tests of one worker run one after
another, and each stops its servers before the next begins.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_slice(worker: str, workers: int, low: int, high: int) -> tuple[int, int]:
    """The ports [start, end) of pytest-xdist worker `worker` ("gw0", "gw1", ... of
    `workers`) within [low, high): disjoint slices of equal size; the whole range outside
    xdist."""
    if not worker.startswith("gw") or workers <= 1:
        return low, high
    size = (high - low) // workers
    index = int(worker[2:])
    return low + index * size, low + (index + 1) * size


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1, outside the ephemeral
    range, in this test process's slice of it."""
    low, high = port_slice(
        os.environ.get("PYTEST_XDIST_WORKER", ""),
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1),
        _LOWEST,
        max(_ephemeral_start(), _LOWEST + 1000),
    )
    for _ in range(200):
        first = random.randrange(low, high - count)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                probe = socket.socket()
                held.append(probe)
                probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for probe in held:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


def free_port() -> int:
    """A port free on 127.0.0.1, outside the ephemeral range."""
    return free_ports(1)
