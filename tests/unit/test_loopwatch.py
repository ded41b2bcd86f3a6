"""Where the loop watch says a blocked loop is: the user's own code, found by path."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from offload.worker import loopwatch
from offload.worker.loopwatch import _handler_in, _users, _where

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
