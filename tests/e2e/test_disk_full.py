"""SQLite on a full disk: submissions answer that the storage is full, readiness says so,
and once space is freed every job accepted before runs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ..services import unavailable
from ..sqlite_support import sqlite_file
from .conftest import TEMPLATE, Stack

pytestmark = pytest.mark.slow

#: The size of the filesystem the database lives on.
DISK = "8m"
STORAGE_FULL = "https://offload.dev/problems/storage-full"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of its own, unmounted at the end whatever happened."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        unavailable("a tmpfs mount", done.stderr.strip() or f"mount exited {done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        if mount.is_mount():  # something still holds a file there: detach it anyway
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def full_stack(tmp_path: Path, disk: Path) -> Iterator[Stack]:
    project = tmp_path / "project"
    shutil.copytree(TEMPLATE, project)
    stack = Stack(project, f"sqlite:///{disk / 'jobs.db'}")
    try:
        yield stack
    finally:
        stack.stop()  # before the disk fixture unmounts


def _fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem has no room left, to its last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (bytes(64 << 10), bytes(512)):
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def _submit(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/jobs/e2e.export", json={"user_id": "u" * 40, "steps": 1})


def _until(
    answer: Callable[[], httpx.Response], status: int, timeout: float = 60
) -> httpx.Response:
    """The first answer with `status`, or the last one when `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        response = answer()
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_a_full_disk_answers_storage_full_and_loses_nothing(full_stack: Stack, disk: Path) -> None:
    stack = full_stack
    stack.start_web()
    alice = stack.client()
    accepted = [_submit(alice).json()["id"] for _ in range(20)]

    # Given the disk under the database filled to its last byte,
    _fill(disk / "filler")
    # when clients go on submitting (the first may still fit in the WAL's old room),
    refused = _until(lambda: _submit(alice), 503, timeout=30)
    accepted += [r["id"] for r in [refused.json()] if refused.status_code == 202]
    # then a submission answers 503 with the storage-full problem, and so does readiness.
    assert refused.status_code == 503, refused.text
    problem = refused.json()
    assert problem["type"] == STORAGE_FULL and "storage is full" in problem["detail"]
    assert refused.headers["content-type"] == "application/problem+json"
    assert "Retry-After" in refused.headers
    ready = alice.get("/readyz")
    assert ready.status_code == 503 and ready.json()["type"] == STORAGE_FULL, ready.text
    assert str(disk) not in refused.text + ready.text  # no server path reaches a client

    # When the space is freed,
    (disk / "filler").unlink()
    # then readiness is back, submissions are accepted, and every job accepted before the
    # disk filled runs to the end, in a database that checks out whole.
    assert _until(lambda: alice.get("/readyz"), 200).status_code == 200
    late = _submit(alice)
    assert late.status_code == 202, late.text
    stack.start_worker("--queues", "reports")
    for job_id in [*accepted, late.json()["id"]]:
        assert (
            stack.wait_state(alice, job_id, {"succeeded", "dead", "failed"}, 60)["state"]
            == "succeeded"
        )
    with sqlite_file(disk / "jobs.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
