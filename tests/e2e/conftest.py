"""End-to-end fixtures: `offload web` and `offload worker` as real OS processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload

from ..ports import free_port
from ..services import (
    PgSchema,
    drop_redis_prefix,
    redis_prefix,
    redis_url,
    require_pg,
    require_redis,
)

TEMPLATE = Path(__file__).parent / "project_template"
#: The sources of the offload under test: the processes import the same one (a checkout's
#: own, not whichever an editable install points at).
SOURCES = Path(offload.__file__).resolve().parents[1]
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
#: How long a started server may take to answer: only a failing start waits it out (a
#: process on a loaded 2-core machine has taken over 20 s to import and bind).
READY_DEADLINE_S = 60


def _inherited_path() -> list[str]:
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return [str(Path(entry).resolve()) for entry in entries if entry]


class Stack:
    """A project folder with its processes: start web and workers, stop them all."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
            "OFFLOAD_URL": url,
            "OFFLOAD_BLOBS_URL": str(root / "blobs"),
            "OFFLOAD_API_TOKENS": ",".join(f"{t}={p}" for p, t in TOKENS.items()),
            "OFFLOAD_SECRET_KEY": "e2e-secret-" + "k" * 32,
            "OFFLOAD_MAX_BODY_BYTES": "4096",
            "E2E_LOG_DIR": str(self.logs),
            # The project first, then the caller's path: the processes run the offload
            # the tests import (a source tree on PYTHONPATH), not whichever one is installed.
            "PYTHONPATH": os.pathsep.join([str(root), *_inherited_path()]),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.closing: list[Any] = []
        self.port = 0
        self.backend = "sqlite"

    def offload(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"proc-{len(self.procs)}.out", "wb")
        self.closing.append(out)
        proc = subprocess.Popen(
            [sys.executable, "-m", "offload", *args],
            cwd=self.root,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offload", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_web(self, app: str = "e2eapp.contracts:app", *flags: str) -> subprocess.Popen[bytes]:
        self.port = free_port()
        proc = self.offload("web", "--app", app, "--port", str(self.port), *flags)
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"offload web exited: {self.output()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("offload web did not become ready")

    def start_worker(self, *args: str, app: str = "e2eapp.handlers:app") -> subprocess.Popen[bytes]:
        return self.offload("worker", "--app", app, *args)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, principal: str = "alice") -> httpx.Client:
        client = httpx.Client(
            base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {TOKENS[principal]}"}
        )
        self.closing.append(client)
        return client

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.out")))

    def log_lines(self, name: str) -> list[str]:
        path = self.logs / name
        return path.read_text().splitlines() if path.exists() else []

    def wait_state(
        self, client: httpx.Client, job_id: str, states: set[str], timeout: float = 30
    ) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        record: dict[str, object] = {}
        while time.monotonic() < deadline:
            record = client.get(f"/v1/jobs/{job_id}").json()
            if record["state"] in states:
                return record
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached {states}: {record}\n{self.output()}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thing in self.closing:
            thing.close()


@contextlib.contextmanager
def backend_url(name: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, isolated backend of kind `name` for one test."""
    if name == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    elif name == "postgres":
        require_pg()
        schema = PgSchema()
        try:
            yield schema.create_sync()
        finally:
            schema.drop_sync()
    elif name == "redis":
        require_redis()
        prefix = redis_prefix()
        try:
            yield redis_url(prefix)
        finally:
            drop_redis_prefix(prefix)
    else:
        raise AssertionError(f"no e2e backend {name}")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The project folder and its processes, on each backend in turn."""
    with backend_url(request.param, tmp_path) as url, project(tmp_path, url) as s:
        s.backend = request.param
        yield s


@contextlib.contextmanager
def project(tmp_path: Path, url: str) -> Iterator[Stack]:
    """The project folder in `tmp_path` on the backend at `url`; its processes stopped at
    the end."""
    shutil.copytree(TEMPLATE, tmp_path, dirs_exist_ok=True)
    s = Stack(tmp_path, url)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sqlite_stack(tmp_path: Path) -> Iterator[Stack]:
    """The project folder and its processes on SQLite alone."""
    with project(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}") as s:
        yield s
