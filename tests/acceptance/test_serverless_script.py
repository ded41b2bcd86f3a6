"""The HTTP function called from a script, as README's "Calling a handler yourself" says one
may: the script ends quietly, what the handler opened closed at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import offload

SOURCE = str(Path(offload.__file__).resolve().parents[1])

SCRIPT = """
import sys
from offload import App, Message, Settings
from offload.serverless.aws import http_handler

app = App("script", settings=Settings(
    url=f"sqlite:///{sys.argv[1]}", api_tokens={"t": "alice"}, secret_key=b"k" * 32
))

@app.message("script.hello")
class Hello(Message):
    name: str

web = http_handler(app)
http = {"method": "GET", "path": "/v1/jobs", "protocol": "HTTP/1.1",
        "sourceIp": "203.0.113.9", "userAgent": "script"}
event = {
    "version": "2.0", "routeKey": "$default", "rawPath": "/v1/jobs", "rawQueryString": "",
    "headers": {"authorization": "Bearer t", "host": "api.example.test"},
    "requestContext": {
        "accountId": "1", "apiId": "a", "domainName": "api.example.test", "http": http,
        "requestId": "r", "routeKey": "$default", "stage": "$default",
        "time": "02/Dec/2026:12:00:00 +0000", "timeEpoch": 0,
    },
    "body": "", "isBase64Encoded": False,
}
print(web(event, None)["statusCode"])
"""


def test_a_script_that_called_the_http_function_exits_quietly(tmp_path: Path) -> None:
    pytest.importorskip("mangum")
    script = tmp_path / "call.py"
    script.write_text(SCRIPT)
    database = tmp_path / "jobs.db"
    env = {**os.environ, "PYTHONPATH": SOURCE}
    migrated = subprocess.run(
        [sys.executable, "-m", "offload", "migrate", "--url", f"sqlite:///{database}"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    # The request opened the web tier on first use: a task holds it open until the loop
    # ends, which in a script is the interpreter's exit.
    ran = subprocess.run(
        [sys.executable, str(script), str(database)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip() == "200", ran.stderr
    assert "Task was destroyed" not in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
