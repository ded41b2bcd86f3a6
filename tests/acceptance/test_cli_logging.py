"""The logging of offload's long-running commands: where the app's module sets logging up
(as it is imported), that stays, and offload adds none of its own beside it (each line
would print twice); where it does not, offload's own prints INFO to stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: An app module; {setup} is what it does to logging as it is imported.
MODULE = """\
import logging
{setup}
from offload import App, Context, Message

app = App("logged")


@app.message("logged.ping")
class Ping(Message):
    pass


@app.handles(Ping)
async def ping(msg: Ping, ctx: Context) -> None:
    pass
"""
SETUPS = {
    # A library's logging.warning at import sets up a WARNING root by itself.
    "an implicit basicConfig": (
        'logging.warning("APP|root|imported")\n'
        'logging.getLogger().handlers[0].setFormatter(logging.Formatter("APP|%(name)s|%(message)s"))'
    ),
    "basicConfig": 'logging.basicConfig(level=logging.INFO, format="APP|%(name)s|%(message)s")',
    "a root handler": (
        "_h = logging.StreamHandler()\n"
        '_h.setFormatter(logging.Formatter("APP|%(name)s|%(message)s"))\n'
        "logging.getLogger().addHandler(_h)\n"
        "logging.getLogger().setLevel(logging.INFO)"
    ),
}


def _worker_log(tmp_path: Path, setup: str) -> list[str]:
    """The lines `offload worker` writes to stderr, run on an app module that does `setup`
    and exits once idle."""
    (tmp_path / "logged_app.py").write_text(MODULE.format(setup=setup))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OFFLOAD_URL": f"sqlite:///{tmp_path}/j.db"}
    command = ["worker", "--app", "logged_app:app", "--exit-when-idle", "0", "--no-banner"]
    done = subprocess.run(
        [sys.executable, "-m", "offload", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if "offload.worker" in line]


@pytest.mark.parametrize("setup", SETUPS.values(), ids=SETUPS.keys())
def test_the_apps_own_logging_is_used_once(tmp_path: Path, setup: str) -> None:
    lines = _worker_log(tmp_path, setup)
    assert "APP|offload.worker|worker started" in lines
    assert all(line.startswith("APP|") for line in lines), lines
    assert len(lines) == len(set(lines)), lines  # each said once


def test_without_the_apps_logging_offload_logs_info_to_stderr(tmp_path: Path) -> None:
    lines = _worker_log(tmp_path, "")
    assert any(line.endswith(" INFO offload.worker: worker started") for line in lines), lines
