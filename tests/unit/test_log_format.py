"""OFFLOAD_LOG_FORMAT=json: where offload sets logging up (every process it starts, the
supervisor of `--processes` among them, which imports no app and so no logging setup of a
project's), each record is one JSON object with its `extra` fields."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from offload._logging import JsonLines

from ..ports import free_port

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
import warnings
from offload import App, Message, SyncContext

app = App("jsonlogs")

@app.message("jsonlogs.ping")
class Ping(Message):
    pass

@app.handles(Ping)
def ping(msg: Ping, ctx: SyncContext) -> None:
    warnings.warn("ping is deprecated", UserWarning, stacklevel=1)
"""


def _env(tmp_path: Path, form: str) -> dict[str, str]:
    """The environment of a process of the project above (on SQLite in `tmp_path`),
    logging as `form`."""
    (tmp_path / "jsonlogs.py").write_text(PROJECT)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
        "OFFLOAD_LOG_FORMAT": form,
        "OFFLOAD_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "OFFLOAD_BLOBS_URL": str(tmp_path / "blobs"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }


def _offload(tmp_path: Path, form: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`offload ARGV` on the project above, logging as `form`."""
    return subprocess.run(
        [sys.executable, "-m", "offload", *argv],
        env=_env(tmp_path, form),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _records(text: str) -> list[dict[str, Any]]:
    """Each line of `text` as a JSON object (a line that is not one fails the test)."""
    return [orjson.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("form", ["json", "text"])
def test_a_worker_s_banner_and_warnings_are_json_lines_under_json_logs(
    tmp_path: Path, form: str
) -> None:
    # Given a worker started with JSON logs (or text), serving a queue no kind routes to
    # and a job whose handler warns
    enqueue = "import jsonlogs; jsonlogs.app.enqueue_sync(jsonlogs.Ping())"
    subprocess.run(
        [sys.executable, "-W", "error", "-c", enqueue],
        env=_env(tmp_path, form),
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    argv = ["worker", "--app", "jsonlogs:app", "--queues", "default,defualt"]
    done = _offload(tmp_path, form, *argv, "--exit-when-idle", "0")
    assert done.returncode == 0, done.stderr
    if form == "text":  # the banner a person reads, on stdout
        assert done.stdout.startswith("offload worker (app jsonlogs)\n  backend")
        assert "warning: no kind this worker handles is routed to queue defualt" in done.stderr
        return
    # Then every line it wrote is a JSON object: the banner one record of its own
    assert done.stdout == ""
    records = _records(done.stderr)
    (serving,) = [r for r in records if r.get("action") == "serving"]
    assert serving["message"] == "offload worker (app jsonlogs)"
    assert serving["level"] == "INFO" and serving["logger"] == "offload"
    assert serving["queues"] == ["default", "defualt"]
    assert serving["kinds"] == ["jsonlogs.ping"]
    assert serving["backend"].startswith("sqlite:///") and serving["blobs"]
    (unrouted,) = [r for r in records if r.get("action") == "queue_unrouted"]
    assert unrouted["level"] == "WARNING" and "queue defualt" in unrouted["message"]
    # and the handler's warning is a record of the py.warnings logger
    (warned,) = [r for r in records if r["logger"] == "py.warnings"]
    assert "UserWarning: ping is deprecated" in warned["message"]


def test_a_server_that_cannot_start_says_why_as_a_json_line_under_json_logs(
    tmp_path: Path,
) -> None:
    done = _offload(tmp_path, "json", "worker", "--app", "jsonlogs:nosuch")
    assert done.returncode == 2, done.stderr
    (record,) = _records(done.stderr)
    assert (record["level"], record["action"], record["exit_code"]) == ("ERROR", "exit", 2)
    assert "nosuch" in record["message"] and not record["message"].startswith("error:")

    # A module that raises as it is imported: its traceback is the record's exception
    (tmp_path / "broken.py").write_text("import os\nSECRET = os.environ['NO_SUCH_SETTING']\n")
    for command in ("worker", "web"):
        done = _offload(tmp_path, "json", command, "--app", "broken:app")
        assert done.returncode == 1, done.stderr
        (record,) = _records(done.stderr)
        assert (record["action"], record["exit_code"]) == ("exit", 1)
        assert record["message"] == "cannot load the app broken:app"
        assert "KeyError: 'NO_SUCH_SETTING'" in record["exception"]
        assert 'broken.py", line 2' in record["exception"]
    # while a person at text logs reads the traceback as Python prints it
    done = _offload(tmp_path, "text", "worker", "--app", "broken:app")
    assert done.returncode == 1 and "KeyError: 'NO_SUCH_SETTING'" in done.stderr


def test_the_web_server_s_own_lines_are_json_under_json_logs(tmp_path: Path) -> None:
    # Given `offload web` logging JSON
    port = free_port()
    argv = ["web", "--app", "jsonlogs:app", "--port", str(port), "--access-log"]
    web = subprocess.Popen(
        [sys.executable, "-m", "offload", *argv],
        env=_env(tmp_path, "json"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert web.poll() is None and time.monotonic() < deadline
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    # When a client sends what is not HTTP (uvicorn's own warning)
                    conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                    assert conn.recv(4096).startswith(b"HTTP/1.1 400")
                    break
            time.sleep(0.05)
    finally:
        web.terminate()
        out, err = web.communicate(timeout=60)
    # Then every line it wrote is a JSON object, uvicorn's warning among them
    assert out == ""
    records = _records(err)
    assert any(r["logger"] == "uvicorn.error" and r["level"] == "WARNING" for r in records)


def test_a_record_written_inside_a_span_carries_its_trace_and_span_ids() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")

    def line(**extra: object) -> dict[str, Any]:
        record = logging.LogRecord("offload.job", logging.INFO, __file__, 1, "hi", (), None)
        record.__dict__.update(extra)
        parsed: dict[str, Any] = orjson.loads(JsonLines().format(record))
        return parsed

    assert "trace_id" not in line()  # outside any span
    with tracer.start_as_current_span("process reports") as span:
        ids = span.get_span_context()
        said = line()
        own = line(trace_id="the caller's")
    assert said["trace_id"] == f"{ids.trace_id:032x}" and said["span_id"] == f"{ids.span_id:016x}"
    assert own["trace_id"] == "the caller's"  # an extra field of that name is the caller's
    assert "span_id" not in own  # (and no span id of ours is paired with it)
