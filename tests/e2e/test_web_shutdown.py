"""`offload web` stopped (SIGTERM, as a deploy stops it) while clients hold event streams
open: the streams end at once, so the process exits cleanly, instead of waiting out its
graceful timeout and then cancelling each stream with an error and a traceback in its log."""

from __future__ import annotations

import signal

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import TOKENS, Stack


@pytest.fixture
def stack(sqlite_stack: Stack) -> Stack:
    return sqlite_stack


def test_a_stopping_web_process_ends_its_event_streams_and_exits_cleanly(stack: Stack) -> None:
    web = stack.start_web()
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    timeout = httpx.Timeout(30, read=30)
    with httpx.Client(base_url=stack.base, headers=headers, timeout=timeout) as client:
        ws_url = stack.base.replace("http://", "ws://") + "/v1/ws"
        # Given clients following their jobs, by server-sent events and by WebSocket (both
        # opened: their positions came),
        with (
            client.stream("GET", "/v1/events") as stream,
            connect(ws_url, additional_headers=headers, open_timeout=30) as ws,
        ):
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("id: "))
            assert orjson.loads(ws.recv(timeout=30))["type"] == "hello"
            # when the process is told to stop,
            web.send_signal(signal.SIGTERM)
            # then the stream ends (the client would resume elsewhere from its last id),
            rest = list(lines)
            # and the WebSocket closes as a service restart (1012, uvicorn's close).
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert all(not line.startswith("event:") for line in rest)
    # and the process exits 0, with no error in its log.
    assert web.wait(timeout=60) == 0
    output = stack.output()
    assert "ERROR" not in output and "Traceback" not in output, output
