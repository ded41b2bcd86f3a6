"""Free loopback ports for the servers a test starts.

Ports come from below the kernel's ephemeral range: a port picked there cannot be taken, in
the moment between picking it and a server binding it, by the local end of some other
process's outgoing connection (a pooled database connection holds one for minutes).
"""

from __future__ import annotations

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


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1, outside the ephemeral range."""
    top = max(_ephemeral_start(), _LOWEST + 1000) - count
    for _ in range(200):
        first = random.randrange(_LOWEST, top)
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
