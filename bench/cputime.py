"""CPU seconds spent by a process tree, read from /proc (Linux): a figure that a busy machine
moves far less than wall-clock rates, since time spent waiting for a core is not in it."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

#: Clock ticks per second of /proc's utime and stime.
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/pid/stat after the command name (state first); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _children() -> dict[int, list[int]]:
    """Parent pid -> the pids of its live children, for every process now."""
    found: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            found[int(fields[1])].append(int(entry.name))
    return found


def tree_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) of the processes `pids` and all their descendants: each
    live process's own time plus the time of the children it has reaped, so a child that
    ended (a PostgreSQL backend whose client left) still counts, and none counts twice."""
    children = _children()
    ticks = 0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        fields = _stat(pid)
        if fields is None:
            continue
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        ticks += utime + stime + cutime + cstime
        todo += children.get(pid, [])
    return ticks / TICKS
