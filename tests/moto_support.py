"""A real AWS API for tests: moto's server on a loopback port, one per test session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from .services import unavailable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:PORT` of moto's server (SQS, S3, …), with dummy credentials set
    for the session; skipped when moto is missing, failed under OFFLOAD_REQUIRE_SERVICES=1."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable("moto[server]", str(exc))
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = {k: os.environ.get(k) for k in _CREDENTIALS}
    os.environ.update(_CREDENTIALS)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


#: Credentials moto accepts (any), so no client looks for real ones.
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
