"""A real AWS API for tests: moto's server on a loopback port, one per test session."""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Iterator

import pytest

from .services import unavailable

#: Credentials moto accepts (any), so no client looks for real ones.
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_started: list[str] = []


def probe_moto() -> str | None:
    """None when moto's server can be started here, else why not."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        return f"moto[server] is not installed: {exc}"
    return None


def start_moto() -> str:
    """`http://127.0.0.1:PORT` of the session's moto server (SQS, S3, …), started on first
    use and stopped at exit; sets dummy credentials for the process."""
    if not _started:
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        atexit.register(server.stop)
        for key, value in _CREDENTIALS.items():
            os.environ.setdefault(key, value)
        _started.append(f"http://127.0.0.1:{port}")
    return _started[0]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The moto server's endpoint; skipped when moto is missing, failed under
    OFFLOAD_REQUIRE_SERVICES=1."""
    reason = probe_moto()
    if reason is not None:
        unavailable("moto[server]", reason)
    yield start_moto()
