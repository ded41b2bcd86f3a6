"""OFFLOAD_RETRY_DEADLINE: read from the environment, checked, and given to the backends."""

from __future__ import annotations

import pytest

from offload import Settings
from offload.brokers import open_backend
from offload.errors import ConfigurationError


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
