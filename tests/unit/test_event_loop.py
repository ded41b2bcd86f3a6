"""The command line's event loop: uvloop where installed, and no trace of it where not."""

from __future__ import annotations

import sys
import traceback

import pytest

from offload import cli


async def _failing_job() -> str:
    """What the worker does with a handler's error: format it for the job's record."""
    try:
        raise ValueError("the handler failed")
    except ValueError as exc:
        return "".join(traceback.format_exception(exc))


def test_without_uvloop_no_traceback_mentions_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    text = cli._run(_failing_job)
    assert "ValueError: the handler failed" in text
    assert "uvloop" not in text and "ModuleNotFoundError" not in text
    assert "During handling" not in text


def test_with_uvloop_the_command_runs_on_it() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def loop_type() -> type:
        import asyncio

        return type(asyncio.get_running_loop())

    assert cli._run(loop_type) is uvloop.Loop
