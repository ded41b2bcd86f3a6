"""Backend URL parsing: which SQLite file (or in-memory database) a URL names."""

from __future__ import annotations

import pytest

from offload.brokers import open_backend
from offload.brokers.sqlite import SQLiteBackend
from offload.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///offload.db", "offload.db"),
        ("sqlite:///data/jobs.db", "data/jobs.db"),
        ("sqlite:////var/lib/offload/jobs.db", "/var/lib/offload/jobs.db"),
        ("sqlite:///jobs.db?synchronous=FULL", "jobs.db"),
    ],
)
def test_sqlite_url_names_a_file(url: str, path: str) -> None:
    assert SQLiteBackend.from_url(url).path == path


def test_sqlite_url_synchronous_option() -> None:
    assert SQLiteBackend.from_url("sqlite:///jobs.db?synchronous=full").synchronous == "FULL"
    assert SQLiteBackend.from_url("sqlite:///jobs.db").synchronous == "NORMAL"


def test_sqlite_url_wal_cap_option() -> None:
    assert SQLiteBackend.from_url("sqlite:///jobs.db?wal_cap_mib=16").wal_cap_bytes == 16 << 20
    assert SQLiteBackend.from_url("sqlite:///jobs.db").wal_cap_bytes == 64 << 20
    for bad in ("lots", "0", "-1"):
        with pytest.raises(ConfigurationError, match="wal_cap_mib"):
            SQLiteBackend.from_url(f"sqlite:///jobs.db?wal_cap_mib={bad}")


@pytest.mark.parametrize("url", ["memory://", "sqlite://", "sqlite:///:memory:"])
def test_memory_urls_give_a_private_in_memory_database(url: str) -> None:
    first, second = SQLiteBackend.from_url(url), SQLiteBackend.from_url(url)
    assert first.path.startswith("file:") and "mode=memory" in first.path
    assert first.path != second.path  # two backends never share one memory database


def test_two_slash_sqlite_url_does_not_silently_lose_jobs() -> None:
    try:
        backend = SQLiteBackend.from_url("sqlite://jobs.db")
    except ConfigurationError:
        return
    assert "mode=memory" not in backend.path


def test_unknown_scheme_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="mysql"):
        open_backend("mysql://localhost/db")
