"""A worker's metrics endpoint (`offload worker --metrics-port`): the metrics at `GET
/metrics` and nowhere else, every refusal a problem document as the web tier's are, no
`Server` header naming the Python version; on loopback it answers loopback names only: it
asks no credentials, and a page whose name was rebound to 127.0.0.1 would otherwise read it."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from offload._hosts import loopback_bind
from offload._problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE
from offload.metrics import Metrics, serve

from ..ports import free_port

pytest.importorskip("prometheus_client")


@contextlib.contextmanager
def served(metrics: Metrics) -> Iterator[str]:
    """The base URL of `metrics` served on loopback."""
    port = free_port()
    stop = serve(metrics, port, "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """One endpoint for the tests that read it only (a stop waits out a poll, 0.5 s)."""
    with served(Metrics()) as url:
        yield url


def assert_problem(answer: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """`answer` is the problem document of `status`, its type ending in `slug`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert answer.headers["cache-control"] == "no-store"
    document: dict[str, Any] = answer.json()
    assert document["type"] == PROBLEM_TYPE_BASE + slug
    assert document["status"] == status and document["title"] and document["detail"]
    assert "offload_" not in answer.text
    return document


def test_a_loopback_endpoint_refuses_other_host_names(endpoint: str) -> None:
    url = f"{endpoint}/metrics"
    port = url.rsplit(":", 1)[1].split("/")[0]
    ok = httpx.get(url)
    assert ok.status_code == 200 and "offload_" in ok.text
    assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
    rebound = httpx.get(url, headers={"Host": f"rebind.example:{port}"})
    document = assert_problem(rebound, 421, "not-loopback-host")
    assert document["instance"] == "/metrics"


@pytest.mark.parametrize("path", ["/nope", "/", "/metrics/", "/metricsx", "/favicon.ico"])
def test_only_the_metrics_path_answers_the_metrics(endpoint: str, path: str) -> None:
    # Prometheus-client's server answers the metrics at any path
    document = assert_problem(httpx.get(endpoint + path), 404, "not-found")
    assert document["instance"] == path
    assert httpx.get(f"{endpoint}/metrics?name[]=offload_worker_slots").status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "HEAD"])
def test_another_method_is_a_405_problem_naming_get(endpoint: str, method: str) -> None:
    answer = httpx.request(method, f"{endpoint}/metrics")
    assert answer.status_code == 405 and answer.headers["allow"] == "GET"
    if method != "HEAD":
        assert_problem(answer, 405, "method-not-allowed")


def test_a_head_is_answered_without_a_body(endpoint: str) -> None:
    answer = _raw(endpoint, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 405 ") and b"Content-Length: " in head and body == b""


def test_no_answer_names_the_server_software(endpoint: str) -> None:
    answers = [
        httpx.get(f"{endpoint}/metrics"),
        httpx.get(f"{endpoint}/nope"),
        httpx.post(f"{endpoint}/metrics"),
        httpx.get(f"{endpoint}/metrics", headers={"Host": "rebind.example"}),
    ]
    assert [a.status_code for a in answers] == [200, 404, 405, 421]
    for answer in answers:
        assert "server" not in answer.headers, answer.headers


class _Broken:
    """A collector whose reading fails."""

    def collect(self) -> Iterator[Any]:
        raise RuntimeError("the reading failed")

    def describe(self) -> list[Any]:
        return []


def test_a_failed_reading_is_a_logged_500_problem(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    metrics.registry.register(_Broken())
    with served(metrics) as endpoint, caplog.at_level(logging.ERROR, logger="offload.metrics"):
        answer = httpx.get(f"{endpoint}/metrics")
    document = assert_problem(answer, 500, "internal-server-error")
    assert "the reading failed" not in answer.text and "server" not in answer.headers
    assert document["detail"] == "internal error"
    # (logged before the answer is written: no wait)
    [record] = [r for r in caplog.records if r.name == "offload.metrics"]
    assert record.action == "metrics_error"  # type: ignore[attr-defined]
    assert record.exc_info is not None and "the reading failed" in str(record.exc_info[1])


def _raw(endpoint: str, request: bytes) -> bytes:
    """What the endpoint answers `request`, read to the end (it closes)."""
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    ],
    ids=["long-line", "long-field", "many-fields"],
)
def test_a_request_the_server_cannot_parse_is_a_problem_document(
    endpoint: str, request_: bytes, status: int
) -> None:
    # The standard library's own refusal is an HTML page whose Server header names the
    # Python version
    answer = _raw(endpoint, request_)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.0 {status} ".encode()), answer[:200]
    fields = head.decode("latin-1").lower()
    assert f"content-type: {PROBLEM_MEDIA_TYPE}" in fields and "server:" not in fields
    response = httpx.Response(status, headers={"content-type": PROBLEM_MEDIA_TYPE}, content=body)
    assert response.json()["type"] == PROBLEM_TYPE_BASE + "request-head-too-large"
    assert response.json()["status"] == status


def test_a_request_line_that_does_not_parse_is_a_problem_document(endpoint: str) -> None:
    # (no head: the server cannot tell the request's HTTP version, so it answers as HTTP/0.9)
    for line, status in ((b"GARBAGE\r\n\r\n", 400), (b"GET /metrics HTTP/9.9\r\n\r\n", 505)):
        answer = _raw(endpoint, line)
        document = httpx.Response(status, content=answer).json()
        assert document["status"] == status and document["type"].startswith(PROBLEM_TYPE_BASE)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False)],
)
def test_loopback_bind(host: str, loopback: bool) -> None:
    assert loopback_bind(host) is loopback


def test_a_health_check_answers_at_healthz_where_one_is_given(endpoint: str) -> None:
    # Without one (the supervisor's endpoint, a web tier's own /metrics), there is no such path;
    assert_problem(httpx.get(f"{endpoint}/healthz"), 404, "not-found")
    # with one, 200 while it finds nothing wrong, and a 503 saying what is wrong once it does.
    said: list[str | None] = [None]
    port = free_port()
    stop = serve(Metrics(), port, "127.0.0.1", health=lambda: said[0])
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        ok = httpx.get(url)
        assert ok.status_code == 200 and ok.json() == {"status": "ok"}
        assert ok.headers["cache-control"] == "no-store"
        assert httpx.head(url).status_code == 200
        said[0] = "the worker's event loop has not run for 12s"
        document = assert_problem(httpx.get(url), 503, "unhealthy")
        assert document["detail"] == said[0] and document["instance"] == "/healthz"
        assert httpx.head(url).status_code == 503
        refused = httpx.post(url)
        assert_problem(refused, 405, "method-not-allowed")
        assert refused.headers["allow"] == "GET, HEAD"
        # and /metrics is as it was.
        assert httpx.head(f"http://127.0.0.1:{port}/metrics").status_code == 405
    finally:
        stop()


@contextlib.contextmanager
def connected(
    monkeypatch: pytest.MonkeyPatch, timeout_s: float
) -> Iterator[tuple[socket.socket, str]]:
    """A connection to a metrics port whose requests' heads must arrive within
    `timeout_s`, and the port's URL (served until the block ends)."""
    from offload import _metrics_endpoint

    monkeypatch.setattr(_metrics_endpoint, "REQUEST_TIMEOUT_S", timeout_s)
    with served(Metrics()) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            yield conn, url


def test_a_connection_that_never_finishes_its_request_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A connection that sent half a request held a thread of the worker's process, and a
    # file, for as long as it stayed open: 300 of them, 300 threads.
    with connected(monkeypatch, timeout_s=0.5) as (conn, url):
        conn.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        assert conn.recv(1024) == b""  # closed by the server (not the test's 30 s)
        # and the endpoint answers the next request as ever
        assert httpx.get(url + "/metrics").status_code == 200


def test_a_request_head_that_trickles_in_is_cut_off_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The timeout bounded each read only: a byte every few seconds held a thread for ever.
    with connected(monkeypatch, timeout_s=1.0) as (conn, _):
        head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 100
        deadline = time.monotonic() + 30
        for byte in head:  # one byte every 0.2 s, never the head's end
            try:
                conn.sendall(bytes([byte]))
            except OSError:  # (shut by the server)
                break
            ready, _, _ = select.select([conn], [], [], 0.2)
            if ready and conn.recv(1024) == b"":
                break
            assert time.monotonic() < deadline
        else:
            pytest.fail("the connection outlived its head's deadline")
