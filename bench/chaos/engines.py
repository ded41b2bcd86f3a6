"""Private database engines for fault injection: a PostgreSQL cluster and a Redis server of
our own, on free loopback ports, that can be restarted (cleanly or by a crash), and SQLite.

The shared servers of the test suite cannot be restarted under other people's feet; these
can. Each engine owns its processes and directories, and `close` removes them all, also
after a failed start. PostgreSQL's tools refuse to run as root, so when we are root the
cluster runs as the `postgres` OS user, its data directory chowned to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    import redis

#: Seconds a start (or the start after a stop) may take before it counts as failed.
DEFAULT_START_TIMEOUT_S = 60.0
#: Seconds between two probes of an engine that is coming back.
DEFAULT_PROBE_EVERY_S = 0.02
#: The OS user the PostgreSQL cluster runs as when we are root.
DEFAULT_PG_USER = "postgres"
#: The appendfsync policies Redis knows.
APPENDFSYNC = ("always", "everysec", "no")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine(Protocol):
    """One engine an offload backend runs on, as the fault-injection driver drives it."""

    name: str
    setting: str
    url: str
    restartable: bool

    def start(self) -> None: ...

    def close(self) -> None: ...

    def restart(self, *, crash: bool) -> float: ...

    def kill_connections(self) -> int: ...

    def __enter__(self) -> Engine: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _wait_until(ready: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll `ready` until it holds; returns the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout:g}s")
        time.sleep(DEFAULT_PROBE_EVERY_S)
    return time.monotonic()


def _gone(pid: int) -> bool:
    """Whether no process `pid` runs any more (a zombie of ours counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


class _Managed:
    """start on enter, close on exit (close also when start failed half-way)."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- SQLite ----------------------------------------------------------------------------------


class SqliteEngine(_Managed):
    """A database file under `root`: embedded, so there is nothing to restart or kill."""

    name = "sqlite"
    setting = ""
    restartable = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / "offload.db"
        self.url = f"sqlite:///{self.path}"
        self._made_root = False

    def start(self) -> None:
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self._made_root = True

    def close(self) -> None:
        for path in self.root.glob("offload.db*"):  # the database, its -wal and -shm
            path.unlink(missing_ok=True)
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self, *, crash: bool) -> float:
        raise RuntimeError("SQLite is embedded: there is no server to restart")

    def kill_connections(self) -> int:
        return 0


# -- PostgreSQL ------------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else `pg_config --bindir`."""
    found = shutil.which("pg_ctl")
    if found is not None and shutil.which("initdb") is not None:
        return None
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError("initdb/pg_ctl are neither on PATH nor under pg_config") from exc
    return Path(out.stdout.strip())


class PrivatePostgres(_Managed):
    """A PostgreSQL cluster of our own (initdb, pg_ctl) on 127.0.0.1:`port`, fsync on.

    The cluster lives in `root/postgres`. When we are root it runs as the `postgres` user,
    which must be able to reach that folder; if it cannot (a private temporary folder), the
    cluster goes to a fresh folder of the system's temporary directory instead, removed by
    `close` like the rest. The database `offload` is created empty: `offload migrate` (or a
    backend's `migrate`) makes the schema.

    `listen` adds addresses to listen on besides 127.0.0.1 (they must exist when it starts,
    e.g. the host ends of veth pairs), and `clients` the networks (CIDR) trusted to connect
    to them; `url_via(address)` is the URL through one of them.
    """

    name = "postgres"
    setting = ""
    restartable = True

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        listen: Sequence[str] = (),
        clients: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.listen = ("127.0.0.1", *listen)
        self.clients = tuple(clients)
        self.url = self.url_via("127.0.0.1")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.home: Path | None = None
        self._made: list[Path] = []
        self._bindir = _pg_bindir()
        self._as_user = os.geteuid() == 0

    def url_via(self, address: str, database: str = "offload") -> str:
        """The URL of `database` through `address` (127.0.0.1 or one of `listen`)."""
        return f"postgresql://postgres@{address}:{self.port}/{database}"

    @property
    def data(self) -> Path:
        assert self.home is not None, "not started"
        return self.home / "data"

    @property
    def log(self) -> Path:
        assert self.home is not None, "not started"
        return self.home / "server.log"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self.home is not None and self._running():
            return
        if self.home is None:
            self.home = self._make_home()
            self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E",
                     "UTF8", "--no-instructions")  # fmt: skip
            self._configure()
        self._start()
        self._create_database()

    def close(self) -> None:
        try:
            if self.home is not None and self.data.exists():
                self._stop("immediate")
        finally:
            self._kill_leftovers()
            for path in reversed(self._made):
                shutil.rmtree(path, ignore_errors=True)
            self._made.clear()
            self.home = None

    def restart(self, *, crash: bool) -> float:
        """Stop (`-m immediate` when `crash`, else `-m fast`) and start again; returns the
        seconds from the stop's start until a new connection is accepted."""
        began = time.monotonic()
        self.stop(crash=crash)
        self._start()
        return _wait_until(self._accepts, "PostgreSQL", DEFAULT_START_TIMEOUT_S) - began

    def stop(self, *, crash: bool) -> None:
        """Stop the server and leave it down (an outage as long as the caller likes);
        `start` brings it back on the same port with the same data."""
        self._stop("immediate" if crash else "fast")

    def kill_connections(self) -> int:
        """pg_terminate_backend of every other client backend; returns how many."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
        return int(row[0]) if row else 0

    def pid(self) -> int | None:
        """The postmaster's process id, while its pid file is there."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError, AssertionError):
            return None

    # -- plumbing ---------------------------------------------------------------------------

    def _make_home(self) -> Path:
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self._made.append(self.root)
        home = self.root / "postgres"
        home.mkdir()
        self._made.append(home)
        if self._as_user:
            user = pwd.getpwnam(DEFAULT_PG_USER)
            os.chown(home, user.pw_uid, user.pw_gid)
            if not self._reachable(home):
                home = Path(tempfile.mkdtemp(prefix="offload-pg-"))
                self._made.append(home)
                os.chown(home, user.pw_uid, user.pw_gid)
        return home

    def _reachable(self, home: Path) -> bool:
        """Whether the postgres user can write in `home` (every parent traversable)."""
        probe = subprocess.run(self._argv("test", "-w", str(home), "-a", "-x", str(home)))
        return probe.returncode == 0

    def _configure(self) -> None:
        settings = {
            "listen_addresses": f"'{','.join(self.listen)}'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "200",
            "shared_buffers": "32MB",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.writelines(f"host all all {net} trust\n" for net in self.clients)

    def _start(self) -> None:
        self._pg("pg_ctl", "start", "-w", "-t", str(int(DEFAULT_START_TIMEOUT_S)), "-D",
                 str(self.data), "-l", str(self.log))  # fmt: skip
        _wait_until(self._accepts, "PostgreSQL", DEFAULT_START_TIMEOUT_S)

    def _stop(self, mode: str) -> None:
        pid = self.pid()
        if pid is None:
            return
        self._pg("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data), check=False)
        _wait_until(lambda: _gone(pid), "PostgreSQL's stop", DEFAULT_START_TIMEOUT_S)

    def _kill_leftovers(self) -> None:
        """SIGKILL the postmaster's session (pg_ctl starts it in its own), if still up."""
        pid = self.pid() if self.home is not None else None
        if pid is None or _gone(pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:  # never our own group, should pg_ctl not setsid
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(RuntimeError):
            _wait_until(lambda: _gone(pid), "PostgreSQL's kill", 10.0)

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'offload'").fetchone()
            if exists is None:
                conn.execute("CREATE DATABASE offload")

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _argv(self, *argv: str) -> list[str]:
        return ["runuser", "-u", DEFAULT_PG_USER, "--", *argv] if self._as_user else list(argv)

    def _pg(self, tool: str, *args: str, check: bool = True) -> None:
        exe = tool if self._bindir is None else str(self._bindir / tool)
        done = subprocess.run(
            self._argv(exe, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEFAULT_START_TIMEOUT_S + 30,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} {args[0]} failed: {done.stderr.strip() or done.stdout}")

    def _running(self) -> bool:
        pid = self.pid()
        return pid is not None and not _gone(pid)


# -- Redis -----------------------------------------------------------------------------------


class PrivateRedis(_Managed):
    """A redis-server of our own on 127.0.0.1:`port`: append-only file in `root/redis`,
    with the given `appendfsync`, no RDB snapshots (the AOF alone says what survives).
    `listen` adds addresses to listen on besides 127.0.0.1 (they must exist when it starts);
    `url_via(address)` is the URL through one of them."""

    name = "redis"
    restartable = True

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        listen: Sequence[str] = (),
    ) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {APPENDFSYNC}, not {appendfsync!r}")
        self.root = Path(root)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.setting = f"appendfsync={appendfsync}"
        self.listen = ("127.0.0.1", *listen)
        self.url = self.url_via("127.0.0.1")
        self.home = self.root / "redis"
        self.proc: subprocess.Popen[bytes] | None = None
        self._made = False
        self._made_root = False

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self._made:
            self._made_root = not self.root.exists()
            self.home.mkdir(parents=True)
            self._made = True
        self._spawn()

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
        finally:
            self.proc = None
            if self._made:
                shutil.rmtree(self.root if self._made_root else self.home, ignore_errors=True)
                self._made = False

    def restart(self, *, crash: bool) -> float:
        """SIGKILL (`crash`) or SHUTDOWN (the AOF flushed), then start again; returns the
        seconds from the stop's start until PING answers (the AOF loaded)."""
        began = time.monotonic()
        self.stop(crash=crash)
        self._spawn()
        return _wait_until(self._accepts, "Redis", DEFAULT_START_TIMEOUT_S) - began

    def stop(self, *, crash: bool) -> None:
        """SIGKILL (`crash`) or SHUTDOWN the server and leave it down; `start` brings it
        back on the same port with what its AOF kept."""
        assert self.proc is not None, "not started"
        if crash:
            self.proc.kill()
        else:
            client = self._client()
            try:
                client.shutdown(nosave=True)  # SHUTDOWN fsyncs the AOF first
            finally:
                client.close()
        self.proc.wait(timeout=DEFAULT_START_TIMEOUT_S)

    def kill_connections(self) -> int:
        """CLIENT KILL of every other client (normal and pub/sub); returns how many."""
        client = self._client()
        try:
            normal = client.client_kill_filter(_type="normal", skipme=True)
            pubsub = client.client_kill_filter(_type="pubsub", skipme=True)
        finally:
            client.close()
        return int(normal) + int(pubsub)

    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def url_via(self, address: str) -> str:
        """The URL of database 0 through `address` (127.0.0.1 or one of `listen`)."""
        return f"redis://{address}:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def _spawn(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", *self.listen,
                "--dir", str(self.home), "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
                "--logfile", str(self.log), "--protected-mode", self._protected(),
                "--maxmemory-policy", "noeviction"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        _wait_until(self._accepts, "Redis", DEFAULT_START_TIMEOUT_S)

    def _protected(self) -> str:
        """Protected mode refuses every client but loopback ones while no password is set;
        the `listen` addresses are there for clients that are not on loopback (network
        namespaces on this machine), and `--bind` limits the server to exactly them."""
        return "no" if len(self.listen) > 1 else "yes"

    def _client(self) -> redis.Redis:
        """A client that never retries on its own (a retry would blur the measured
        downtime, and SHUTDOWN's lost reply is expected)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    def _accepts(self) -> bool:
        import redis

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({self.proc.returncode}); see {self.log}")
        client = self._client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False  # refused, or still loading the AOF
        finally:
            client.close()


def engine_for(name: str, root: Path, *, setting: str = "") -> Engine:
    """The engine `name` (sqlite, postgres, redis) under `root`; for Redis, `setting` is
    "appendfsync=always" (or just "always"), default everysec."""
    if name == "sqlite":
        return SqliteEngine(root)
    if name == "postgres":
        return PrivatePostgres(root)
    if name == "redis":
        policy = setting.removeprefix("appendfsync=") or "everysec"
        return PrivateRedis(root, appendfsync=policy)
    raise ValueError(f"no engine {name!r} (sqlite, postgres or redis)")
