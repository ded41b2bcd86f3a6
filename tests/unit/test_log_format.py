"""OFFLOAD_LOG_FORMAT=json: where offload sets logging up (every process it starts, the
supervisor of `--processes` among them, which imports no app and so no logging setup of a
project's), each record is one JSON object with its `extra` fields."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

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


PROJECT = """
from offload import App, Message, SyncContext

app = App("jsonlogs")

@app.message("jsonlogs.ping")
class Ping(Message):
    pass

@app.handles(Ping)
def ping(msg: Ping, ctx: SyncContext) -> None:
    return None
"""


def _offload(tmp_path: Path, form: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`offload ARGV` on the project above (on SQLite in `tmp_path`), logging as `form`."""
    (tmp_path / "jsonlogs.py").write_text(PROJECT)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
        "OFFLOAD_LOG_FORMAT": form,
        "OFFLOAD_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "OFFLOAD_BLOBS_URL": str(tmp_path / "blobs"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "offload", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("form", ["json", "text"])
def test_a_worker_s_banner_and_warnings_are_json_lines_under_json_logs(
    tmp_path: Path, form: str
) -> None:
    # Given a worker started with JSON logs (or text), serving a queue no kind routes to
    argv = ["worker", "--app", "jsonlogs:app", "--queues", "default,defualt"]
    done = _offload(tmp_path, form, *argv, "--exit-when-idle", "0")
    assert done.returncode == 0, done.stderr
    if form == "text":  # the banner a person reads, on stdout
        assert done.stdout.startswith("offload worker (app jsonlogs)\n  backend")
        assert "warning: no kind this worker handles is routed to queue defualt" in done.stderr
        return
    # Then every line it wrote is a JSON object: the banner one record of its own
    assert done.stdout == ""
    records = [orjson.loads(line) for line in done.stderr.splitlines()]
    (serving,) = [r for r in records if r.get("action") == "serving"]
    assert serving["message"] == "offload worker (app jsonlogs)"
    assert serving["level"] == "INFO" and serving["logger"] == "offload"
    assert serving["queues"] == ["default", "defualt"]
    assert serving["kinds"] == ["jsonlogs.ping"]
    assert serving["backend"].startswith("sqlite:///") and serving["blobs"]
    (unrouted,) = [r for r in records if r.get("action") == "queue_unrouted"]
    assert unrouted["level"] == "WARNING" and "queue defualt" in unrouted["message"]


def test_a_server_that_cannot_start_says_why_as_a_json_line_under_json_logs(
    tmp_path: Path,
) -> None:
    done = _offload(tmp_path, "json", "worker", "--app", "jsonlogs:nosuch")
    assert done.returncode == 2, done.stderr
    (record,) = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert (record["level"], record["action"], record["exit_code"]) == ("ERROR", "exit", 2)
    assert "nosuch" in record["message"] and not record["message"].startswith("error:")
