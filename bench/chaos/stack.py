"""The processes under test: one `offload web` and N `offload worker`, started, signalled
and restarted by the driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

import offload

from .engines import free_port

#: The checkout this package lives in (its `bench` package is what the processes import).
TOP = Path(__file__).resolve().parents[2]
#: The sources of the offload the driver imports: the processes import the same one.
SOURCES = Path(offload.__file__).resolve().parents[1]
#: The bearer token the driver's clients send, and the principal it stands for.
TOKEN, PRINCIPAL = "tok-chaos", "chaos"
#: Seconds a started web process has to answer /readyz.
DEFAULT_READY_S = 60.0


class Stack:
    """The web process and the worker slots of one run, each slot holding one process."""

    def __init__(self, root: Path, url: str, *, workers: int, lease_s: float, grace_s: float):
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        self.grace_s = grace_s
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD_", "CHAOS_"))},
            "OFFLOAD_URL": url,
            "OFFLOAD_BLOBS_URL": str(root / "blobs"),
            "OFFLOAD_API_TOKENS": f"{TOKEN}={PRINCIPAL}",
            "OFFLOAD_SECRET_KEY": "chaos-secret-" + "k" * 32,
            "CHAOS_LOG_DIR": str(self.logs),
            "PYTHONPATH": os.pathsep.join(
                [str(TOP), str(SOURCES), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
            ),
        }
        self.port = free_port()
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.exited: list[tuple[int, int | None]] = []  # (pid, exit code) of every worker gone
        self._outs: list[IO[bytes]] = []
        #: The output file of the latest process of each name (web, worker0, ...).
        self.outputs: dict[str, Path] = {}
        self._count = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def skew_file(self, slot: int) -> Path:
        return self.root / f"skew-{slot}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self._count += 1
        path = self.logs / f"{self._count:03d}-{name}.out"
        out = open(path, "wb")
        self._outs.append(out)
        self.outputs[name] = path
        return subprocess.Popen(
            [sys.executable, "-m", "offload", *args],
            cwd=self.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def migrate(self) -> None:
        """Create the backend's store (`offload migrate`), as a deployment does first."""
        out = self.logs / "migrate.out"
        with open(out, "wb") as f:
            code = subprocess.run(
                [sys.executable, "-m", "offload", "migrate"],
                cwd=self.root,
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=120,
            ).returncode
        if code != 0:
            raise RuntimeError(f"offload migrate failed: {out.read_text()[-2000:]}")

    def start_web(self) -> None:
        """Start the web process on the run's port and wait until it is ready; one that
        exits (its engine unreachable as it starts) is started again, as a supervisor would."""
        args = ["web", "--app", "bench.chaos.contracts:app", "--port", str(self.port)]
        deadline = time.monotonic() + DEFAULT_READY_S
        while time.monotonic() < deadline:
            self.web = proc = self._spawn("web", args, self.env)
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            time.sleep(0.5)
        raise RuntimeError("offload web did not become ready")

    def web_alive(self) -> bool:
        return self.web is not None and self.web.poll() is None

    def kill_web(self) -> None:
        assert self.web is not None
        self.web.kill()
        self.web.wait()

    def start_worker(self, slot: int, *, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start the slot's worker; with `wait`, return once it says it started (a fault
        aimed at it hits a running worker, not a process still importing), starting it
        again if it exits first (its engine unreachable as it starts)."""
        proc = self._spawn_worker(slot)
        if wait:
            self.wait_worker(slot)
        return proc

    def _spawn_worker(self, slot: int) -> subprocess.Popen[bytes]:
        env = {**self.env, "CHAOS_SKEW_FILE": str(self.skew_file(slot))}
        args = ["worker", "--app", "bench.chaos.handlers:app", "--concurrency", "8"]
        args += ["--lease", str(self.lease_s), "--grace", str(self.grace_s)]
        self.workers[slot] = proc = self._spawn(f"worker{slot}", args, env)
        return proc

    def wait_worker(self, slot: int) -> None:
        deadline = time.monotonic() + DEFAULT_READY_S
        while time.monotonic() < deadline:
            proc = self.workers[slot]
            assert proc is not None
            out = self.outputs[f"worker{slot}"]
            if b"worker started" in out.read_bytes():
                return
            if proc.poll() is not None:
                self.exited.append((proc.pid, proc.returncode))
                time.sleep(0.5)
                self._spawn_worker(slot)
            time.sleep(0.1)
        raise RuntimeError(f"worker {slot} did not start")

    def signal_worker(self, slot: int, sig: signal.Signals) -> int:
        proc = self.workers[slot]
        assert proc is not None
        proc.send_signal(sig)
        return proc.pid

    def reap(self, slot: int, timeout: float) -> int | None:
        """Wait for the slot's process to exit (None: it did not within `timeout`)."""
        proc = self.workers[slot]
        assert proc is not None
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exited.append((proc.pid, code))
        self.workers[slot] = None
        return code

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.workers if p is not None]

    def stop(self) -> None:
        """Stop every process still running (SIGCONT first: a stopped one cannot exit)."""
        procs = [p for p in [self.web, *self.workers] if p is not None and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in self._outs:
            out.close()
