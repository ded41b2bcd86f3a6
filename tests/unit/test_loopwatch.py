"""Where the loop watch says a blocked loop is: the user's own code, found by path."""

from __future__ import annotations

import asyncio
import logging
import os
import sysconfig
import threading
from pathlib import Path

import pytest

from offload.worker import loopwatch
from offload.worker.loopwatch import LoopWatch, _handler_in, _users, _where

STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
OFFLOAD = Path(loopwatch.__file__).resolve().parents[1]


def test_the_users_code_is_neither_offload_nor_the_standard_library() -> None:
    assert not _users(str(OFFLOAD / "worker" / "runner.py"))
    assert not _users(str(STDLIB / "asyncio" / "base_events.py"))
    assert _users("/srv/myproj/worker.py")
    # packages installed under the standard library's folder (a system or image Python)
    assert _users(str(STDLIB / "site-packages" / "myapp" / "handlers.py"))
    # a sibling of offload's folder whose name only starts the same
    assert _users(str(OFFLOAD.parent / f"{OFFLOAD.name}_jobs" / "handlers.py"))
    assert os.sep in loopwatch._OFFLOAD[-1:]


def test_where_names_the_innermost_frame_of_the_users_code() -> None:
    namespace: dict[str, object] = {}
    code = compile(
        "import sys\ndef handler():\n    return sys._getframe()\n", "/srv/myproj/worker.py", "exec"
    )
    exec(code, namespace)
    frame = namespace["handler"]()  # type: ignore[operator]
    assert _where(frame) == "/srv/myproj/worker.py:3 in handler"
    assert _where(None) == "an unknown place"


def test_a_handler_run_in_a_task_of_its_own_is_found_in_the_stack() -> None:
    def handler() -> object:
        import sys

        return sys._getframe()

    frame = handler()
    assert _handler_in(frame, {handler.__code__: "reports.export"}) == "reports.export"
    assert _handler_in(frame, {}) is None


def test_an_event_loops_own_package_is_not_the_users_code() -> None:
    assert not _users(str(STDLIB / "site-packages" / "uvloop" / "__init__.py"))
    assert not _users("/srv/venv/lib/python3.12/site-packages/uvloop/__init__.py")


def test_a_block_while_plain_handlers_run_names_them_and_the_gil(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a watch whose loop runs no handler's task (a plain handler's thread holds the
    # GIL: the loop waits for it wherever it is)
    watch = LoopWatch(lambda job_id: None, {}, in_threads=lambda: ["j1 (reports.export)"])
    loop = asyncio.new_event_loop()
    try:
        watch._loop, watch._loop_thread = loop, threading.get_ident()
        with caplog.at_level(logging.WARNING, logger="offload.worker"):
            watch._tell(2.5)
    finally:
        loop.close()
    (said,) = caplog.records
    text = said.getMessage()
    assert text.startswith("the event loop has been blocked for 2.5s, at ")
    assert "while plain handlers run in threads (j1 (reports.export))" in text
    assert "holds the interpreter's lock (GIL)" in text
