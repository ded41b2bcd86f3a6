"""`offload demo` as a real OS process for tests: start it on a free port, stop it by signal."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import IO

import httpx

from .ports import free_port


class DemoProcess:
    """One `offload demo` in `root` (its own session, so a group signal reaches only it)."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.folder = root / "demo"
        self.args = args
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
            **(env or {}),
        }
        self.log_path = root / "demo.log"
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_path(self) -> Path:
        return self.folder / "shop.db"

    def start(self, timeout: float = 45.0) -> DemoProcess:
        """Start it and wait until it serves and its workers were started."""
        self._log = open(self.log_path, "wb")  # closed in stop()
        argv = [sys.executable, "-m", "offload", "demo", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*argv, "--dir", str(self.folder), *self.args],
            cwd=self.root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            if self.proc.poll() is None:
                self.kill()
            self._log.close()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"offload demo exited early:\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    if "Press Ctrl-C" in self.output():  # the workers have been started
                        return
            time.sleep(0.1)
        raise RuntimeError(f"offload demo did not come up:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[int]:
        """Process ids of the launcher's child processes (the workers)."""
        assert self.proc is not None
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def leftovers(self) -> list[int]:
        """Live processes started for this demo (their environment names its folder)."""
        marker = f"OFFLOAD_DEMO_DIR={self.folder.resolve()}".encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError):
                pid = int(environ.parent.name)
                if marker in environ.read_bytes().split(b"\0") and alive(pid):
                    found.append(pid)
        return found

    def stop(self, sig: int = signal.SIGINT, *, group: bool = False, timeout: float = 40) -> int:
        """Signal the launcher (or, like a terminal's Ctrl-C, its whole process group) and
        wait for it to exit; returns its exit code. Kills the group if it does not stop."""
        assert self.proc is not None
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            if self._log is not None:
                self._log.close()

    def kill(self) -> None:
        """Last resort: SIGKILL every process of the demo's group."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def expected_totals(data_path: Path, user_id: str, year: int = 2025) -> tuple[int, int]:
    """(orders, revenue in cents) of one shop's year, computed straight from the data set,
    independently of the demo's own queries."""
    with contextlib.closing(sqlite3.connect(data_path)) as conn:
        (orders,) = conn.execute(
            "SELECT COUNT(*) FROM orders WHERE user_id = ? AND ordered_on LIKE ?",
            (user_id, f"{year}-%"),
        ).fetchone()
        (revenue,) = conn.execute(
            "SELECT SUM(l.quantity * l.unit_price_cents) FROM order_lines l"
            " JOIN orders o ON o.id = l.order_id WHERE o.user_id = ? AND o.ordered_on LIKE ?",
            (user_id, f"{year}-%"),
        ).fetchone()
    return int(orders), int(revenue)


def dollars(cents: int) -> str:
    """$1,234.56, formatted with Decimal (not the demo's formatter)."""
    return f"${Decimal(cents) / 100:,.2f}"
