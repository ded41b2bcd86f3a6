"""A worker's metrics endpoint on loopback answers loopback names only: it asks no
credentials, and a page whose name was rebound to 127.0.0.1 would otherwise read it."""

from __future__ import annotations

import socket

import httpx
import pytest

from offload._hosts import loopback_bind
from offload.metrics import Metrics, serve

pytest.importorskip("prometheus_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_loopback_endpoint_refuses_other_host_names() -> None:
    port = _free_port()
    stop = serve(Metrics(), port, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        ok = httpx.get(url)
        assert ok.status_code == 200 and "offload_" in ok.text
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        rebound = httpx.get(url, headers={"Host": f"rebind.example:{port}"})
        assert rebound.status_code == 421 and "offload_" not in rebound.text
    finally:
        stop()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False)],
)
def test_loopback_bind(host: str, loopback: bool) -> None:
    assert loopback_bind(host) is loopback
