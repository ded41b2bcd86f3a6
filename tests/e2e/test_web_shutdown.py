"""`offload web` stopped (SIGTERM, as a deploy stops it) while clients hold event streams
open: the streams end at once, so the process exits cleanly, instead of waiting out its
graceful timeout and then cancelling each stream with an error and a traceback in its log."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import TEMPLATE, TOKENS, Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    shutil.copytree(TEMPLATE, tmp_path, dirs_exist_ok=True)
    s = Stack(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        yield s
    finally:
        s.stop()


def test_a_stopping_web_process_ends_its_event_streams_and_exits_cleanly(stack: Stack) -> None:
    web = stack.start_web()
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    timeout = httpx.Timeout(30, read=30)
    with httpx.Client(base_url=stack.base, headers=headers, timeout=timeout) as client:
        # Given a client following its jobs (the stream has opened: its position came),
        with client.stream("GET", "/v1/events") as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("id: "))
            # when the process is told to stop,
            web.send_signal(signal.SIGTERM)
            # then the stream ends (the client would resume elsewhere from its last id),
            rest = list(lines)
    assert all(not line.startswith("event:") for line in rest)
    # and the process exits 0, with no error in its log.
    assert web.wait(timeout=60) == 0
    output = stack.output()
    assert "ERROR" not in output and "Traceback" not in output, output
