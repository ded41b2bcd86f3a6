"""`manage.py offload_worker`: `offload worker` for the project's tasks, Django set up."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from ...config import BACKEND_ENV

#: The reference `offload worker --app` is given: the handlers of the project's tasks.
APP_REF = "offload.contrib.django.worker:app"
#: Options of manage.py itself, handled before the command runs (not the worker's).
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def worker_args(argv: list[str]) -> tuple[str, list[str]]:
    """(task backend alias, the `offload worker` arguments) of the command's arguments:
    `--backend ALIAS` is this command's own; manage.py's options are dropped."""
    alias, rest, i = "default", [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--backend" and i + 1 < len(argv):
            alias, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--backend="):
            alias = arg.partition("=")[2]
        elif arg in _DJANGO_OPTIONS and i + 1 < len(argv):
            i += 1
        elif not arg.startswith(tuple(f"{o}=" for o in _DJANGO_OPTIONS)):
            rest.append(arg)
        i += 1
    return alias, rest


class Command(BaseCommand):
    help = (
        "Run offload workers for this project's tasks: the options of `offload worker` "
        "(--concurrency, --processes, --queues, --grace, --max-jobs, --exit-when-idle, "
        "--metrics-port …), and --backend ALIAS (the TASKS entry, default 'default')."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the arguments to `offload worker` (its parser, help and exit code)."""
        import typer.main

        from ..... import cli

        alias, args = worker_args(argv[2:])
        # Inherited by --processes children, which import the worker module afresh.
        os.environ[BACKEND_ENV] = alias
        os.environ["OFFLOAD_APP"] = APP_REF  # the --app of `offload worker`, not the user's
        worker = typer.main.get_command(cli.cli).commands["worker"]  # type: ignore[attr-defined]
        worker.main(args, prog_name=f"{os.path.basename(argv[0])} {argv[1]}")

    def handle(self, *args: Any, **options: Any) -> None:  # call_command: not supported
        raise NotImplementedError("run it from the command line: manage.py offload_worker")
