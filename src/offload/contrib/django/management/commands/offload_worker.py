"""`manage.py offload_worker`: `offload worker` for the project's tasks, Django set up."""

from __future__ import annotations

import argparse
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
_DJANGO_OPTIONS = ("--settings", "--pythonpath", "--verbosity", "-v")
#: Flags every Django command takes, which mean nothing to the worker: dropped.
_DJANGO_FLAGS = ("--traceback", "--no-color", "--force-color", "--skip-checks")
HELP = (
    "Run offload workers for this project's tasks (the TASKS entry --backend names; its "
    "OPTIONS say offload's URL), with the options of `offload worker`."
)


def worker_args(argv: list[str]) -> list[str]:
    """The command's arguments without the options every Django command takes (--settings,
    --pythonpath, -v/--verbosity, --traceback …)."""
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _DJANGO_OPTIONS and i + 1 < len(argv):
            i += 1
        elif arg in _DJANGO_FLAGS or (arg.startswith("-v") and arg[2:].isdigit()):
            pass
        elif not arg.startswith(tuple(f"{o}=" for o in _DJANGO_OPTIONS)):
            rest.append(arg)
        i += 1
    return rest


def option_argv(command: Any, options: dict[str, Any]) -> list[str]:
    """The command line of `command`'s options given by name (`call_command`'s keywords):
    `exit_when_idle=1` is `--exit-when-idle 1`, `banner=False` `--no-banner`."""
    argv: list[str] = []
    for param in command.params:
        if param.name not in options or options[param.name] is None:
            continue
        value = options[param.name]
        if getattr(param, "is_flag", False):
            flags = param.opts if value else param.secondary_opts
            argv += flags[:1]
        else:
            argv += [param.opts[0], str(value)]
    return argv


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

    def add_arguments(self, parser: Any) -> None:
        """`offload worker`'s options, for `call_command` (the command line is click's)."""
        for param in worker_command("manage.py offload_worker").params:
            if getattr(param, "hidden", False):
                continue
            if getattr(param, "is_flag", False):
                parser.add_argument(
                    *param.opts, dest=param.name, action="store_true", default=argparse.SUPPRESS
                )
                if param.secondary_opts:
                    parser.add_argument(
                        *param.secondary_opts,
                        dest=param.name,
                        action="store_false",
                        default=argparse.SUPPRESS,
                    )
            else:
                parser.add_argument(*param.opts, dest=param.name, default=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        """`call_command("offload_worker", exit_when_idle=1, …)`: the worker, run as the
        command line runs it, until it stops.

        Raises:
            CommandError: an option the worker refuses, or a worker that failed.
        """
        prog = "manage.py offload_worker"
        command = worker_command(prog)
        try:
            code = command.main(
                option_argv(command, options), prog_name=prog, standalone_mode=False
            )
        except typer.TyperException as exc:  # (a click error, typer's own click's)
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            raise CommandError(message) from exc
        if isinstance(code, int) and code:
            raise CommandError(f"the worker exited with status {code}", returncode=code)
