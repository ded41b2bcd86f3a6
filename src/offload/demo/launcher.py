"""`offload demo`: the web tier, worker processes and SMTP catcher, started and stopped together.

The launcher process serves the pages (and offload's API) and runs the SMTP catcher; each
worker is a separate `offload worker --app offload.demo.handlers:app` process, as it would
be in production. SIGINT (Ctrl-C) or SIGTERM stops all of them: the web server first, then
the workers (which finish or release their jobs), then the catcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .._children import die_with_parent
from .._loop import freeze_start_up, raise_open_files, run
from ..errors import ConfigurationError
from ..settings import Settings
from ..web.app import check_bind
from .config import DemoConfig
from .data import create_dataset
from .mailbox import MailboxStore, SmtpCatcher

log = logging.getLogger("offload.demo")
console = Console(stderr=True, highlight=False, soft_wrap=True)

#: The worker half, as `offload worker --app` names it.
WORKER_APP = "offload.demo.handlers:app"
#: Handlers at once per worker process.
DEFAULT_WORKER_CONCURRENCY = 4
#: Seconds a stopping worker lets running jobs finish before releasing them.
DEFAULT_WORKER_GRACE_S = 10.0
#: CPU priority of the demo's workers (nice): they share the machine with the web tier, and
#: the pattern's promise is a fast web tier; workers take the CPU the web does not need.
WORKER_NICE = 10
#: Seconds the web server waits for open requests (event streams) when stopping.
DEFAULT_WEB_GRACE_S = 3.0
#: Longest pause before restarting a worker that crashed (seconds).
DEFAULT_RESTART_MAX_S = 10.0


#: Modules of the `demo` extra (import name: package name).
DEMO_MODULES = {
    "reportlab": "reportlab",
    "PIL": "pillow",
    "aiosmtplib": "aiosmtplib",
    "aiosmtpd": "aiosmtpd",
    "jinja2": "jinja2",
    "multipart": "python-multipart",
}


def check_extra() -> None:
    """Raises: ConfigurationError: a package of the `demo` extra is not installed."""
    missing = [pkg for mod, pkg in DEMO_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ConfigurationError(
            f"the demo needs its extra: pip install 'offload[demo]' (missing {', '.join(missing)})"
        )


def prepare(config: DemoConfig) -> DemoConfig:
    """Create the working folder and the sample data set (once)."""
    config.folder.mkdir(parents=True, exist_ok=True)
    create_dataset(config.data_path)
    return config


def _worker_preexec() -> None:
    """In a worker process, before it runs: ask Linux for SIGTERM when the launcher dies,
    and yield the CPU to the web tier (`WORKER_NICE`)."""
    die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)


class WorkerPool:
    """`count` worker processes; one that crashes is restarted until `stop()`."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env = env
        self.count = count
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "offload", "worker", "--app", WORKER_APP,
            f"--concurrency={DEFAULT_WORKER_CONCURRENCY}", f"--grace={DEFAULT_WORKER_GRACE_S:g}",
        ]  # fmt: skip

    async def start(self) -> None:
        self._keepers = [
            asyncio.create_task(self._keep(slot), name=f"demo-worker-{slot}")
            for slot in range(self.count)
        ]

    async def _keep(self, slot: int) -> None:
        pause = 1.0
        while not self._stopping:
            # Own session: a terminal's Ctrl-C reaches the launcher only, which stops the
            # workers in order; if the launcher dies anyway, the kernel sends them SIGTERM.
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                start_new_session=True,
                preexec_fn=_worker_preexec if sys.platform == "linux" else None,
            )
            self.procs[slot] = proc
            code = await proc.wait()
            if self._stopping or code == 0:
                return
            log.error(
                "worker process %d exited with %s; restarting in %.0fs",
                proc.pid, code, pause, extra={"action": "demo_worker_restart"},
            )  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, DEFAULT_RESTART_MAX_S)

    def stopping(self) -> None:
        """From now on a worker that exits is not restarted."""
        self._stopping = True

    async def stop(self) -> None:
        """SIGTERM every worker, wait for them to drain, kill what is left after the grace."""
        self._stopping = True
        running = [p for p in self.procs.values() if p.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in running]
        if waits:
            _, late = await asyncio.wait(waits, timeout=DEFAULT_WORKER_GRACE_S + 5)
            for proc in running:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*late)
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


def _server(web: Any, host: str, port: int, on_ready: Callable[[], Any]) -> Any:
    import uvicorn

    from ..web.serve import server_options

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the launcher routes signals itself
            yield

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # listening: now start the workers and say where to go
                await on_ready()

    config = uvicorn.Config(
        web,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=int(DEFAULT_WEB_GRACE_S),
        **server_options(),  # as `offload web` serves
    )
    return Server(config)


def _announce(config: DemoConfig, workers: int, catcher: SmtpCatcher | None) -> None:
    # (what a user chose is printed as written: a `[` in it is no markup)
    url, folder = escape(config.base_url), escape(str(config.folder))
    console.print(f"\n[bold]offload demo[/bold] on [bold cyan]{url}[/bold cyan]\n")
    console.print(f"  folder   {folder}  (jobs, files, sample data, mailbox)")
    if config.inline:
        console.print("  mode     [yellow]inline[/yellow]: the slow work runs inside each request")
    else:
        plural = "es" if workers != 1 else ""
        console.print(f"  workers  {workers} process{plural}: offload worker --app {WORKER_APP}")
    if catcher is not None:
        console.print(f"  mail     caught on {escape(catcher.url)}; read it at {url}/mailbox")
    else:
        console.print("  mail     sent through OFFLOAD_SMTP_URL")
    console.print("\n  Press Ctrl-C to stop.\n")


def _stop_on_signals(server: Any, pool: WorkerPool) -> None:
    """SIGINT/SIGTERM: stop serving and stop restarting workers; a second one: stop now."""
    signals = 0

    def stop() -> None:
        nonlocal signals
        signals += 1
        server.should_exit = True
        pool.stopping()
        if signals > 1:  # a second Ctrl-C: don't wait for anything
            server.force_exit = True
            pool.kill()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)


async def serve_demo(
    config: DemoConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1
) -> int:
    """Run the demo until SIGINT or SIGTERM; returns the exit code."""
    from .pages import create_demo_app

    check_bind(host, Settings.from_env())
    config = prepare(replace(config, base_url=f"http://{host}:{port}"))
    catcher = None
    if config.smtp_url is None:
        catcher = await SmtpCatcher(MailboxStore(config.mailbox_path)).start()
        config = replace(config, smtp_url=catcher.url)
    count = 0 if config.inline else workers
    env = {
        **os.environ,
        "OFFLOAD_URL": config.jobs_url,
        "OFFLOAD_BLOBS_URL": config.blobs_url,
        **config.to_env(),
    }
    pool = WorkerPool(env, count)

    async def ready() -> None:
        await pool.start()
        _announce(config, count, catcher)
        freeze_start_up()  # serving now: the site's start-up objects stay out of collections
        raise_open_files()  # (each page's event stream takes a file)

    server = _server(create_demo_app(config, catching_mail=catcher is not None), host, port, ready)
    _stop_on_signals(server, pool)
    try:
        await server.serve()
    finally:
        if server.started:
            console.print("stopping: web tier, workers, SMTP catcher …")
        await pool.stop()
        if catcher is not None:
            await catcher.stop()
    if not server.started:
        return 1
    console.print("stopped.")
    return 0


def run_demo(
    folder: Path, *, host: str, port: int, workers: int, inline: bool, pace_s: float | None
) -> int:
    """`offload demo`: the settings from the command line and the environment.

    Raises:
        ConfigurationError: the `demo` extra is missing, or a setting is wrong.
    """
    check_extra()
    config = replace(DemoConfig.from_env(), folder=folder.resolve(), inline=inline)
    if pace_s is not None:
        config = replace(config, pace_s=pace_s)
    return run(lambda: serve_demo(config, host=host, port=port, workers=workers))
