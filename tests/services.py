"""Real servers for tests: probes, per-test isolation, and skip-or-fail when one is missing."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest

#: The PostgreSQL the tests use (a database they may create schemas in).
PG_URL = os.environ.get("OFFLOAD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: The Redis the tests use (they only touch keys under their own prefix).
REDIS_URL = os.environ.get("OFFLOAD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_probed: dict[str, str | None] = {}


def unavailable(name: str, reason: str) -> None:
    """Skip the test, or fail it when OFFLOAD_REQUIRE_SERVICES=1 (CI)."""
    if os.environ.get("OFFLOAD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required (OFFLOAD_REQUIRE_SERVICES=1) but unusable: {reason}")
    pytest.skip(f"{name} unavailable: {reason}")


def probe_pg() -> str | None:
    """None when PostgreSQL answers, else why not (probed once per session)."""
    if "pg" not in _probed:
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _probed["pg"] = None
        except Exception as exc:
            _probed["pg"] = f"{type(exc).__name__}: {exc}"
    return _probed["pg"]


def require_pg() -> None:
    reason = probe_pg()
    if reason is not None:
        unavailable("PostgreSQL", reason)


def pg_schema_url(schema: str, **options: str) -> str:
    """PG_URL with its search_path set to `schema` (a test's private namespace)."""
    extra = "".join(f"&{k}={v}" for k, v in options.items())
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}{extra}"


class PgSchema:
    """A fresh schema, migrated to the current version, dropped at the end."""

    def __init__(self, migrate: bool = True, name: str | None = None) -> None:
        """`name`, if given, is used as it is (quoted): upper case, ':' and all."""
        self.name = name or f"offload_t_{secrets.token_hex(5)}"
        path = f'"{self.name}"' if name else self.name
        self.url = pg_schema_url(path, application_name=quote(self.name))
        self.migrate = migrate

    async def create(self) -> str:
        import psycopg

        from offload.brokers.postgres import PostgresBackend

        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA "{self.name}"')
        if self.migrate:
            backend = PostgresBackend.from_url(self.url)
            await backend.open(check_schema=False)
            try:
                await backend.migrate()
            finally:
                await backend.close()
        return self.url

    async def drop(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')

    def create_sync(self) -> str:
        return asyncio.run(self.create())

    def drop_sync(self) -> None:
        asyncio.run(self.drop())


# -- Redis ---------------------------------------------------------------------------------

#: Every test key prefix of this session starts with this, so cleanup never touches others'.
REDIS_SESSION = f"offload-t-{secrets.token_hex(4)}-"
_redis_prefixes: list[str] = []


def probe_redis() -> str | None:
    """None when Redis answers (and the redis package is installed), else why not."""
    if "redis" not in _probed:
        try:
            import redis

            client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
            try:
                client.ping()
            finally:
                client.close()
            _probed["redis"] = None
        except Exception as exc:
            _probed["redis"] = f"{type(exc).__name__}: {exc}"
    return _probed["redis"]


def require_redis() -> None:
    reason = probe_redis()
    if reason is not None:
        unavailable("Redis", reason)


def redis_prefix() -> str:
    """A fresh key prefix for one test; `drop_redis_prefix` (or session exit) deletes it."""
    prefix = f"{REDIS_SESSION}{secrets.token_hex(4)}:"
    if not _redis_prefixes:
        atexit.register(_drop_all_redis_prefixes)
    _redis_prefixes.append(prefix)
    return prefix


def redis_url(prefix: str, **options: str) -> str:
    """REDIS_URL with offload's key prefix (and any other options) in its query."""
    query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
    return f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}{query}"


def drop_redis_prefix(prefix: str) -> int:
    """Delete every key of one test prefix (as RedisBackend names them: `{prefix}…`)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


def drop_redis_url(url: str) -> None:
    """Delete every key of the test prefix a `redis_url` names."""
    drop_redis_prefix(parse_qs(urlsplit(url).query)["prefix"][0])


@contextlib.contextmanager
def server_store(engine: str) -> Iterator[str]:
    """A fresh store on a test server, `postgres` (a migrated schema of its own) or `redis`
    (a key prefix of its own): its URL, dropped after (skipped or failed without the
    server, as `require_pg` and `require_redis` say)."""
    if engine == "postgres":
        require_pg()
        schema = PgSchema()
        yield schema.create_sync()
        schema.drop_sync()
    else:
        require_redis()
        url = redis_url(redis_prefix())
        yield url
        drop_redis_url(url)


def _drop_all_redis_prefixes() -> None:
    if probe_redis() is None:
        drop_redis_prefix(REDIS_SESSION + "*")


class Relay:
    """A TCP relay on loopback to a test server, to take the server away: `stop` closes the
    listener and every relayed connection, as a server that went down would; `resume`
    listens again on the same port, as the server coming back."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.stopped = False
        self.port = 0

    @classmethod
    def to_pg(cls) -> Relay:
        target = urlsplit(PG_URL)
        return cls(target.hostname or "127.0.0.1", target.port or 5432)

    async def start(self) -> int:
        """Listen on a free loopback port; that port."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def start_for(self, url: str) -> str:
        """Listen, and `url` (of the target server) with the relay's address in its place."""
        port = await self.start()
        parts = urlsplit(url)
        user_info = parts.netloc.rpartition("@")[0]
        at = f"{user_info}@" if user_info else ""
        return parts._replace(netloc=f"{at}127.0.0.1:{port}").geturl()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.links.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links.append(up_writer)
        if self.stopped:  # accepted before the stop, connected after it: relays nothing
            writer.close()
            up_writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        """Close the listener and every relayed connection (again: nothing more)."""
        self.stopped = True
        if self.server is None:
            return
        self.server.close()
        for link in self.links:
            link.close()
        await self.server.wait_closed()

    async def resume(self) -> None:
        """Listen again, on the port `start` took, after a `stop`."""
        self.stopped, self.links = False, []
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
