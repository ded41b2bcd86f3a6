"""The `offload` command line: web, worker, dev, demo, jobs, queues."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer

from ._loading import load
from ._loop import run as _run
from .app import App
from .errors import ConfigurationError, OffloadError
from .settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")
#: Seconds `offload web` lets requests (and open event streams) run on after SIGTERM.
DEFAULT_SHUTDOWN_GRACE_S = 5
cli = typer.Typer(
    help="offload: the Web-Queue-Worker pattern for Python.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
jobs_cli = typer.Typer(help="Inspect and steer jobs.", no_args_is_help=True)
cli.add_typer(jobs_cli, name="jobs")


@functools.cache
def _console(stderr: bool = False) -> Console:
    """Rich consoles, made on first use (a worker's start-up need not import rich)."""
    from rich.console import Console

    return Console(stderr=stderr)


AppRef = Annotated[
    str, typer.Option("--app", help="package.module:attribute of the App", envvar="OFFLOAD_APP")
]
Url = Annotated[str | None, typer.Option("--url", help="backend URL (default OFFLOAD_URL)")]


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _app(ref: str | None, url: str | None) -> App:
    if ref is None:
        app = App("offload-cli")
    else:
        app = load(ref)
        if not isinstance(app, App):
            raise ConfigurationError(f"{ref} is a {type(app).__name__}, not an offload.App")
    if url is not None:  # the --url flag beats whatever the app or the environment says
        app.configure(app.settings.with_(url=url))
    return app


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except OffloadError as exc:
        _console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _stop_on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)


def _server(api: Any, host: str, port: int) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # we route signals ourselves
            yield

    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        # Event streams never end on their own: on shutdown, give requests this long, then
        # close the streams (clients resume elsewhere with Last-Event-ID).
        timeout_graceful_shutdown=DEFAULT_SHUTDOWN_GRACE_S,
    )
    return Server(config)


@cli.command()
def web(app: AppRef, host: str = "127.0.0.1", port: int = 8000, url: Url = None) -> None:
    """Serve the HTTP API (never imports handler modules)."""
    from .web import check_bind, create_app

    _setup_logging()
    with _errors():
        offload_app = _app(app, url)
        check_bind(host, offload_app.settings)
        server = _server(create_app(offload_app), host, port)

        async def main() -> None:
            _stop_on_signals(lambda: setattr(server, "should_exit", True))
            await server.serve()

        _console().print(f"offload web on http://{host}:{port}  (app {offload_app.name})")
        _run(main)


@cli.command()
def worker(
    app: AppRef,
    concurrency: Annotated[int, typer.Option(min=1, help="handlers at once per process")] = 16,
    processes: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    prefetch: Annotated[
        int, typer.Option(min=0, help="most jobs claimed ahead of free slots (0: none)")
    ] = 256,
    queues: Annotated[
        str | None,
        typer.Option(help="comma-separated queues (default: every handled one + offload.notify)"),
    ] = None,
    grace: Annotated[float, typer.Option(min=0, help="seconds to finish on SIGTERM")] = 30.0,
    lease: Annotated[float | None, typer.Option(min=0.5, help="lease seconds")] = None,
    url: Url = None,
) -> None:
    """Run handlers for queued jobs."""
    from .worker.runner import Worker
    from .worker.supervisor import Supervisor, worker_argv

    _setup_logging()
    if processes > 1:
        options = [f"--concurrency={concurrency}", f"--prefetch={prefetch}", f"--grace={grace}"]
        options += [f"--queues={queues}"] if queues else []
        options += [f"--lease={lease}"] if lease else []
        options += [f"--url={url}"] if url else []
        raise typer.Exit(Supervisor(worker_argv(app, options), processes).run())
    with _errors():
        offload_app = _app(app, url)
        runner = Worker(
            offload_app,
            queues=queues.split(",") if queues else None,
            concurrency=concurrency,
            prefetch=prefetch,
            lease_s=lease,
            grace_s=grace,
        )

        async def main() -> None:
            _stop_on_signals(runner.request_stop)
            await runner.run()

        _run(main)


@cli.command()
def dev(
    app: AppRef, host: str = "127.0.0.1", port: int = 8000, concurrency: int = 16, url: Url = None
) -> None:
    """Web tier and a worker in one process, for development (imports the handlers)."""
    from .web import check_bind, create_app
    from .worker.runner import Worker

    _setup_logging()
    with _errors():
        offload_app = _app(app, url)
        check_bind(host, offload_app.settings)
        server = _server(create_app(offload_app), host, port)
        runner = Worker(offload_app, concurrency=concurrency)

        async def main() -> None:
            def stop() -> None:
                server.should_exit = True
                runner.request_stop()

            _stop_on_signals(stop)
            worker_task = asyncio.create_task(runner.run())
            # A worker that dies takes the dev server down with it, loudly.
            worker_task.add_done_callback(lambda _t: setattr(server, "should_exit", True))
            await server.serve()
            runner.request_stop()
            await worker_task

        _console().print(f"offload dev on http://{host}:{port} (web + worker: {offload_app.name})")
        _run(main)


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="port of the web pages")] = 8000,
    host: Annotated[str, typer.Option(help="address to serve on (loopback)")] = "127.0.0.1",
    inline: Annotated[
        bool, typer.Option("--inline", help="do the slow work inside the request, to compare")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    folder: Annotated[
        str, typer.Option("--dir", help="working folder (jobs, files, sample data, mail)")
    ] = ".offload-demo",
    pace: Annotated[
        float | None, typer.Option(min=0, help="pause per report month, seconds (default 0.2)")
    ] = None,
) -> None:
    """The reference application: "Export my report", thumbnails and a confirmation email."""
    from pathlib import Path

    from .demo.launcher import run_demo

    _setup_logging()
    with _errors():
        code = run_demo(
            Path(folder), host=host, port=port, workers=workers, inline=inline, pace_s=pace
        )
    raise typer.Exit(code)


def _with_app(ref: str | None, url: str | None, fn: Callable[[App], Awaitable[T]]) -> T:
    offload_app = _app(ref, url)

    async def main() -> T:
        async with offload_app:
            return await fn(offload_app)

    with _errors():
        return _run(main)


OptApp = Annotated[
    str | None,
    typer.Option("--app", envvar="OFFLOAD_APP", help="package.module:attribute (optional)"),
]


@jobs_cli.command("list")
def jobs_list(
    app: OptApp = None,
    url: Url = None,
    state: str | None = None,
    kind: str | None = None,
    owner: str | None = None,
    limit: int = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    from .contract import status_record

    rows = _with_app(
        app, url, lambda a: a.list_jobs(owner=owner, state=state, kind=kind, limit=limit)
    )
    if as_json:
        _console().print_json(orjson.dumps([status_record(r) for r in rows]).decode())
        return
    from rich.table import Table

    table = Table("id", "kind", "queue", "state", "attempt", "owner", "created")
    for r in rows:
        rec = status_record(r)
        table.add_row(
            r.id,
            r.kind,
            r.queue,
            r.state.value,
            f"{r.attempt}/{r.max_attempts}",
            r.owner,
            rec["created_at"],
        )
    _console().print(table)


@jobs_cli.command("show")
def jobs_show(job_id: str, app: OptApp = None, url: Url = None) -> None:
    """Show one job's status record."""
    record = _with_app(app, url, lambda a: a.status(job_id))
    _console().print_json(orjson.dumps(record).decode())


@jobs_cli.command("retry")
def jobs_retry(job_id: str, app: OptApp = None, url: Url = None) -> None:
    """Re-queue a dead, failed or cancelled job with a fresh retry budget."""
    row = _with_app(app, url, lambda a: a.requeue(job_id))
    _console().print(f"job {row.id} is {row.state} again")


@jobs_cli.command("cancel")
def jobs_cancel(job_id: str, app: OptApp = None, url: Url = None) -> None:
    """Cancel a job: a waiting one never runs; a running one is signalled."""
    row = _with_app(app, url, lambda a: a.cancel(job_id))
    what = "cancelled" if row.state == "cancelled" else "asked to stop (running)"
    _console().print(f"job {row.id} {what}")


@jobs_cli.command("purge")
def jobs_purge(
    queue: str,
    app: OptApp = None,
    url: Url = None,
    yes: Annotated[bool, typer.Option("--yes", help="don't ask")] = False,
) -> None:
    """Delete every job waiting in QUEUE (running jobs are left alone)."""
    if not yes:
        typer.confirm(f"delete every waiting job in {queue!r}?", abort=True)
    n = _with_app(app, url, lambda a: a.purge(queue))
    _console().print(f"purged {n} jobs from {queue}")


bench_cli = typer.Typer(help="Benchmarks that print figures (not tests).", no_args_is_help=True)
cli.add_typer(bench_cli, name="bench")


@bench_cli.command("burst")
def bench_burst(
    requests: Annotated[int, typer.Option(min=1, help="concurrent export clicks")] = 100,
    rate: Annotated[float, typer.Option(help="home-page requests per second")] = 20.0,
    seconds: Annotated[float, typer.Option(help="length of the measured window")] = 20.0,
    pace: Annotated[float, typer.Option(min=0, help="report pause per month (s)")] = 0.2,
    workers: Annotated[int, typer.Option(min=1, help="worker processes (queued)")] = 1,
    out: Annotated[str, typer.Option(help="folder for RESULTS.md and burst.png")] = ".",
) -> None:
    """Queued vs inline mode of the demo under a burst of exports: home-page latency."""
    from pathlib import Path

    from .bench.burst import run_burst

    body = _run(
        lambda: run_burst(
            requests=requests,
            rate=rate,
            seconds=seconds,
            pace=pace,
            workers=workers,
            out=Path(out),
        )
    )
    print(body)


@cli.command()
def migrate(url: Url = None) -> None:
    """Create or upgrade the backend's schema (PostgreSQL); a no-op where none is needed."""
    from .brokers import open_backend

    settings = Settings.from_env(url=url)

    async def main() -> list[int]:
        backend = open_backend(settings.url)
        await backend.open(check_schema=False)
        try:
            return await backend.migrate()
        finally:
            await backend.close()

    with _errors():
        applied = _run(main)
    if applied:
        _console().print(f"applied schema migrations {applied}")
    else:
        _console().print("schema is up to date")


@cli.command()
def queues(
    app: OptApp = None, url: Url = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Per-queue stats: queued, scheduled, running, dead, oldest age."""
    stats = _with_app(app, url, lambda a: a.stats())
    if as_json:
        _console().print_json(orjson.dumps(stats).decode())
        return
    from rich.table import Table

    table = Table("queue", "queued", "scheduled", "running", "dead", "oldest age (s)")
    for name, s in sorted(stats.items()):
        table.add_row(
            name,
            str(s["queued"]),
            str(s["scheduled"]),
            str(s["running"]),
            str(s["dead"]),
            f"{s['oldest_age_s']:.1f}",
        )
    _console().print(table)


def main() -> None:
    cli()
