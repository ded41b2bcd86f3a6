"""An App opened and closed from several threads and loops at once, and its in-memory
database shared by its own calls and its `*_sync` calls: each open holds it open, the last
close closes it, and neither side locks the other out."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from offload import App, BackendError, Context, Message, Settings
from offload.testing import run_jobs


class Ping(Message):
    n: int = 0


def make(url: str, folder: Path) -> App:
    app = App("life", settings=Settings(url=url, blobs_url=str(folder / "blobs")))
    app.message("life.ping")(Ping)

    @app.handles(Ping)
    async def ping(msg: Ping, ctx: Context) -> int:
        return msg.n

    return app


def test_opens_and_closes_from_several_threads_leave_it_closed(tmp_path: Path) -> None:
    # Given four threads, each opening the app on a loop of its own, again and again
    app = make(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)
    errors: list[BaseException] = []

    async def use() -> None:
        for _ in range(300):
            await app.open()
            try:
                app._require_backend()  # open means open, whatever another thread closed
            finally:
                await app.close()

    def thread() -> None:
        try:
            asyncio.run(use())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    # Then each open found it open, and the last close closed it
    assert errors == []
    assert (app._users, app._backend) == (0, None)


@pytest.mark.anyio
async def test_sync_calls_and_the_app_share_an_in_memory_database_without_locking_out(
    tmp_path: Path,
) -> None:
    # Given an app on memory://, its worker running while a thread enqueues with
    # enqueue_sync and reads with status_sync (two connections to one database)
    app = make("memory://", tmp_path)
    errors: list[BaseException] = []
    done = threading.Event()

    def producer() -> None:
        try:
            for n in range(150):
                app.enqueue_sync(Ping(n=n)).status_sync()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    async with app:
        thread = threading.Thread(target=producer)
        thread.start()
        ran = 0
        while not done.is_set():
            ran += len(await run_jobs(app, max_jobs=10_000))
        thread.join()
        ran += len(await run_jobs(app, max_jobs=10_000))

    # Then neither side failed ("database table is locked"), and every job ran once
    assert [e for e in errors if isinstance(e, BackendError)] == []
    assert errors == []
    assert ran == 150


@pytest.mark.anyio
async def test_configure_in_a_coroutine_gives_memory_a_new_database(tmp_path: Path) -> None:
    # Given a test that used an in-memory app without opening it
    app = make("memory://", tmp_path)
    await app.enqueue(Ping(n=1))

    # When the next test's fixture configures it again, in a coroutine, and opens it
    app.configure(Settings(url="memory://", blobs_url=str(tmp_path / "blobs")))
    async with app:
        await app.enqueue(Ping(n=2))
        ran = await run_jobs(app)

    # Then it sees only its own job
    assert [row.payload["n"] for row in ran] == [2]
