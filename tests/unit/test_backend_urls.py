"""Backend URL parsing: which SQLite file (or in-memory database) a URL names."""

from __future__ import annotations

import pytest

from offload.brokers import name_memory, open_backend
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
    assert SQLiteBackend.from_url("sqlite:///jobs.db?synchronous=2").synchronous == "FULL"


def test_sqlite_url_wal_cap_option() -> None:
    assert SQLiteBackend.from_url("sqlite:///jobs.db?wal_cap_mib=16").wal_cap_bytes == 16 << 20
    assert SQLiteBackend.from_url("sqlite:///jobs.db").wal_cap_bytes == 64 << 20
    for bad in ("lots", "0", "-1"):
        with pytest.raises(ConfigurationError, match="wal_cap_mib"):
            SQLiteBackend.from_url(f"sqlite:///jobs.db?wal_cap_mib={bad}")


@pytest.mark.parametrize("url", ["memory://", "sqlite://", "sqlite:///:memory:"])
def test_memory_urls_give_a_private_in_memory_database(url: str) -> None:
    first, second = SQLiteBackend.from_url(url), SQLiteBackend.from_url(url)
    assert first.in_memory and "memdb" in first.path
    assert first.path != second.path  # two backends never share one memory database


@pytest.mark.parametrize(
    "url", ["memory://", "sqlite://", "sqlite:///:memory:", "memory://?synchronous=FULL"]
)
def test_a_bare_memory_url_is_named_once_and_the_name_shares_the_database(url: str) -> None:
    named = name_memory(url)
    assert named.startswith("memory://app-") and named != name_memory(url)
    assert named.endswith("?synchronous=FULL") == url.endswith("?synchronous=FULL")
    a, b = SQLiteBackend.from_url(named), SQLiteBackend.from_url(named)
    assert a.in_memory and a.path == b.path


@pytest.mark.parametrize(
    "url",
    ["memory://shop", "sqlite:///jobs.db", "postgresql://127.0.0.1/test", "redis://127.0.0.1"],
)
def test_a_url_that_names_its_database_stays_as_it_is(url: str) -> None:
    assert name_memory(url) == url


def test_a_memory_name_is_letters_digits_dashes() -> None:
    with pytest.raises(ConfigurationError, match="letters, digits"):
        SQLiteBackend.from_url("memory://a%20b")
    for url in ("memory:///x", "memory://x/y"):  # (a path, as sqlite:/// takes: ignored)
        with pytest.raises(ConfigurationError, match="has a name, not a path"):
            SQLiteBackend.from_url(url)


def test_two_slash_sqlite_url_does_not_silently_lose_jobs() -> None:
    try:
        backend = SQLiteBackend.from_url("sqlite://jobs.db")
    except ConfigurationError:
        return
    assert not backend.in_memory


def test_unknown_scheme_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="mysql"):
        open_backend("mysql://localhost/db")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # A misspelt option would leave the file at NORMAL, not the FULL asked for.
        ("sqlite:///jobs.db?synchronus=FULL", "unknown SQLite URL option 'synchronus'"),
        ("sqlite:///jobs.db?synchronous=BOGUS", "synchronous must be one of"),
        ("sqlite:///jobs.db?synchronous=FULL;DROP", "synchronous must be one of"),
        ("memory://?nonsense=1", "unknown SQLite URL option 'nonsense'"),
    ],
)
def test_sqlite_url_refuses_options_it_does_not_take(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        open_backend(url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u@127.0.0.1:5432/db?pool_size=abc", "pool_size must be a whole number"),
        ("postgresql://u@127.0.0.1:5432/db?pool_size=0", "pool_size must be a whole number"),
        ("postgresql://u:secret@127.0.0.1:nope/db", "port is no number: '127.0.0.1:nope'"),
    ],
)
def test_postgres_url_numbers_are_judged_before_connecting(url: str, says: str) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigurationError, match=says) as raised:
        open_backend(url)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # redis-py reads a database that is no number as none: database 0, another app's.
        ("redis://127.0.0.1:6379/abc", "database is no number: 'abc'"),
        ("redis://127.0.0.1:6379/7?prefix=a:&bogus=1", "unknown Redis URL option 'bogus'"),
        ("redis://127.0.0.1:6379/7?socket_timeout=abc", "socket_timeout"),
        ("redis://127.0.0.1:6379/7?pool_size=abc", "pool_size must be an integer"),
        ("redis://127.0.0.1:6379/\u00b2", "database is no number"),  # a superscript two
        ("rediss://127.0.0.1:6379/7?ssl_cert_reqs=bogus", "bad Redis URL option"),
    ],
)
def test_redis_url_options_are_judged_before_connecting(url: str, says: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(ConfigurationError, match=says):
        open_backend(url)


def test_redis_url_passes_redis_py_options_through() -> None:
    pytest.importorskip("redis")
    backend = open_backend("redis://127.0.0.1:6379/7?client_name=jobs&socket_keepalive=true")
    assert "client_name=jobs" in backend.url  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "conninfo"),
    [
        # libpq's failover form: each host's port is a number
        (
            "postgresql://u@127.0.0.1:5432,127.0.0.2:5433/db?target_session_attrs=read-write",
            "postgresql://u@127.0.0.1:5432,127.0.0.2:5433/db?target_session_attrs=read-write",
        ),
        # no host in the URL (a socket folder as an option): the // stays for libpq
        ("postgresql:///db?host=/run/postgresql", "postgresql:///db?host=%2Frun%2Fpostgresql"),
        ("postgres://u@[::1]:5432/db", "postgresql://u@[::1]:5432/db"),
    ],
)
def test_postgres_urls_libpq_takes_pass_through(url: str, conninfo: str) -> None:
    pytest.importorskip("psycopg")
    tcp = "keepalives=1&keepalives_idle=10&keepalives_interval=5&keepalives_count=2"
    tcp += "&tcp_user_timeout=20000"
    expected = f"{conninfo}{'&' if '?' in conninfo else '?'}{tcp}"
    assert open_backend(url).conninfo == expected  # type: ignore[attr-defined]


def test_a_postgres_url_keeps_its_own_tcp_settings_and_gets_the_rest() -> None:
    # A server gone silent (packets dropped) held every call on its connections until the
    # kernel gave up, some 15 minutes: libpq's keepalives and tcp_user_timeout, by default.
    pytest.importorskip("psycopg")
    from urllib.parse import parse_qs, urlsplit

    url = "postgresql://u@db/app?keepalives_idle=60&tcp_user_timeout=0&sslmode=require"
    options = parse_qs(urlsplit(open_backend(url).conninfo).query)  # type: ignore[attr-defined]
    assert options == {
        "keepalives_idle": ["60"],
        "tcp_user_timeout": ["0"],
        "sslmode": ["require"],
        "keepalives": ["1"],
        "keepalives_interval": ["5"],
        "keepalives_count": ["2"],
    }


def test_a_postgres_failover_url_with_a_bad_port_is_refused() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigurationError, match="port is no number"):
        open_backend("postgresql://u@127.0.0.1:5432,127.0.0.2:x/db")
