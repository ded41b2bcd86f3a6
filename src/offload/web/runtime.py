"""What a web tier holds open while it serves: the App and its change-feed hub, opened by a
lifespan or, where none ran (a mounted sub-app), on first use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from ..app import App
from ..brokers.base import Capability
from ..errors import BackendError, ConfigurationError
from .events import Hub

log = logging.getLogger("offload.web")

#: After a failed open on first use, requests within this many seconds fail at once (503)
#: instead of each waiting on another attempt.
DEFAULT_REOPEN_AFTER_S = 1.0
#: How long `answering` waits for the backend before it answers that it does not.
ANSWER_WITHIN_S = 2.0


class Runtime:
    """The open App and hub that every web tier of one App shares in this process.

    A lifespan holds it open from `enter` to `exit`. Where no lifespan ran (a sub-app
    mounted in a host's app never gets the lifespan events), `ensure` opens it on first
    use and holds it until the event loop ends: the loop's end cancels the task holding
    it, which closes the hub and the App like a lifespan's exit.
    """

    def __init__(self, app: App) -> None:
        self._app = weakref.ref(app)  # the registry below is keyed by the App
        self._hub: Hub | None = None
        self._users = 0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._failed_at = -math.inf
        self._failure = ""
        self._holder: asyncio.Task[None] | None = None

    @property
    def app(self) -> App:
        app = self._app()
        if app is None:  # pragma: no cover - the web tier holds its App
            raise ConfigurationError("the App of this web tier is gone")
        return app

    @property
    def hub(self) -> Hub:
        """The running hub.

        Raises:
            ConfigurationError: nothing opened the web tier (`ensure` comes first).
        """
        if self._hub is None:
            raise ConfigurationError(f"the web tier of {self.app.name!r} is not open")
        return self._hub

    def end_streams(self) -> None:
        """End every event stream of this web tier (`Hub.end_streams`): the server is
        shutting down. Nothing to do where it never opened."""
        if self._hub is not None:
            self._hub.end_streams()

    def _locked(self) -> asyncio.Lock:
        # One lock per event loop: a lock used in one loop cannot be waited on in another
        # (a test client may run each request in a loop of its own).
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def enter(self) -> None:
        """Open the App and start the hub, unless they are open already (counted).

        Raises:
            BackendError, ConfigurationError: the backend cannot be opened.
        """
        async with self._locked():
            if self._users == 0:
                await self._open()
            self._users += 1

    async def exit(self) -> None:
        """Give back one `enter`; the last one stops the hub and closes the App."""
        async with self._locked():
            self._users = max(0, self._users - 1)
            if self._users == 0:
                await self._close()

    async def ensure(self) -> Hub:
        """The running hub, opening the App and the hub first where nothing holds them.

        Raises:
            BackendError: the backend is unreachable (or was, less than a second ago).
            ConfigurationError: the backend cannot be used as configured.
        """
        if self._hub is not None:
            return self._hub
        async with self._locked():
            if self._users == 0:
                if time.monotonic() - self._failed_at < DEFAULT_REOPEN_AFTER_S:
                    raise BackendError(self._failure)
                try:
                    await self._open()
                except BackendError as exc:
                    self._failed_at, self._failure = time.monotonic(), str(exc)
                    raise
                self._users += 1
                self._holder = asyncio.create_task(self._hold(), name="offload-web-open")
                log.info(
                    "web tier of %r opened on first use (no lifespan ran)",
                    self.app.name,
                    extra={"action": "web_open_lazily"},
                )
        return self.hub

    async def answering(self) -> None:
        """Whether the backend answers now, for a response that cannot fail once it starts
        (an event stream's 200, a WebSocket accepted): a read of the feed, which the streams
        read too (not `App.ping`, whose write probe fails while SQLite's disk is full, when
        reading jobs and their changes still works), shared with the hub's own reads
        (`Hub.answering`) and bounded as that ping is, not by the backend's retry deadline.

        Raises:
            BackendError: the backend does not answer.
        """
        await self.hub.answering(ANSWER_WITHIN_S)

    async def _hold(self) -> None:
        """Hold the open of `ensure` until this task is cancelled: at the latest when the
        event loop ends (asyncio.run and uvicorn cancel every task left)."""
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self.exit()

    async def _open(self) -> None:
        app = self.app
        await app.open()
        try:
            restarts = Capability.FEED_RESTARTS in app._require_backend().capabilities
            hub = Hub(app, app.last_seq, restarts=restarts)
            await hub.start()
        except BaseException:
            await app.close()
            raise
        self._hub = hub

    async def _close(self) -> None:
        hub, self._hub = self._hub, None
        try:
            if hub is not None:
                await hub.stop()
        finally:
            await self.app.close()


_runtimes: weakref.WeakKeyDictionary[App, Runtime] = weakref.WeakKeyDictionary()


def runtime_of(app: App) -> Runtime:
    """The one Runtime of `app` in this process."""
    runtime = _runtimes.get(app)
    if runtime is None:
        runtime = _runtimes[app] = Runtime(app)
    return runtime


def _offload_app(target: Any) -> App:
    if isinstance(target, App):
        return target
    state = getattr(target, "state", None)
    app = getattr(state, "offload", None)
    if isinstance(app, App):
        return app
    raise TypeError(f"lifespan() takes an offload App or the app create_app made, not {target!r}")


@contextlib.asynccontextmanager
async def lifespan(app: App | Starlette) -> AsyncIterator[None]:
    """Hold the web tier of `app` open: the backend and the change-feed hub.

    For a host application that mounts `create_app(app)`: a mounted app's own lifespan
    never runs, so enter this in the host's lifespan to open the backend at start-up (a
    backend that is down then fails the start, as with `offload web`) and close it at
    shutdown. Without it the web tier opens on its first request and closes when the
    event loop ends.

    Args:
        app: the offload `App`, or the ASGI app `create_app` returned for it.

    Raises:
        BackendError, ConfigurationError: the backend cannot be opened.
    """
    runtime = runtime_of(_offload_app(app))
    await runtime.enter()
    try:
        yield
    finally:
        await runtime.exit()


async def opened(conn: HTTPConnection) -> None:
    """A route dependency: the web tier is open (on first use if no lifespan opened it).

    Raises:
        BackendError: (503) the backend is unreachable.
    """
    if conn.scope["type"] == "http":  # a WebSocket route opens it itself, to refuse in kind
        await conn.app.state.runtime.ensure()
