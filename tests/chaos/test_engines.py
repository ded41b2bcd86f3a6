"""The private engines of the fault-injection suite: they start, keep what they acknowledged
across a clean and a crash restart, and leave nothing behind once closed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench.chaos.engines import (
    PrivatePostgres,
    PrivateRedis,
    SqliteEngine,
    engine_for,
    free_port,
)

from .engine_support import require_engine


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_free_port_is_bindable_on_loopback() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_postgres_keeps_committed_rows_across_fast_and_immediate_restarts(tmp_path: Path) -> None:
    require_engine("postgres")
    import psycopg

    engine = PrivatePostgres(tmp_path)
    with engine:
        assert engine.url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg.connect(engine.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n integer)")
            conn.execute("INSERT INTO t VALUES (1)")
        # When it stops fast, and then at once (a crash),
        fast = engine.restart(crash=False)
        with psycopg.connect(engine.url, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (2)")
        crash = engine.restart(crash=True)
        # then every committed row is there, and each restart was measured.
        with psycopg.connect(engine.url) as conn:
            assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]
        assert 0 < fast < 60 and 0 < crash < 60
        home, pid = engine.home, engine.pid()
    assert home is not None and pid is not None
    assert not home.exists() and not alive(pid)
    assert list(tmp_path.iterdir()) == []


def test_postgres_kills_the_other_client_connections(tmp_path: Path) -> None:
    require_engine("postgres")
    import psycopg

    with PrivatePostgres(tmp_path) as engine:
        conns = [psycopg.connect(engine.url, autocommit=True) for _ in range(3)]
        try:
            assert engine.kill_connections() == 3
            for conn in conns:
                with pytest.raises(psycopg.OperationalError):
                    conn.execute("SELECT 1")
        finally:
            for conn in conns:
                conn.close()


def test_postgres_close_after_a_failed_start_leaves_nothing(tmp_path: Path) -> None:
    require_engine("postgres")
    engine = PrivatePostgres(tmp_path)
    (tmp_path / "postgres").mkdir()  # in the way: the start fails
    with pytest.raises(FileExistsError):
        engine.start()
    engine.close()
    assert list(tmp_path.iterdir()) == [tmp_path / "postgres"]  # not ours: left alone


@pytest.mark.parametrize("crash", [False, True], ids=["shutdown", "sigkill"])
def test_redis_always_keeps_every_acknowledged_write(tmp_path: Path, crash: bool) -> None:
    require_engine("redis")
    import redis

    engine = PrivateRedis(tmp_path, appendfsync="always")
    with engine:
        assert engine.setting == "appendfsync=always"
        client = redis.Redis(host="127.0.0.1", port=engine.port)
        try:
            for n in range(200):
                client.rpush("acked", n)
        finally:
            client.close()
        pid = engine.pid()
        down = engine.restart(crash=crash)
        client = redis.Redis(host="127.0.0.1", port=engine.port)
        try:
            assert client.llen("acked") == 200
        finally:
            client.close()
        assert 0 < down < 60
        assert engine.pid() != pid
        pid = engine.pid()
        assert pid is not None
    assert not alive(pid)
    assert list(tmp_path.iterdir()) == []


def test_redis_kills_normal_and_pubsub_clients(tmp_path: Path) -> None:
    require_engine("redis")
    import redis

    with PrivateRedis(tmp_path) as engine:
        client = redis.Redis(host="127.0.0.1", port=engine.port)
        listener = redis.Redis(host="127.0.0.1", port=engine.port)
        # Its own connection: a client's pool lends its idle ones to pub/sub.
        pubsub = listener.pubsub()  # type: ignore[no-untyped-call]
        try:
            client.ping()
            pubsub.subscribe("news")
            assert pubsub.get_message(timeout=10) is not None  # the subscription confirmed
            assert engine.kill_connections() == 2
        finally:
            pubsub.close()
            listener.close()
            client.close()


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_close_removes_the_root_it_made(tmp_path: Path, kind: str) -> None:
    require_engine(kind)
    root = tmp_path / "made" / "here"
    engine = PrivatePostgres(root) if kind == "postgres" else PrivateRedis(root)
    with engine:
        assert root.exists()
    assert not root.exists()


def test_sqlite_has_nothing_to_restart(tmp_path: Path) -> None:
    with SqliteEngine(tmp_path / "db") as engine:
        assert engine.url == f"sqlite:///{tmp_path / 'db' / 'offload.db'}"
        assert not engine.restartable
        assert engine.kill_connections() == 0
        with pytest.raises(RuntimeError):
            engine.restart(crash=True)
        (tmp_path / "db" / "offload.db").write_bytes(b"")
    assert not (tmp_path / "db").exists()


def test_engine_for_names_each_engine_and_setting(tmp_path: Path) -> None:
    assert isinstance(engine_for("sqlite", tmp_path), SqliteEngine)
    assert isinstance(engine_for("postgres", tmp_path), PrivatePostgres)
    redis_engine = engine_for("redis", tmp_path, setting="appendfsync=always")
    assert isinstance(redis_engine, PrivateRedis)
    assert redis_engine.setting == "appendfsync=always"
    assert engine_for("redis", tmp_path).setting == "appendfsync=everysec"
    with pytest.raises(ValueError):
        engine_for("oracle", tmp_path)
    with pytest.raises(ValueError):
        PrivateRedis(tmp_path, appendfsync="sometimes")
    assert os.listdir(tmp_path) == []
