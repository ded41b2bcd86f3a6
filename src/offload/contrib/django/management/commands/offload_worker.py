"""`manage.py offload_worker`: `offload worker` for the project's tasks, Django set up."""

from __future__ import annotations

import copy
import os
import sys
from typing import Annotated, Any

import typer
from django.core.management.base import BaseCommand, CommandError

from ...config import BACKEND_ENV

#: The reference `offload worker --app` is given: the handlers of the project's tasks.
APP_REF = "offload.contrib.django.worker:app"
#: Options of manage.py itself, handled before the command runs (not the worker's).
_DJANGO_OPTIONS = ("--settings", "--pythonpath")
HELP = (
    "Run offload workers for this project's tasks (the TASKS entry --backend names; its "
    "OPTIONS say offload's URL), with the options of `offload worker`."
)


def worker_args(argv: list[str]) -> list[str]:
    """The command's arguments without manage.py's own (--settings, --pythonpath)."""
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _DJANGO_OPTIONS and i + 1 < len(argv):
            i += 1
        elif not arg.startswith(tuple(f"{o}=" for o in _DJANGO_OPTIONS)):
            rest.append(arg)
        i += 1
    return rest


def _backend_option(
    backend: Annotated[
        str, typer.Option(metavar="ALIAS", help="the TASKS entry whose tasks to run")
    ] = "default",
) -> None:
    """Only its parameter is used: --backend, as typer declares it."""


def check_backend(alias: str, url: str | None) -> None:
    """Refuse a `--backend` that is not an OffloadBackend of TASKS, and a `--url` that is
    not that backend's (the worker would drain another store than the one tasks go to).

    Raises:
        CommandError: either, in one line.
    """
    from django.tasks import task_backends

    from ...backend import OffloadBackend

    configured = list(task_backends.settings)
    ours = [a for a in configured if _is_offload(task_backends.settings[a])]
    if alias not in ours:
        what = "not in" if alias not in configured else "not an OffloadBackend in"
        raise CommandError(
            f"--backend {alias!r} is {what} TASKS; offload's backends there: "
            + (", ".join(repr(a) for a in ours) or "none")
        )
    if url is None:
        return
    backend = task_backends[alias]
    assert isinstance(backend, OffloadBackend)
    own = backend.app.settings.url
    if url != own:
        raise CommandError(
            f"--url: TASKS[{alias!r}]'s OPTIONS give offload's URL ({own}); a worker of "
            "another URL would not run its tasks: drop --url, or change OPTIONS['url']"
        )


def _is_offload(entry: dict[str, Any]) -> bool:
    from django.utils.module_loading import import_string

    from ...backend import OffloadBackend

    try:
        backend = import_string(str(entry.get("BACKEND", "")))
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, OffloadBackend)


def worker_command(prog: str) -> Any:
    """`offload worker`'s click command made this command's: its own help and usage,
    `--backend ALIAS` instead of `--app` (the project's tasks are the app)."""
    import typer.main

    from ..... import cli

    worker = typer.main.get_command(cli.cli).commands["worker"]  # type: ignore[attr-defined]
    command = copy.copy(worker)
    options = typer.Typer()
    options.command()(_backend_option)
    backend = typer.main.get_command(options).params[0]
    command.params = [backend, *(_ours(p) for p in worker.params if p.name != "app")]
    command.help = HELP
    run = worker.callback
    assert run is not None

    def callback(backend: str, **options: Any) -> Any:
        check_backend(backend, options.get("url"))
        # Inherited by --processes children, which import the worker module afresh.
        os.environ[BACKEND_ENV] = backend
        return run(app=APP_REF, **options)

    command.callback = callback
    return command


def _ours(param: Any) -> Any:
    """`param` of `offload worker` as this command takes it: --url only as a check."""
    if param.name != "url":
        return param
    url = copy.copy(param)
    url.help = "refused unless it is the --backend's own URL (its OPTIONS['url'])"
    return url


class Command(BaseCommand):
    help = HELP

    def run_from_argv(self, argv: list[str]) -> None:
        """Run `offload worker` on the project's tasks (its parser and exit code)."""
        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        try:
            worker_command(prog).main(worker_args(argv[2:]), prog_name=prog)
        except CommandError as exc:
            self.stderr.write(f"CommandError: {exc}")
            sys.exit(exc.returncode)

    def handle(self, *args: Any, **options: Any) -> None:  # call_command: not supported
        raise NotImplementedError("run it from the command line: manage.py offload_worker")
