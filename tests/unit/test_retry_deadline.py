"""OFFLOAD_RETRY_DEADLINE: read from the environment, checked, and given to the backends."""

from __future__ import annotations

import logging

import pytest

from offload import Settings
from offload.brokers import _retry, open_backend
from offload.brokers._retry import RETRY_WARNING_EVERY_S, Retrier
from offload.errors import BackendError, ConfigurationError


def test_the_retry_deadline_defaults_to_10_s_and_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).retry_deadline_s == 10.0
    assert Settings.from_env({"OFFLOAD_RETRY_DEADLINE": "2.5"}).retry_deadline_s == 2.5
    assert Settings.from_env({"OFFLOAD_RETRY_DEADLINE": "0"}).retry_deadline_s == 0.0


@pytest.mark.parametrize("raw", ["-1", "soon"])
def test_a_bad_retry_deadline_is_a_configuration_error(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=r"RETRY_DEADLINE|bad offload setting"):
        Settings.from_env({"OFFLOAD_RETRY_DEADLINE": raw})


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1:5432/db", "redis://127.0.0.1:6379/0"])
def test_server_backends_get_the_retry_deadline(url: str) -> None:
    pytest.importorskip("psycopg" if url.startswith("postgresql") else "redis")
    backend = open_backend(url, retry_deadline_s=3.0)
    assert backend.retrier.deadline_s == 3.0  # type: ignore[attr-defined]
    assert open_backend(url).retrier.deadline_s == 10.0  # type: ignore[attr-defined]


def test_an_outage_is_warned_of_once_every_so_often_not_at_every_retry(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backend's retrier (every call of the backend shares it), on a clock of the
    # test's own, and calls that lose their connection until the server comes back,
    clock = [1000.0]
    monkeypatch.setattr(_retry.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_retry.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    retrier = Retrier(lambda exc: True, deadline_s=60.0, log=logging.getLogger("t"), engine="X")
    failures = [0]

    def attempt(resent: bool) -> str:
        if failures[0]:
            failures[0] -= 1
            raise BackendError("X: connection refused") from ConnectionError()
        return "done"

    def warned() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "action", None) == "backend_retry"]

    with caplog.at_level(logging.DEBUG, logger="t"):
        # when one call retries six times (within 2 s), and two more calls retry at once,
        failures[0] = 6
        assert retrier.run_sync(attempt) == "done"
        for _ in range(2):
            failures[0] = 1
            assert retrier.run_sync(attempt) == "done"
        # then the first retry was a warning, the others debug lines;
        assert [r.levelno for r in warned()] == [logging.WARNING]
        assert clock[0] - 1000.0 < RETRY_WARNING_EVERY_S
        # and a retry 10 s on is warned of again, with how many were not.
        clock[0] += RETRY_WARNING_EVERY_S
        failures[0] = 1
        assert retrier.run_sync(attempt) == "done"
    # (the calls after the first warning answered after retries: the backend said to be
    # back, with the retries not warned of, and the next outage's first retry warned of)
    back = [r for r in caplog.records if getattr(r, "action", None) == "backend_back"]
    assert [r.unsaid for r in back] == [5, 0]  # type: ignore[attr-defined]
    assert [r.unsaid for r in warned()] == [0, 2]  # type: ignore[attr-defined]
    assert "2 more retries since the last warning" in warned()[-1].getMessage()
