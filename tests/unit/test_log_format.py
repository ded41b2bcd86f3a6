"""OFFLOAD_LOG_FORMAT=json: where offload sets logging up (every process it starts, the
supervisor of `--processes` among them, which imports no app and so no logging setup of a
project's), each record is one JSON object with its `extra` fields."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import orjson
import pytest

from offload._logging import JsonLines

SAY = """
import logging
from offload.cli import _setup_logging
_setup_logging()
log = logging.getLogger("offload.supervisor")
log.warning("worker process %d exited with %d", 41, -9, extra={"action": "worker_exit"})
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom", extra={"action": "bug", "when": object()})
"""


def _said(form: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OFFLOAD_LOG_FORMAT"}
    if form is not None:
        env["OFFLOAD_LOG_FORMAT"] = form
    done = subprocess.run(
        [sys.executable, "-c", SAY], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_json_lines_carry_the_extra_fields_and_the_traceback() -> None:
    first, second = [orjson.loads(line) for line in _said("json").splitlines()]
    assert first["level"] == "WARNING" and first["logger"] == "offload.supervisor"
    assert first["message"] == "worker process 41 exited with -9"
    assert first["action"] == "worker_exit" and first["time"].endswith("+00:00")
    assert second["action"] == "bug" and second["when"].startswith("<object")
    assert "ZeroDivisionError" in second["exception"]


@pytest.mark.parametrize("form", [None, "text", "yaml"])
def test_text_is_the_default_and_an_unknown_format_is_said(form: str | None) -> None:
    said = _said(form)
    assert "WARNING offload.supervisor: worker process 41 exited with -9" in said
    assert ("is text or json, not 'yaml'" in said) is (form == "yaml")


def test_a_record_without_extras_is_the_four_fields() -> None:
    record = logging.LogRecord("offload", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    line = orjson.loads(JsonLines().format(record))
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["message"] == "hello you"
