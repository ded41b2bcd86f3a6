"""A TCP forwarder on loopback that a test can cut, as a network between a process and its
server fails: every connection through it is closed, and new ones are refused; or stall,
as a server that takes connections and answers nothing."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class TcpProxy:
    """Forwards 127.0.0.1:`port` (a free port) to `target_port` on 127.0.0.1, on a thread of
    its own, until `cut`. A context manager: leaving it cuts and ends the thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._cut: asyncio.Event | None = None
        #: Set while bytes flow; cleared by `stall`.
        self._flowing: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._thread.join(30)

    def cut(self) -> None:
        """Close every connection and the listener (new connections are refused)."""
        if self._cut is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                self._loop.call_soon_threadsafe(self._cut.set)

    def stall(self) -> None:
        """Forward nothing more, either way, on any connection (new ones are taken): a
        server that answers nothing."""
        if self._flowing is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._flowing.clear)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._cut = asyncio.Event()
        self._flowing = flowing = asyncio.Event()
        flowing.set()
        writers: set[asyncio.StreamWriter] = set()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    await flowing.wait()
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                writer.close()
                return
            writers.update((writer, up_writer))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._cut.wait()
        flowing.set()  # (stalled pipes go on, to the closed connections, and end)
        server.close()
        for writer in writers:
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
