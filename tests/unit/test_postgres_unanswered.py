"""A PostgreSQL server that takes connections and answers nothing (a network that hangs, a
proxy that stalls) is an outage like a refused connection: retried until the retry
deadline, then out of reach. A connect timed out was raised at once as another error, so a
worker stopped meanwhile waited its flush's guard besides, and named no job."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from offload.brokers import open_backend
from offload.brokers.postgres.backend import PostgresBackend
from offload.errors import BackendError

pytestmark = pytest.mark.anyio


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listener takes connections (the kernel's backlog) and never
    answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def test_a_connect_that_gets_no_answer_is_retried_to_the_deadline(silent_port: int) -> None:
    backend = open_backend(
        f"postgresql://postgres@127.0.0.1:{silent_port}/test",
        connect_timeout_s=0.2,
        retry_deadline_s=1.0,
    )
    assert isinstance(backend, PostgresBackend)
    attempts = []

    async def connect(resent: bool) -> None:
        attempts.append(resent)
        await backend._connect()

    with pytest.raises(BackendError, match=r"no answer within 0\.2s") as raised:
        await backend.retrier.run(connect)
    assert len(attempts) >= 2 and raised.value.out_of_reach
