"""The `offload` command line: web, worker, dev, demo, jobs, queues, workers, contracts."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import orjson
import typer

from . import __version__
from ._erase import ERASE_WAIT_S
from ._loading import load
from ._logging import JsonLines, print_once
from ._loop import freeze_start_up, raise_open_files
from ._loop import run as _run
from .app import App
from .contract import JobFilter, JobRow, JobState, WorkerInfo
from .errors import ConfigurationError, JobNotFound, OffloadError, SchemaError
from .settings import Settings
from .stores.blobs import describe_blobs, probe_blobs
from .worker.scaling import DEFAULT_SCALE_DOWN_AFTER_S, DEFAULT_TARGET_WAIT_S

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .worker.runner import Worker

T = TypeVar("T")
#: Seconds a worker leaving handlers' threads behind gives the exit functions (`atexit`).
EXIT_FUNCTIONS_S = 5.0
#: When a stopped worker's process, its exit waiting for threads a handler started, says so.
THREADS_LEFT_S = 5.0
#: An open-files limit a web tier warns of at start: a few thousand streams is no crowd.
FEW_OPEN_FILES = 4096
log = logging.getLogger("offload.worker")
#: Seconds `offload web` lets requests (and open event streams) run on after SIGTERM.
DEFAULT_SHUTDOWN_GRACE_S = 5
cli = typer.Typer(
    help="offload: the Web-Queue-Worker pattern for Python.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
jobs_cli = typer.Typer(help="Inspect and steer jobs.", no_args_is_help=True)
cli.add_typer(jobs_cli, name="jobs")
#: Jobs an ambiguous id prefix lists at most.
CANDIDATES_SHOWN = 10
#: Query options of a backend URL whose value is a secret.
_SECRET_OPTIONS = ("password", "pass", "secret", "token")


def _duration(value: str | float) -> float:
    """A duration flag's seconds (`2s`, `500ms`, `1m`, plain seconds), or a usage error."""
    from .worker.scaling import parse_duration

    if isinstance(value, int | float):
        return float(value)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _show_version(value: bool) -> None:
    if value:
        print(f"offload {__version__}")
        raise typer.Exit()


@cli.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """offload: the Web-Queue-Worker pattern for Python."""


@functools.cache
def _console(stderr: bool = False) -> Console:
    """Rich consoles, made on first use (a worker's start-up need not import rich), that
    print text as written: names are not Rich markup (a queue `mail[eu]` printed as
    `mail`, and one holding `[/x]` ended the command with a markup error)."""
    from rich.console import Console

    return Console(stderr=stderr, markup=False)


AppRef = Annotated[
    str, typer.Option("--app", help="package.module:attribute of the App", envvar="OFFLOAD_APP")
]
Url = Annotated[str | None, typer.Option("--url", help="backend URL (default OFFLOAD_URL)")]


#: Loggers whose INFO lines offload's processes leave out (WARNING and above only, where
#: offload sets logging up): the AWS SDK's ("Found credentials in environment variables"),
#: and httpx's, which logs each request's whole URL, a webhook's query string included (it
#: may carry a secret; the delivery record shows the URL without it).
QUIET_LOGGERS = ("aiobotocore", "botocore", "boto3", "aioboto3", "httpx", "httpcore")
#: Loggers whose warnings offload's processes leave out (errors only): psycopg's pool warns
#: of each failed connection attempt, several lines each, all through an outage, which
#: offload's own warnings already tell (the backend's retries, each loop's failures).
OUTAGE_LOGGERS = (("psycopg.pool", logging.ERROR),)


def _setup_logging() -> None:
    """INFO to stderr, unless logging was configured already: then its handlers are left
    alone, and offload's own lines (the worker's start, its stop, a job's failure) still
    pass at INFO unless a level was set on the `offload` logger. A root configured by
    accident (a `logging.warning` call while a module was imported sets up WARNING) would
    otherwise hide them all."""
    if logging.getLogger().handlers:  # the user's own configuration: theirs to tune
        own = logging.getLogger("offload")
        if own.level == logging.NOTSET:
            own.setLevel(logging.INFO)
        return
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    form = _log_format()
    if form == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLines())
        logging.captureWarnings(True)  # a warning is a record too (`py.warnings`)
    elif form != "text":  # (said, not refused: a supervisor would refuse before it said)
        logging.getLogger("offload").warning(
            "OFFLOAD_LOG_FORMAT is text or json, not %r: text", form[:20]
        )
    print_once()  # a line a library's own console handler printed is not printed again
    for name, level in [*((n, logging.WARNING) for n in QUIET_LOGGERS), *OUTAGE_LOGGERS]:
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET:  # a level set on purpose stays
            quiet.setLevel(level)


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


#: Whether this process serves (web, worker, dev): its fatal errors are log records then.
_SERVING = {"now": False}


def _served_app(ref: str, url: str | None) -> App:
    """The app of a command that serves or works, logging set up once it is imported: what
    its module set up is left alone (offload's own beside it would print each line twice)."""
    _SERVING["now"] = True
    try:
        app = _app(ref, url)
    except OffloadError:
        raise  # (said by `_errors`)
    except Exception:
        if not _json_logs():
            raise  # a person reads the traceback: it names the line of the module
        # under JSON logs, the traceback is the record's `exception`
        raise _exit_record(1, f"cannot load the app {ref}", exc_info=True) from None
    _setup_logging()
    return app


class _AmbiguousId(Exception):
    """More than one job's id starts with the prefix given."""

    def __init__(self, prefix: str, ids: Sequence[str], more: bool) -> None:
        shown = ", ".join(ids) + (" and more" if more else "")
        super().__init__(f"job id {prefix} is ambiguous: it begins {shown}; give more of it")


def _fail(message: str, *, prefix: str = "", code: int = 1) -> typer.Exit:
    """Print `message` as one line on stderr (never wrapped, never read as markup); a
    server process logging JSON (`_json_logs`, `_SERVING`) logs it as an error
    record (`action` `exit`) with the code it exits with."""
    if _json_logs() and _SERVING["now"]:
        return _exit_record(code, message)
    from rich.text import Text

    line = Text.assemble((prefix, "red"), message) if prefix else Text(message)
    _console(stderr=True).print(line, soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _exit_record(code: int, message: str, *, exc_info: bool = False) -> typer.Exit:
    """Log why a server process under JSON logs cannot start, as an ERROR record (`action`
    `exit`, with the `exit_code`), logging set up first where it is not yet (its app
    failed as it was imported); returns the exit to raise."""
    if not logging.getLogger().handlers:
        _setup_logging()
    logging.getLogger("offload").error(
        "%s", message, exc_info=exc_info, extra={"action": "exit", "exit_code": code}
    )
    return typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """offload's errors as one line: exit 2 for a configuration error or a schema that
    needs `offload migrate` or a newer offload (a supervisor restarts no process that exits
    so), else 1."""
    try:
        yield
    except JobNotFound as exc:
        shown = str(exc) or "(an empty id)"
        raise _fail(f"no job {shown}", prefix="error: ") from None
    except _AmbiguousId as exc:
        raise _fail(str(exc), prefix="error: ") from None
    except (ConfigurationError, SchemaError) as exc:  # a restart cannot mend either
        raise _fail(" ".join(str(exc).split()), prefix="error: ", code=2) from None
    except OffloadError as exc:
        raise _fail(" ".join(str(exc).split()), prefix="error: ") from None


def _shown_url(url: str) -> str:
    """A backend URL fit to print: secrets masked, a relative SQLite path resolved."""
    parts = urlsplit(url)
    shown = url  # edited in place: rebuilding it would drop the `//` of `memory://`
    if parts.password is not None:
        user_info, _, host = parts.netloc.rpartition("@")
        shown = shown.replace(parts.netloc, f"{user_info.partition(':')[0]}:***@{host}", 1)
    if parts.query:
        query = "&".join(_masked_option(option) for option in parts.query.split("&"))
        shown = shown.replace(f"?{parts.query}", f"?{query}", 1)
    path = parts.path[1:]
    if parts.scheme == "sqlite" and not parts.netloc and path and not os.path.isabs(path):
        return f"{shown} ({os.path.abspath(path)})"
    return shown


def _masked_option(option: str) -> str:
    key = option.partition("=")[0]
    return f"{key}=***" if key.lower() in _SECRET_OPTIONS else option


def _banner(
    title: str,
    app: App,
    *,
    queues: Iterable[str],
    kinds: Iterable[str],
    concurrency: str | None = None,
    schedules: Iterable[str] = (),
) -> None:
    """What a server process is about to serve, printed once at its start: two processes
    started in different folders or environments visibly point at different backends.
    Under JSON logs (`OFFLOAD_LOG_FORMAT=json`) it is one log record of its own (`action`
    `serving`), so that a log collector reads every line of the process as JSON."""
    fields = banner_fields(
        app, queues=queues, kinds=kinds, concurrency=concurrency, schedules=schedules
    )
    if _json_logs():
        logging.getLogger("offload").info(title, extra={"action": "serving", **fields})
        return
    lines = _lines_of(title, fields)
    if not sys.stdout.isatty():
        # A log (a container's, a supervisor's) takes the same plain lines without rich,
        # whose import was 22 ms of a worker's 0.55 s start-up.
        print("\n".join(lines), flush=True)
        return
    console = _console()
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)


def _log_format() -> str:
    """`OFFLOAD_LOG_FORMAT` as given: `text` (the default) or `json` (else said, as text)."""
    return os.environ.get("OFFLOAD_LOG_FORMAT", "text").strip().lower()


def _json_logs() -> bool:
    """Whether the process logs JSON lines (`OFFLOAD_LOG_FORMAT=json`)."""
    return _log_format() == "json"


def banner_fields(
    app: App,
    *,
    queues: Iterable[str],
    kinds: Iterable[str],
    concurrency: str | None = None,
    schedules: Iterable[str] = (),
) -> dict[str, str | list[str]]:
    """What a start-up banner tells: backend, queues, kinds, concurrency (when given),
    schedules (when any) and blobs, secrets masked."""
    fields: dict[str, str | list[str]] = {
        "backend": _shown_url(app.settings.url),
        "queues": list(queues),
        "kinds": sorted(kinds),
    }
    if concurrency is not None:
        fields["concurrency"] = concurrency
    if schedules:  # the periodic schedules its scheduler runs (workers only)
        fields["schedules"] = sorted(schedules)
    fields["blobs"] = describe_blobs(app.blobs)
    return fields


def banner_lines(
    title: str,
    app: App,
    *,
    queues: Iterable[str],
    kinds: Iterable[str],
    concurrency: str | None = None,
    schedules: Iterable[str] = (),
) -> list[str]:
    """The lines of a start-up banner: the title, then what `banner_fields` tells."""
    fields = banner_fields(
        app, queues=queues, kinds=kinds, concurrency=concurrency, schedules=schedules
    )
    return _lines_of(title, fields)


def _lines_of(title: str, fields: dict[str, str | list[str]]) -> list[str]:
    shown = {
        name: value if isinstance(value, str) else ", ".join(value) or "(none)"
        for name, value in fields.items()
    }
    return [title, *(f"  {name:<12} {value}" for name, value in shown.items())]


def _kinds_served(app: App, queues: Sequence[str]) -> list[str]:
    """The kinds a worker of `app` runs from `queues`: those its handlers route there."""
    return [kind for kind, spec in app.handlers.items() if spec.message.queue in queues]


def _warn_unrouted(app: App, named: Iterable[str]) -> None:
    """Warn of each queue given to `--queues` that no kind the worker handles is routed to:
    a misspelt name leaves the worker idle."""
    from .notify.base import NOTIFY_QUEUE

    routed = {spec.message.queue for spec in app.handlers.values()}
    for queue in named:
        if queue not in routed and queue != NOTIFY_QUEUE:
            known = ", ".join(sorted(routed)) or "(none)"
            message = f"no kind this worker handles is routed to queue {queue} (theirs: {known})"
            if _json_logs():
                logging.getLogger("offload").warning(
                    "%s; a misspelt name?", message, extra={"action": "queue_unrouted"}
                )
                continue
            _console(stderr=True).print(
                f"warning: {message}; a misspelt name?",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )


async def _check_blobs(app: App) -> None:
    """Probe the app's blob store before serving, bounded by OFFLOAD_CONNECT_TIMEOUT: a
    missing bucket or an unwritable folder stops the process with one line, not every job
    that stores a file later.

    Raises:
        BackendError: the store cannot be used (which one, what failed).
    """
    await probe_blobs(app.blobs, app.settings.connect_timeout_s)


def _stop_on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)


def _server(api: Any, host: str, port: int, *, access_log: bool = False) -> Any:
    """The uvicorn server of `api`; with `access_log`, a line per request on the
    `offload.access` logger (uvicorn's own stays off: it logs query strings)."""
    import uvicorn

    from .web.access import AccessLog
    from .web.serve import server_options

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # we route signals ourselves
            yield

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # Event streams never end on their own: end them now (their clients resume
            # elsewhere with the last event's id), so the server need not wait them out
            # and then cancel them, each with an error in the log.
            api.state.runtime.end_streams()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        AccessLog(api) if access_log else api,
        host=host,
        port=port,
        log_level="warning",
        # Under JSON logs uvicorn's own lines (a malformed request, a port in use) go to
        # the root's handler as every record does, not to a plain handler of uvicorn's.
        log_config=None if _json_logs() else uvicorn.config.LOGGING_CONFIG,
        lifespan="on",
        access_log=False,
        # On shutdown, requests get this long (the streams end at once: see shutdown).
        timeout_graceful_shutdown=DEFAULT_SHUTDOWN_GRACE_S,
        **server_options(),  # a bounded request head; refusals as problem documents
    )
    return Server(config)


AccessLogFlag = Annotated[
    bool,
    typer.Option(
        "--access-log",
        envvar="OFFLOAD_ACCESS_LOG",
        help="log each request (client, method, path without its query, status, ms, principal)",
    ),
]


@cli.command()
def web(
    app: AppRef,
    host: str = "127.0.0.1",
    port: int = 8000,
    url: Url = None,
    access_log: AccessLogFlag = False,
) -> None:
    """Serve the HTTP API (never imports handler modules)."""
    from .web import check_bind, create_app

    with _errors():
        offload_app = _served_app(app, url)
        check_bind(host, offload_app.settings)
        if offload_app.handlers:
            logging.getLogger("offload.web").warning(
                "the app %s has handlers (%s): its module imports the worker's code, "
                "which the web tier does not need; give --app the module that declares the "
                "messages only (as myproj.contracts:app), so the web process stays light",
                app,
                ", ".join(sorted(offload_app.handlers)),
                extra={"action": "web_with_handlers"},
            )
        server = _server(create_app(offload_app), host, port, access_log=access_log)

        async def main() -> None:
            # Opened before serving (the lifespan's open then shares it): an unreachable
            # backend is one line here, not a traceback from inside the server's start-up.
            async with offload_app:
                await _check_blobs(offload_app)
                _stop_on_signals(lambda: setattr(server, "should_exit", True))
                freeze_start_up()
                _open_files(streams=True)
                await server.serve()

        _banner(
            f"offload web on http://{host}:{port} (app {offload_app.name})",
            offload_app,
            queues=offload_app.queues,
            kinds=offload_app.kinds,
        )
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
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="serve Prometheus metrics on this port (process i of --processes: port + i)",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="address of the metrics endpoint")
    ] = "127.0.0.1",
    max_jobs: Annotated[
        int | None, typer.Option(min=1, help="run this many jobs (per process), then exit 0")
    ] = None,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(min=0, help="exit 0 once no job ran or was queued for SECONDS"),
    ] = None,
    autoscale: Annotated[
        str | None,
        typer.Option(
            metavar="MIN:MAX",
            help="keep between MIN and MAX worker processes, as the backlog asks",
        ),
    ] = None,
    target_wait: Annotated[
        float | None,
        typer.Option(
            parser=_duration,
            metavar="DURATION",
            show_default="2s",
            help="--autoscale: add a process when the oldest ready job waited longer (2s, 500ms)",
        ),
    ] = None,
    scale_down_after: Annotated[
        float | None,
        typer.Option(
            parser=_duration,
            metavar="DURATION",
            show_default="30s",
            help="--autoscale: remove a process after the backlog was quiet this long",
        ),
    ] = None,
    banner: Annotated[bool, typer.Option(hidden=True)] = True,
    of_processes: Annotated[int, typer.Option(hidden=True)] = 1,
    slot: Annotated[int | None, typer.Option(hidden=True)] = None,
    ready_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run handlers for queued jobs."""
    from .worker.runner import Worker
    from .worker.supervisor import Supervisor, worker_argv

    if autoscale is None:
        for given, flag in (
            (target_wait, "--target-wait"),
            (scale_down_after, "--scale-down-after"),
        ):
            if given is not None:  # it would do nothing: say so rather than run without it
                raise typer.BadParameter("only with --autoscale MIN:MAX", param_hint=f"'{flag}'")
    else:
        bounds = _autoscale_bounds(autoscale, processes, max_jobs, exit_when_idle)
        if target_wait is None:
            target_wait = DEFAULT_TARGET_WAIT_S
        if scale_down_after is None:
            scale_down_after = DEFAULT_SCALE_DOWN_AFTER_S
        if target_wait <= 0:
            raise typer.BadParameter("must be above 0", param_hint="'--target-wait'")
        if metrics_port is not None and metrics_port + bounds[1] > 65535:
            raise typer.BadParameter(
                f"the processes serve ports up to N + MAX ({metrics_port + bounds[1]}): "
                "at most 65535",
                param_hint="'--metrics-port'",
            )
        options = [f"--concurrency={concurrency}", f"--prefetch={prefetch}", f"--grace={grace}"]
        options += [f"--queues={queues}"] if queues else []
        options += [f"--lease={lease}"] if lease else []
        options += [f"--url={url}"] if url else []
        options += [f"--metrics-host={metrics_host}"] if metrics_port else []
        with _errors():
            # Unlike --processes, this process loads the app (handlers included): it reads
            # the backlog through it, from the backend and queues its workers serve.
            offload_app = _served_app(app, url)
            code = _autoscaled(
                offload_app,
                worker_argv(app, [*options, "--no-banner"]),
                bounds,
                (target_wait, scale_down_after),
                queues=queues.split(",") if queues else None,
                metrics=(metrics_port, metrics_host),
                concurrency=(concurrency, prefetch),
            )
        raise typer.Exit(code)
    if processes > 1:
        # This process never imports the handlers: the first child announces what all of
        # them serve (`--of-processes`), the others stay quiet.
        options = [f"--concurrency={concurrency}", f"--prefetch={prefetch}", f"--grace={grace}"]
        options += [f"--queues={queues}"] if queues else []
        options += [f"--lease={lease}"] if lease else []
        options += [f"--url={url}"] if url else []
        options += [f"--max-jobs={max_jobs}"] if max_jobs else []
        options += [f"--exit-when-idle={exit_when_idle}"] if exit_when_idle is not None else []
        options += [f"--metrics-host={metrics_host}"] if metrics_port else []
        _SERVING["now"] = True
        _setup_logging()
        first = worker_argv(app, [*options, f"--of-processes={processes}"])
        others = worker_argv(app, [*options, "--no-banner"])
        supervisor = Supervisor(
            first,
            processes,
            others_argv=others,
            # Each process names its slot (1 to N) in its log; process i serves metrics on
            # port + i.
            slot_argv=lambda i: [
                f"--slot={i + 1}",
                *([f"--metrics-port={metrics_port + i}"] if metrics_port else []),
            ],
            # A process that ran its --max-jobs (or idled out) is done, not restarted.
            until_done=max_jobs is not None or exit_when_idle is not None,
        )
        raise typer.Exit(supervisor.run())
    with _errors(), _interrupted_as_by_signal():
        offload_app = _served_app(app, url)
        runner = Worker(
            offload_app,
            queues=queues.split(",") if queues else None,
            concurrency=concurrency,
            prefetch=prefetch,
            lease_s=lease,
            grace_s=grace,
            max_jobs=max_jobs,
            exit_when_idle_s=exit_when_idle,
            slot=slot,
        )
        if banner:
            processes_shown = f" in each of {of_processes} processes" if of_processes > 1 else ""
            _banner(
                f"offload worker (app {offload_app.name})",
                offload_app,
                queues=runner.queues,
                kinds=_kinds_served(offload_app, runner.queues),
                concurrency=f"{concurrency}{processes_shown}, prefetch {prefetch}",
                schedules=offload_app.schedules,
            )
            _warn_unrouted(offload_app, queues.split(",") if queues else [])

        stop_metrics = _serve_metrics(offload_app, metrics_port, metrics_host, runner.health)
        try:
            _run_worker(runner, lambda: _work(offload_app, runner, ready_fd))
        finally:
            stop_metrics()


async def _work(app: App, runner: Worker, ready_fd: int | None) -> None:
    """`offload worker`'s one process: run until stopped by a signal (twice: at once),
    telling an autoscaler on `ready_fd` once it claims."""
    await _check_blobs(app)
    _stop_on_signals(_asked_twice(runner))
    freeze_start_up()
    _open_files(streams=False)
    ready = None if ready_fd is None else asyncio.create_task(_report_started(runner, ready_fd))
    try:
        await _ran(runner, runner.run())
    finally:
        if ready is not None:
            ready.cancel()


@contextlib.contextmanager
def _interrupted_as_by_signal() -> Iterator[None]:
    """A worker interrupted (SIGINT) before its own handling of signals began (importing
    the app, opening the backend) ends as the signal ends a process, not with click's
    "Aborted!" and exit 1: it had claimed nothing, and a supervisor that forwarded the
    signal counts that as stopped as asked (`stopped_cleanly`)."""
    try:
        yield
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise  # (where the signal does not end it at once)


#: Signals to stop within this long of the first are that one, delivered twice (seconds).
SAME_STOP_S = 1.0


def _asked_twice(runner: Worker, clock: Callable[[], float] = time.monotonic) -> Callable[[], None]:
    """What a signal to stop does to a worker: the first stops it gracefully, and another
    ends the grace period at once (its running jobs are released). One within `SAME_STOP_S`
    of the first is the same request come twice: a terminal's Ctrl+C reaches every process
    of its group, a supervisor's children among them, which the supervisor forwards it to
    as well, and systemd signals every process of a service."""
    first: float | None = None

    def stop() -> None:
        nonlocal first
        now = clock()
        if first is None:
            first = now
        runner.request_stop(now=now - first >= SAME_STOP_S)

    return stop


def _run_worker(runner: Worker, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run the worker's `main`; where handlers' threads run on past their attempts once it
    has stopped, end the process without waiting for them (`_exit_leaving_threads`)."""
    try:
        _run(main)
    except Exception as exc:
        if not (runner.wedged or runner.threads_running_on):
            raise
        _exit_failed(runner, exc)
    if runner.threads_running_on:
        _exit_leaving_threads(runner, 0)
    _say_threads_left(THREADS_LEFT_S)


async def _ran(runner: Worker, run: Awaitable[None]) -> None:
    """Await the worker's `run`; where it left runs that ignored their cancellation, end
    the process here, as it stopped (or failed), without the event loop's end, which would
    wait for them, maybe for ever."""
    try:
        await run
    except Exception as exc:
        if runner.tasks_left:
            _exit_failed(runner, exc)
        raise
    if runner.tasks_left:
        _exit_leaving_threads(runner, 0)


def _exit_failed(runner: Worker, exc: Exception) -> NoReturn:
    """End the process with 1 for the worker's failure `exc`, said as `_errors` says it,
    without waiting for what its handlers left running (`_exit_leaving_threads`)."""
    if not runner.wedged:  # (a wedged worker said why in its log)
        if isinstance(exc, OffloadError):  # one line, as `_errors` shows it
            _fail(" ".join(str(exc).split()), prefix="error: ")
        else:
            traceback.print_exception(exc)
    _exit_leaving_threads(runner, 1)


def _say_threads_left(after_s: float) -> None:
    """Have the process say, `after_s` from now, which threads its exit still waits for:
    threads a handler started that still run (not daemon threads; idle pools' workers
    have ended by then). The exit waits for them, as Python's does, maybe for ever: a
    thread may be finishing its work; the line says why the process has not ended."""

    def say() -> None:
        left = [
            t.name
            for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()
        ]
        if left:
            log.warning(
                "the worker stopped, and the process's exit waits for %d thread%s a handler "
                "started, still running (%s): end them before the handler returns, or make "
                "them daemon threads",
                len(left),
                "" if len(left) == 1 else "s",
                ", ".join(left),
                extra={"action": "threads_left", "threads": left},
            )

    timer = threading.Timer(after_s, say)
    timer.name = "offload-threads-left"
    timer.daemon = True
    timer.start()


def _open_files(*, streams: bool) -> None:
    """Raise this process's limit of open files as far as it may (`raise_open_files`); a
    web tier's (`streams`) says so where it stays low: each event stream takes a file, and
    past what it leaves (`stream_limit`) new streams are refused (503)."""
    limit = raise_open_files()
    if streams and 0 <= limit < FEW_OPEN_FILES:
        from .web.feeds import stream_limit

        logging.getLogger("offload.web").warning(
            "this process may open %d files (its hard limit): at most %d event streams and "
            "WebSockets at once, past which new ones get 503; raise it (ulimit -Hn, "
            "systemd's LimitNOFILE=) for more",
            limit,
            stream_limit(limit),
            extra={"action": "open_files_limit", "limit": limit},
        )


def _exit_leaving_threads(runner: Worker, code: int) -> NoReturn:
    """End the process with `code` now, without waiting for the handlers' threads that run
    on past their attempts (an interpreter's exit would wait for them, maybe forever):
    their jobs' outcomes are written, and no thread can be stopped otherwise. The exit
    functions run first (`atexit`: a tracer's last export, the log handlers' flush)."""
    if runner.threads_running_on:
        log.warning(
            "exiting without waiting for %d handler threads that run on past their attempts",
            runner.threads_running_on,
            extra={"action": "worker_exit"},
        )
    if runner.tasks_left:
        log.warning(
            "exiting without waiting for %d handler run%s that ignored %s cancellation",
            runner.tasks_left,
            "" if runner.tasks_left == 1 else "s",
            "its" if runner.tasks_left == 1 else "their",
            extra={"action": "worker_exit"},
        )
    # What the interpreter's exit runs (logging.shutdown among them), within a bound: one
    # may wait for what a handler left running too (multiprocessing joins its children).
    exits = threading.Thread(target=atexit._run_exitfuncs, name="offload-exit", daemon=True)
    exits.start()
    exits.join(EXIT_FUNCTIONS_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _report_started(runner: Any, fd: int) -> None:
    """Tell the autoscaler this process has started claiming: one byte on the pipe `fd`
    it passed (`--ready-fd`), then the pipe closes."""
    try:
        await runner.started.wait()
        os.write(fd, b"1")
    finally:
        os.close(fd)


def _autoscale_bounds(
    text: str, processes: int, max_jobs: int | None, exit_when_idle: float | None
) -> tuple[int, int]:
    """(MIN, MAX) of `--autoscale`, refused with a usage error when malformed or combined
    with a fixed or finite run."""
    from .worker.scaling import parse_bounds

    try:
        bounds = parse_bounds(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--autoscale'") from None
    if processes > 1:
        raise typer.BadParameter(
            "give --autoscale MIN:MAX or --processes N, not both", param_hint="'--autoscale'"
        )
    if max_jobs is not None or exit_when_idle is not None:
        raise typer.BadParameter(
            "it keeps processes running: it does not combine with --max-jobs or --exit-when-idle",
            param_hint="'--autoscale'",
        )
    return bounds


def _autoscaled(
    app: App,
    argv: list[str],
    bounds: tuple[int, int],
    waits: tuple[float, float],
    *,
    queues: list[str] | None,
    metrics: tuple[int | None, str],
    concurrency: tuple[int, int],
) -> int:
    """Run the autoscaling supervisor of `offload worker --autoscale`; its exit code. It
    reads the backlog through `app`; child `i` serves metrics on port + 1 + i, the
    supervisor its own decisions on the port itself; `concurrency` is (concurrency,
    prefetch) of each process, as the banner shows."""
    from .notify.base import NOTIFY_QUEUE
    from .worker.autoscaler import AutoscalingSupervisor, BacklogReader, sample_interval
    from .worker.scaling import ScalingPolicy

    named_queues = queues or []
    if queues is None:  # what each worker claims from by default
        queues = [*sorted({h.message.queue for h in app.handlers.values()}), NOTIFY_QUEUE]
    port, host = metrics
    policy = ScalingPolicy(
        min_processes=bounds[0],
        max_processes=bounds[1],
        target_wait_s=waits[0],
        scale_down_after_s=waits[1],
    )
    offload_metrics, stop_metrics = None, _nothing
    if port is not None:
        from .metrics import Metrics, serve

        offload_metrics = Metrics()
        stop_metrics = serve(offload_metrics, port, host)
    supervisor = AutoscalingSupervisor(
        policy,
        BacklogReader(app, queues),
        argv,
        slot_argv=lambda i: [
            f"--slot={i + 1}",
            *([f"--metrics-port={port + 1 + i}"] if port else []),
        ],
        sample_s=sample_interval(waits[0]),
        metrics=offload_metrics,
    )
    _banner(
        f"offload worker (app {app.name}, autoscaled)",
        app,
        queues=queues,
        kinds=_kinds_served(app, queues),
        concurrency=f"{concurrency[0]} in each of {bounds[0]} to {bounds[1]} processes, "
        f"prefetch {concurrency[1]}",
        schedules=app.schedules,
    )
    _warn_unrouted(app, named_queues)

    async def main() -> int:
        async with app:
            await _check_blobs(app)
            return await supervisor.run()

    try:
        return _run(main)
    finally:
        stop_metrics()


def _nothing() -> None:
    pass


def _serve_metrics(
    app: App, port: int | None, host: str, health: Callable[[], str | None] | None = None
) -> Callable[[], None]:
    """Turn the app's metrics on and serve them on `host:port` (None: neither), with a
    worker's `health` check; returns the function that stops serving.

    Raises:
        ConfigurationError: prometheus-client is missing, or the port cannot be bound.
    """
    if port is None:
        return lambda: None
    from .metrics import Metrics, serve

    metrics = Metrics()
    app.metrics = metrics
    return serve(metrics, port, host, health)


@cli.command()
def dev(
    app: AppRef,
    host: str = "127.0.0.1",
    port: int = 8000,
    concurrency: int = 16,
    url: Url = None,
    access_log: AccessLogFlag = False,
) -> None:
    """Web tier and a worker in one process, for development (imports the handlers)."""
    from .web import check_bind, create_app
    from .worker.runner import Worker

    with _errors():
        offload_app = _served_app(app, url)
        check_bind(host, offload_app.settings)
        server = _server(create_app(offload_app), host, port, access_log=access_log)
        runner = Worker(offload_app, concurrency=concurrency)

        async def main() -> None:
            stop_worker = _asked_twice(runner)

            def stop() -> None:
                server.should_exit = True
                stop_worker()

            async with offload_app:  # an unreachable backend: one line, before serving
                await _check_blobs(offload_app)
                _stop_on_signals(stop)
                worker_task = asyncio.create_task(runner.run())
                # A worker that dies takes the dev server down with it, loudly.
                worker_task.add_done_callback(lambda _t: setattr(server, "should_exit", True))
                freeze_start_up()
                _open_files(streams=True)
                await server.serve()
                runner.request_stop()
                await _ran(runner, worker_task)

        _banner(
            f"offload dev on http://{host}:{port} (app {offload_app.name}: web + worker)",
            offload_app,
            queues=runner.queues,
            kinds=offload_app.kinds,
            concurrency=str(concurrency),
            schedules=offload_app.schedules,
        )
        _run_worker(runner, main)


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
    """Run `fn` on the app, opened for inspecting: a database that does not exist yet is
    an error naming it, never made (that is for a worker or `offload migrate`)."""

    async def main() -> T:
        offload_app = _app(ref, url)
        await offload_app.open(create=False)
        try:
            return await fn(offload_app)
        finally:
            await offload_app.close()

    with _errors():
        return _run(main)


async def _resolve(app: App, given: str) -> str:
    """The id of the one job whose id is, or starts with, `given` (any case, dashes or not).

    Raises:
        JobNotFound: no such job.
        _AmbiguousId: several jobs' ids start with it.
    """
    if await app.get(given) is not None:
        return given
    digits = given.replace("-", "").lower()
    if not 0 < len(digits) <= 32 or digits.strip("0123456789abcdef"):
        raise JobNotFound(given)
    # Ids are UUIDs, listed newest (greatest) first: the first rows below the end of the
    # prefix's range are the ones in it, if any.
    end = int(digits.ljust(32, "f"), 16) + 1
    before = None if end >> 128 else str(uuid.UUID(int=end))
    rows = await app.list_jobs(owner=None, before=before, limit=CANDIDATES_SHOWN + 1)
    ids = [r.id for r in rows if r.id.replace("-", "").startswith(digits)]
    if not ids:
        raise JobNotFound(given)
    if len(ids) > 1:
        raise _AmbiguousId(given, ids[:CANDIDATES_SHOWN], more=len(ids) > CANDIDATES_SHOWN)
    return ids[0]


OptApp = Annotated[
    str | None,
    typer.Option("--app", envvar="OFFLOAD_APP", help="package.module:attribute (optional)"),
]
JobId = Annotated[str, typer.Argument(help="the job's id, or enough of its start to be unique")]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def _jobs_table(rows: Sequence[JobRow], *, wide: bool) -> Table:
    """Whole ids always (copy one into `jobs show`); `wide` adds where and whose."""
    from rich import box
    from rich.table import Table

    from .clock import iso

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    names = ("id", "kind", "state", "attempt", *(("queue", "owner", "worker") if wide else ()))
    for name in (*names, "created" if wide else "age"):
        table.add_column(name, no_wrap=True)
    now = time.time()
    for r in rows:
        state = r.state.value
        if r.state in (JobState.QUEUED, JobState.RETRYING) and r.run_at > now + 1:
            state += f" (runs in {_age(r.run_at - now)})"  # delayed: `scheduled` in queues
        cells = [r.id, r.kind, state, f"{r.attempt}/{r.max_attempts}"]
        if wide:
            cells += [r.queue, r.owner, r.worker or ""]
        cells.append((iso(r.enqueued_at) or "") if wide else _age(now - r.enqueued_at))
        _add_plain_row(table, *cells)
    return table


def _add_plain_row(table: Table, *cells: str) -> None:
    """A row of plain text: names are not Rich markup (a queue `mail[eu]` showed as `mail`,
    and one holding `[/x]` ended the command with a markup error)."""
    from rich.text import Text

    table.add_row(*(Text(cell) for cell in cells))


def _print_whole(table: Table) -> None:
    """Print `table` without cutting a cell short, wider than the terminal if it must be."""
    from rich.console import Console
    from rich.measure import Measurement

    console = _console()
    needed = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    if needed > console.width:
        console = Console(width=needed)
    console.print(table)


StateOpt = Annotated[JobState | None, typer.Option(help="only jobs in this state")]
KindOpt = Annotated[str | None, typer.Option(help="only jobs of this kind")]
QueueOpt = Annotated[str | None, typer.Option(help="only jobs in this queue")]
OwnerOpt = Annotated[str | None, typer.Option(help="only jobs of this principal")]
SinceOpt = Annotated[
    str | None,
    typer.Option(help="created at or after: an age (30m, 6h, 2d) or a time (UTC unless given)"),
]
UntilOpt = Annotated[
    str | None, typer.Option(help="created before: an age (30m, 6h, 2d) or a time")
]
SearchOpt = Annotated[
    str | None, typer.Option("--search", help="text in the message (case-insensitive)")
]
IdOpt = Annotated[str | None, typer.Option("--id", help="only ids that start with this")]
AllOpt = Annotated[
    bool,
    typer.Option("--all-matching", help="act on every job the filter options match"),
]
YesOpt = Annotated[bool, typer.Option("--yes", help="don't ask")]
OptJobId = Annotated[
    str | None,
    typer.Argument(help="the job's id, or enough of its start to be unique"),
]


def _filter(
    state: JobState | None,
    kind: str | None,
    queue: str | None,
    owner: str | None,
    since: str | None,
    until: str | None,
    search: str | None,
    id_prefix: str | None,
) -> JobFilter:
    """The filter the options name; a bad time or empty text exits 2 with one line."""
    from ._cli_filters import moment

    try:
        now = time.time()
        after, before = moment(since, now=now), moment(until, now=now)
        if after is not None and before is not None and after >= before:
            raise ValueError(
                f"--since ({after:%Y-%m-%d %H:%M:%S}) is not before --until "
                f"({before:%Y-%m-%d %H:%M:%S}): no job could match"
            )
        return JobFilter(
            state=state.value if state else None,
            kind=kind,
            queue=queue,
            owner=owner,
            created_after=after,
            created_before=before,
            id_prefix=id_prefix,
            text=search,
        )
    except ValueError as exc:
        raise _fail(str(exc), prefix="error: ", code=2) from None


@jobs_cli.command("list")
def jobs_list(
    app: OptApp = None,
    url: Url = None,
    state: StateOpt = None,
    kind: KindOpt = None,
    queue: QueueOpt = None,
    owner: OwnerOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    id_prefix: IdOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="show at most this many")] = 50,
    wide: Annotated[bool, typer.Option("--wide", help="also queue, owner, worker")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs matching the filters, newest first, with how many match in all."""
    from ._bulk import DEFAULT_COUNT_CAP
    from .contract import status_record

    f = _filter(state, kind, queue, owner, since, until, search, id_prefix)

    async def page(a: App) -> tuple[list[JobRow], int]:
        rows = await a.search_jobs(f, limit=limit)
        return rows, await a.count_jobs(f, cap=DEFAULT_COUNT_CAP)

    rows, total = _with_app(app, url, page)
    if as_json:
        _console().print_json(orjson.dumps([status_record(r) for r in rows]).decode())
        return
    _print_whole(_jobs_table(rows, wide=wide))
    shown = f"{total:,}+" if total >= DEFAULT_COUNT_CAP else f"{total:,}"
    _console().print(f"{len(rows):,} shown of {shown} matching", highlight=False)


@jobs_cli.command("show")
def jobs_show(job_id: JobId, app: OptApp = None, url: Url = None) -> None:
    """Show one job: its status record, with the traceback of a failure, and what is stored
    with it (owner, queue, version, payload, idempotency key), for operators."""

    async def show(a: App) -> dict[str, Any]:
        found = await _resolve(a, job_id)
        record = await a.status(found, tracebacks=True)
        row = await a.get(found)
        if row is not None:
            record["stored"] = {
                "owner": row.owner,
                "queue": row.queue,
                "version": row.version,
                "priority": row.priority,
                "payload": row.payload,
                "idempotency_key": row.idempotency_key,
                "options": row.options,
            }
        return record

    _console().print_json(orjson.dumps(_with_app(app, url, show)).decode())


def _one_or_all(job_id: str | None, all_matching: bool, f: JobFilter) -> None:
    """Either one JOB_ID or `--all-matching` (with the filters); exits 2 otherwise."""
    if job_id is not None and all_matching:
        raise _fail("give a JOB_ID or --all-matching, not both", prefix="error: ", code=2)
    if job_id is None and not all_matching:
        raise _fail("give a JOB_ID, or --all-matching with filters", prefix="error: ", code=2)
    if job_id is not None and f != JobFilter():
        raise _fail("filter options need --all-matching", prefix="error: ", code=2)


def _bulk(
    ref: str | None,
    url: str | None,
    f: JobFilter,
    *,
    verb: str,
    past: str,
    states: frozenset[JobState],
    yes: bool,
    act: Callable[[App], Awaitable[int]],
) -> None:
    """Count what `act` would change, ask (unless `yes`), act, and report the count."""
    from ._cli_filters import described

    names = sorted(s.value for s in states)
    which = ", ".join(names[:-1]) + " or " + names[-1]
    if f.state and JobState(f.state) not in states:  # a question with no answer but "none"
        raise _fail(
            f"{f.state} jobs cannot be {past}: only {which} jobs can be",
            prefix="error: ",
            code=2,
        )
    n = _with_app(ref, url, lambda a: a.count_jobs(f, states=states))
    # A filter that names a state says which jobs it is.
    shown = "" if f.state else f"{which} "
    if n == 0:
        _console().print(f"no {shown}job matches {described(f)}", highlight=False, soft_wrap=True)
        return
    while not yes:
        typer.confirm(f"{verb} {n:,} {shown}jobs matching {described(f)}?", abort=True)
        # More match now than were asked about (dead ones since, say): ask again.
        now = _with_app(ref, url, lambda a: a.count_jobs(f, states=states))
        if now <= n:
            break
        _console().print(f"{now - n:,} more match now", highlight=False)
        n = now
    done = _with_app(ref, url, act)
    _console().print(f"{past} {done:,} job{'' if done == 1 else 's'}", highlight=False)


@jobs_cli.command("retry")
def jobs_retry(
    job_id: OptJobId = None,
    all_matching: AllOpt = False,
    app: OptApp = None,
    url: Url = None,
    state: StateOpt = None,
    kind: KindOpt = None,
    queue: QueueOpt = None,
    owner: OwnerOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    id_prefix: IdOpt = None,
    yes: YesOpt = False,
) -> None:
    """Re-queue a dead, failed or cancelled job (or --all-matching ones) with a fresh retry
    budget."""
    from .contract import RETRYABLE_STATES

    f = _filter(state, kind, queue, owner, since, until, search, id_prefix)
    _one_or_all(job_id, all_matching, f)
    if job_id is None:
        _bulk(app, url, f, verb="retry", past="retried", states=RETRYABLE_STATES, yes=yes,
              act=lambda a: a.retry_jobs(f))  # fmt: skip
        return
    one = job_id

    async def retry(a: App) -> JobRow:
        return await a.requeue(await _resolve(a, one))

    row = _with_app(app, url, retry)
    _console().print(f"job {row.id} is {row.state} again")


@jobs_cli.command("cancel")
def jobs_cancel(
    job_id: OptJobId = None,
    all_matching: AllOpt = False,
    app: OptApp = None,
    url: Url = None,
    state: StateOpt = None,
    kind: KindOpt = None,
    queue: QueueOpt = None,
    owner: OwnerOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    id_prefix: IdOpt = None,
    yes: YesOpt = False,
) -> None:
    """Cancel a job (or --all-matching ones): a waiting one never runs; a running one is
    signalled."""
    from .contract import CANCELLABLE_STATES

    f = _filter(state, kind, queue, owner, since, until, search, id_prefix)
    _one_or_all(job_id, all_matching, f)
    if job_id is None:
        _bulk(app, url, f, verb="cancel", past="cancelled", states=CANCELLABLE_STATES, yes=yes,
              act=lambda a: a.cancel_jobs(f))  # fmt: skip
        return
    one = job_id

    async def cancel(a: App) -> JobRow:
        return await a.cancel(await _resolve(a, one))

    row = _with_app(app, url, cancel)
    what = "cancelled" if row.state == "cancelled" else "asked to stop (running)"
    _console().print(f"job {row.id} {what}")


@jobs_cli.command("delete")
def jobs_delete(
    job_id: OptJobId = None,
    all_matching: AllOpt = False,
    app: OptApp = None,
    url: Url = None,
    state: StateOpt = None,
    kind: KindOpt = None,
    queue: QueueOpt = None,
    owner: OwnerOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    search: SearchOpt = None,
    id_prefix: IdOpt = None,
    yes: YesOpt = False,
) -> None:
    """Delete a finished job (or --all-matching ones: succeeded, failed, cancelled or dead)
    with its history and delivery records; waiting and running jobs are never deleted."""
    from .contract import FINAL_STATES

    f = _filter(state, kind, queue, owner, since, until, search, id_prefix)
    _one_or_all(job_id, all_matching, f)
    if job_id is None:
        _bulk(app, url, f, verb="delete", past="deleted", states=FINAL_STATES, yes=yes,
              act=lambda a: a.delete_jobs(f))  # fmt: skip
        return
    one = job_id

    async def finished(a: App) -> tuple[str, bool]:
        found = await _resolve(a, one)
        row = await a.get(found)
        return found, row is not None and row.state in FINAL_STATES

    found, final = _with_app(app, url, finished)
    if not final:
        raise _fail(
            f"job {found} is not finished: only a finished job can be deleted", prefix="error: "
        )
    if not yes:
        typer.confirm(f"delete job {found} with its history?", abort=True)
    n = _with_app(app, url, lambda a: a.delete_jobs(JobFilter(id_prefix=found)))
    if not n:  # it was made to run again meanwhile
        raise _fail(
            f"job {found} is not finished: only a finished job can be deleted", prefix="error: "
        )
    _console().print(f"job {found} deleted")


@jobs_cli.command("erase")
def jobs_erase(
    owner: Annotated[str, typer.Option("--owner", help="the principal whose data to erase")],
    address: Annotated[
        list[str] | None,
        typer.Option(
            "--address",
            help="also the deliveries to this exact email address or callback URL (repeatable)",
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(min=0, help="seconds to wait for her running jobs to end")
    ] = ERASE_WAIT_S,
    app: OptApp = None,
    url: Url = None,
    yes: YesOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="the erased job ids and counts")] = False,
) -> None:
    """Erase one owner's data: her jobs with their history, their deliveries, checked-in
    payloads and fair-queue turns, silencing her jobs and cancelling her waiting and running
    ones first, without a notification. Exit 1 when a job of hers was left running."""
    from .notify.base import NOTIFY_OWNER

    if not owner or "\x00" in owner or owner == NOTIFY_OWNER:
        why = "the deliveries' own owner" if owner == NOTIFY_OWNER else "no principal's name"
        raise _fail(f"--owner {owner!r} is {why}", prefix="error: ", code=2)
    addresses = tuple(address or ())
    if not yes:
        n = _with_app(app, url, lambda a: a.count_jobs(JobFilter(owner=owner)))
        also = f", and every delivery to {', '.join(addresses)}" if addresses else ""
        typer.confirm(
            f"erase {owner}'s {n:,} job{'' if n == 1 else 's'} with their history and "
            f"deliveries{also}?",
            abort=True,
        )
    try:
        erased = _with_app(
            app, url, lambda a: a.erase_owner(owner, addresses=addresses, wait_s=wait)
        )
    except KeyboardInterrupt:
        raise _fail(
            f"interrupted: {owner}'s jobs may be silenced already (for good: none notifies "
            "anyone), some erased; run it again to finish",
            prefix="error: ",
            code=130,
        ) from None
    if as_json:
        _console().print_json(orjson.dumps(dataclasses.asdict(erased)).decode())
    elif not (erased.jobs or erased.deliveries or erased.turns or erased.left):
        _console().print(
            f"no job of {owner} and no delivery to an address given was found (the owner is "
            "the principal's name, exactly)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        files = f", {erased.files:,} payload file{'' if erased.files == 1 else 's'}"
        _console().print(
            f"erased {owner}: {len(erased.jobs):,} job{'' if len(erased.jobs) == 1 else 's'} "
            f"({erased.cancelled:,} cancelled first), {erased.deliveries:,} "
            f"deliver{'y' if erased.deliveries == 1 else 'ies'}"
            f"{files if erased.files else ''}, {erased.turns:,} fair-queue "
            f"turn{'' if erased.turns == 1 else 's'}",
            highlight=False,
            soft_wrap=True,
        )
    if erased.files_left:
        _console(stderr=True).print(
            f"{len(erased.files_left):,} payload file(s) could not be deleted (the worker's "
            "sweep takes them within the hour): " + ", ".join(erased.files_left),
            highlight=False,
            soft_wrap=True,
        )
    if erased.left:
        raise _fail(
            f"{len(erased.left):,} job(s) left, still running after {wait:g} s or enqueued "
            f"meanwhile: {', '.join(erased.left[:CANDIDATES_SHOWN])}"
            f"{' …' if len(erased.left) > CANDIDATES_SHOWN else ''}; erase again once they end",
            prefix="error: ",
        )


@jobs_cli.command("purge")
def jobs_purge(
    queue: str,
    app: OptApp = None,
    url: Url = None,
    yes: Annotated[bool, typer.Option("--yes", help="don't ask")] = False,
) -> None:
    """Delete every job waiting in QUEUE (running jobs are left alone)."""
    from ._bulk import DEFAULT_COUNT_CAP

    if not yes:
        waiting = {JobState.QUEUED, JobState.RETRYING}
        f = JobFilter(queue=queue)
        count = _with_app(
            app, url, lambda a: a.count_jobs(f, cap=DEFAULT_COUNT_CAP, states=waiting)
        )
        if count == 0:
            _console().print(f"no job waits in {queue}", highlight=False, soft_wrap=True)
            return
        shown = f"{count:,} or more" if count >= DEFAULT_COUNT_CAP else f"{count:,}"
        jobs = "job" if count == 1 else "jobs"
        typer.confirm(f"delete the {shown} waiting {jobs} in {queue!r}?", abort=True)
    n = _with_app(app, url, lambda a: a.purge(queue))
    said = (
        f"purged {n:,} job{'' if n == 1 else 's'} from {queue}" if n else f"no job waits in {queue}"
    )
    _console().print(said, highlight=False, soft_wrap=True)


contracts_cli = typer.Typer(
    help="Message contracts: export their JSON Schemas; check a committed snapshot.",
    no_args_is_help=True,
)
cli.add_typer(contracts_cli, name="contracts")


@contracts_cli.command("export", short_help="Print every kind's contract as JSON.")
def contracts_export(app: AppRef) -> None:
    """Print every kind's contract as JSON (commit it: `> contracts.json`): its JSON Schema
    at its current version, queue, HTTP use, FromPrincipal fields and upgraders, and the
    schema of the enqueue options. The same code always prints the same bytes."""
    from .contracts import dumps, snapshot

    with _errors():
        text = dumps(snapshot(_app(app, None)))
    sys.stdout.write(text)


@contracts_cli.command("check", short_help="Fail on a change that breaks a committed snapshot.")
def contracts_check(
    committed: Annotated[
        str, typer.Argument(metavar="SNAPSHOT", help="the file `contracts export` wrote")
    ],
    app: AppRef,
    allow_removed: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-removed",
            metavar="KIND",
            help="a kind that may be gone (none of its jobs left)",
        ),
    ] = None,
) -> None:
    """Compare the code with a committed snapshot: exit 1 with one line per breaking change.
    A kind's schema may only widen (new optional fields, wider types) unless it gets a new
    version with an upgrader from each older one; a changed queue or a removed kind breaks
    whatever the version. A new version of a kind posted over HTTP is warned of, field by
    field, where the old body would be refused (the API takes the current version only)."""
    from pathlib import Path

    from .contracts import advisories, breaking_changes, client_changes, dumps, loads, snapshot

    with _errors():
        try:
            text = Path(committed).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read {committed}: {exc.strerror}") from None
        was = loads(text, source=committed)
        now = snapshot(_app(app, None))
        allowed = set(allow_removed or ())
        found = breaking_changes(was, now, allow_removed=allowed)
    # A new version may narrow; its HTTP clients must move. And what breaks nothing yet.
    for note in [*client_changes(was, now), *advisories(was, now, allow_removed=allowed)]:
        _console(stderr=True).print(
            f"warning: {note}", soft_wrap=True, highlight=False, markup=False
        )
    console = _console()
    for change in found:
        console.print(str(change), soft_wrap=True, highlight=False, markup=False)
    if found:
        raise _fail(
            f"{len(found)} breaking change{'s' if len(found) > 1 else ''} against {committed}: "
            "give the kind a new version with upgraders, or export again if you mean it"
        )
    kinds = f"{len(now['kinds'])} kind{'s' if len(now['kinds']) != 1 else ''}"
    if loads(dumps(now)) == was:
        summary = f"{committed}: {kinds}, as recorded"
    else:
        summary = f"{committed}: {kinds}, no breaking change; export again to record the changes"
    console.print(summary, soft_wrap=True, highlight=False, markup=False)


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
    """Create or upgrade the backend's store (SQLite file, PostgreSQL schema)."""
    from .brokers import open_backend
    from .brokers.sqlite.backend import SQLiteBackend

    async def main(backend: Any) -> list[int]:
        await backend.open(check_schema=False)
        try:
            return list(await backend.migrate())
        finally:
            await backend.close()

    with _errors():
        settings = Settings.from_env(url=url)
        backend = open_backend(settings.url, connect_timeout_s=settings.connect_timeout_s)
        # A SQLite file is made (and upgraded) as it opens: whether it was there before.
        made = isinstance(backend, SQLiteBackend) and not (
            backend.in_memory or os.path.exists(backend.path)
        )
        applied = _run(lambda: main(backend))
    where = _shown_url(settings.url)
    if made:
        _console().print(f"created an offload database at {where}", soft_wrap=True)
    elif applied:
        _console().print(f"applied schema migrations {applied} to {where}", soft_wrap=True)
    else:
        _console().print(f"schema is up to date at {where}", soft_wrap=True)


queues_cli = typer.Typer(
    help="Per-queue stats (with no command); pause and resume a queue.",
    invoke_without_command=True,
)
cli.add_typer(queues_cli, name="queues")
QueueName = Annotated[str, typer.Argument(metavar="NAME", help="the queue")]


@queues_cli.callback()
def queues(
    ctx: typer.Context,
    app: OptApp = None,
    url: Url = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per-queue stats: queued, scheduled, running, dead, oldest age, the jobs that wait
    for a newer worker (stored at a version newer than a worker that claimed them runs),
    whether the queue is paused, and each limited kind's usage (running of `max_running`,
    starts within the window of `rate`). `pause NAME` and `resume NAME` steer one queue."""
    ctx.obj = (app, url)  # `--app`/`--url` given before a command count for it too
    if ctx.invoked_subcommand is not None:
        return
    stats = _with_app(app, url, lambda a: a.stats())
    if as_json:
        _console().print_json(orjson.dumps(stats).decode())
        return
    from rich.table import Table

    table = Table(
        "queue",
        "queued",
        "scheduled",
        "running",
        "dead",
        "oldest age (s)",
        "for newer worker",
        "paused",
        "limits (running, starts)",
    )
    for name, s in sorted(stats.items()):
        _add_plain_row(
            table,
            name,
            str(s["queued"]),
            str(s["scheduled"]),
            str(s["running"]),
            str(s["dead"]),
            f"{s['oldest_age_s']:.1f}",
            str(s["awaiting_newer_worker"]),
            "paused" if s["paused"] else "",
            _limits_cell(s.get("limits", {})),
        )
    _print_whole(table)  # a queue's name is what one greps for: never cut short


def _limits_cell(limits: dict[str, dict[str, Any]]) -> str:
    """One line per limited kind: `kind  3/5 running  40/100/m`."""
    lines = []
    for kind, lim in sorted(limits.items()):
        parts = [kind]
        if lim["max_running"] is not None:
            parts.append(f"{lim['running']}/{lim['max_running']} running")
        if lim["rate"] is not None:
            parts.append(f"{lim['recent_starts']}/{lim['rate']}")
        lines.append("  ".join(parts))
    return "\n".join(lines)


def _app_ref(ctx: typer.Context, app: str | None, url: str | None) -> tuple[str | None, str | None]:
    """A command's `--app` and `--url`, else those given to `offload queues` before it."""
    given_app, given_url = ctx.obj or (None, None)
    return app or given_app, url or given_url


@queues_cli.command("pause")
def queues_pause(ctx: typer.Context, name: QueueName, app: OptApp = None, url: Url = None) -> None:
    """Pause queue NAME: no worker claims its jobs until it is resumed (running jobs finish,
    new jobs are still enqueued). The pause is stored: it holds across restarts."""
    ref, where = _app_ref(ctx, app, url)

    async def pause(a: App) -> tuple[bool, bool]:
        changed = await a.pause(name)
        # Known: a kind of the app routes to it, or it holds a job, finished ones included
        # (maybe another app's).
        known = name in a.queues or await a.count_jobs(JobFilter(queue=name), cap=1) > 0
        return changed, known

    changed, known = _with_app(ref, where, pause)
    said = f"queue {name} paused" if changed else f"queue {name} was paused already"
    _console().print(said, soft_wrap=True, highlight=False, markup=False)
    if changed and not known:
        routes = "no kind of this app routes to it" if ref else "without --app no kind is known"
        _console(stderr=True).print(
            f"warning: queue {name} holds no job, finished or not, and {routes}; "
            "a misspelt name? (`offload queues resume` undoes the pause)",
            soft_wrap=True, highlight=False, markup=False,
        )  # fmt: skip


@queues_cli.command("resume")
def queues_resume(ctx: typer.Context, name: QueueName, app: OptApp = None, url: Url = None) -> None:
    """Resume queue NAME: waiting workers claim its jobs at once."""
    ref, where = _app_ref(ctx, app, url)
    changed = _with_app(ref, where, lambda a: a.resume(name))
    said = f"queue {name} resumed" if changed else f"queue {name} was not paused"
    _console().print(said, soft_wrap=True, highlight=False, markup=False)


def _slots_shown(w: WorkerInfo) -> str:
    """`3/4`, with the jobs held ahead (`3/4 +12 ahead`), in parentheses for a lost worker
    (as of its last heartbeat)."""
    shown = f"{len(w.running)}/{w.concurrency}"
    if w.held_ahead:
        shown += f" +{w.held_ahead} ahead"
    return f"({shown})" if w.lost else shown


def _kinds_shown(kinds: Mapping[str, Sequence[int]]) -> str:
    """A worker's kinds with the versions it runs: `reports.export v1-3, ops.tick v2` (a
    rolling deploy's old and new workers, side by side)."""
    shown = []
    for kind, versions in sorted(kinds.items()):
        vs = sorted(versions)
        contiguous = vs == list(range(vs[0], vs[-1] + 1)) if vs else True
        if len(vs) > 1 and contiguous:
            shown.append(f"{kind} v{vs[0]}-{vs[-1]}")
        else:
            shown.append(f"{kind} " + ",".join(f"v{v}" for v in vs))
    return ", ".join(shown) or "-"


def _workers_table(workers: Sequence[WorkerInfo]) -> Table:
    """One row per worker process: where it runs, its state, what it serves and how it does."""
    from rich import box
    from rich.table import Table

    caption = (
        "(n/m): what a lost worker ran at its last heartbeat; those jobs are rescued once "
        "their leases lapse"
        if any(w.lost for w in workers)
        else None
    )
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption=caption,
        caption_justify="left",
    )
    names = ("id", "host", "pid", "state", "queues", "running", "processed", "failed")
    for name in (*names, "kinds (versions)", "offload", "started", "heartbeat"):
        table.add_column(name, no_wrap=True)
    now = time.time()
    for w in workers:
        _add_plain_row(
            table,
            w.id,
            w.host,
            str(w.pid),
            "lost" if w.lost else "live",
            ", ".join(w.queues),
            _slots_shown(w),
            str(w.processed),
            str(w.failed),
            _kinds_shown(w.kinds),
            w.version,
            f"{_age(now - w.started_at.timestamp())} ago",
            f"{_age(now - w.heartbeat_at.timestamp())} ago",
        )
    return table


@cli.command()
def workers(
    app: OptApp = None, url: Url = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """The worker registry: every worker process, live ones first (a worker whose heartbeat
    lapsed shows as lost), with its host, pid, queues, jobs running now out of its
    concurrency, attempts processed and failed, offload version, start and last heartbeat."""
    found = _with_app(app, url, lambda a: a.workers())
    if as_json:
        _console().print_json(orjson.dumps([w.to_dict() for w in found]).decode())
        return
    if not found:
        _console().print("no workers", highlight=False, markup=False)
        return
    _print_whole(_workers_table(found))


def _schedules_table(entries: Sequence[dict[str, Any]]) -> Table:
    """One row per schedule: how it ticks, when it runs next and last, and that run's job."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    names = (
        "name", "kind", "when", "catch-up", "next run", "last run", "last job", "state", "missed"
    )  # fmt: skip
    for name in names:
        table.add_column(name, no_wrap=True)
    for e in entries:
        when = (
            f"every {e['every_s']:g}s" if e.get("every_s") else f"{e.get('cron')} ({e.get('tz')})"
        )
        _add_plain_row(
            table,
            e["name"] + ("" if e["declared"] else " (not declared here)"),
            str(e.get("kind", "")),
            when,
            str(e.get("catch_up", "")),
            e["next_run"] or "-",
            e["last_run"] or "never",
            e["last_job_id"] or "-",
            e["last_job_state"] or ("-" if e["last_job_id"] is None else "pruned"),
            f"since {e['missed_since']}" if e.get("missed_since") else "-",
        )
    return table


@cli.command()
def schedules(
    app: OptApp = None, url: Url = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Periodic schedules: every one the app declares (`app.periodic`, so name the module
    that declares them with --app) and every one a worker's scheduler stored, with its cron
    or interval, time zone, catch-up, next run, last run (the newest tick enqueued), the
    job of that run with its state, and since when it is missed (no scheduler enqueued a
    tick for over a minute: retired, or no worker runs it)."""
    entries = _with_app(app, url, lambda a: a.list_schedules())
    if as_json:
        _console().print_json(orjson.dumps(entries).decode())
        return
    if not entries:
        _console().print("no schedules", highlight=False, markup=False)
        return
    _print_whole(_schedules_table(entries))


def main() -> None:
    cli()
