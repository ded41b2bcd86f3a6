"""offload.contrib.django in-process: arguments, priorities, queues, statuses and the
on-commit enqueue, on an in-memory offload and an in-memory Django database."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytest.importorskip("django", minversion="6.0")

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        USE_TZ=True,
        INSTALLED_APPS=["offload.contrib.django"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        TASKS={
            "default": {
                "BACKEND": "offload.contrib.django.OffloadBackend",
                "QUEUES": ["default", "reports"],
                "OPTIONS": {"url": "memory://"},
            },
            "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
        },
    )
    django.setup()

from django.core.management.base import CommandError
from django.db import transaction
from django.tasks import TaskResultStatus, task, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_started
from django.test import override_settings

from offload._signing import short_secret
from offload.contract import JobRow, JobState, UnstorableMessage
from offload.contrib.django import OffloadBackend, owner
from offload.contrib.django._same_db import Incomparable, server_settings
from offload.contrib.django.calls import check_arguments, json_problem
from offload.contrib.django.checks import AUTHENTICATION, PRINCIPAL
from offload.contrib.django.config import TaskConfig
from offload.contrib.django.management.commands.offload_worker import (
    check_backend,
    worker_args,
    worker_command,
)
from offload.contrib.django.results import result_of
from offload.errors import Cancel, ConfigurationError, JobError, JobTimeout


@task()
def add(a: int, b: int) -> int:
    return a + b


@task()
async def later(n: int) -> int:
    return n


@task()
def dated() -> datetime:
    return datetime(2026, 12, 6, tzinfo=UTC)


@task()
def spawns() -> str:
    return add.enqueue(1, 2).id


@pytest.fixture(scope="module", autouse=True)
def _close_the_app() -> Iterator[None]:
    yield
    asyncio.run(_backend().app.close())  # stops its loop thread, closes its backend


def _backend() -> OffloadBackend:
    backend = task_backends["default"]
    assert isinstance(backend, OffloadBackend)
    return backend


def _jobs() -> list[JobRow]:
    rows: list[JobRow] = _backend().app._sync_call(lambda a: a.list_jobs(owner=None))
    return rows


def test_flags_say_what_the_backend_does() -> None:
    backend = _backend()
    assert (backend.supports_defer, backend.supports_async_task) == (True, True)
    assert (backend.supports_get_result, backend.supports_priority) == (True, True)


def test_enqueue_stores_a_job_whose_result_maps_back() -> None:
    # Given a task with a priority and a queue, enqueued by a named owner
    when = datetime.now(UTC) + timedelta(hours=1)
    deferred = add.using(priority=40, queue_name="reports", run_after=when)
    with owner("user:7"):
        result = deferred.enqueue(2, b=3)
    # Then the answer is READY, and the stored job says the same
    assert result.status == TaskResultStatus.READY and result.args == [2]
    row = next(r for r in _jobs() if r.id == result.id)
    assert (row.kind, row.queue, row.priority, row.owner) == (
        "django.tasks.reports",
        "reports",
        -40,  # offload runs lower first; Django runs higher first
        "user:7",
    )
    assert math.isclose(row.run_at, when.timestamp())
    found = add.get_result(result.id)
    assert (found.status, found.args, found.kwargs) == (TaskResultStatus.READY, [2], {"b": 3})
    assert (found.task.priority, found.task.queue_name, found.task.run_after) == (
        40,
        "reports",
        when,
    )


def test_async_tasks_are_accepted() -> None:
    assert later.enqueue(1).status == TaskResultStatus.READY


def test_rolled_back_transaction_enqueues_nothing() -> None:
    before = len(_jobs())
    with pytest.raises(RuntimeError), transaction.atomic():
        result = add.enqueue(1, 2)
        raise RuntimeError("undo")
    assert len(_jobs()) == before
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result(result.id)
    with transaction.atomic():
        kept = add.enqueue(1, 2)
        assert len(_jobs()) == before  # stored when the transaction commits
    assert add.get_result(kept.id).status == TaskResultStatus.READY


def test_an_argument_json_cannot_carry_is_named_and_nothing_is_enqueued() -> None:
    before = len(_jobs())
    with pytest.raises(TypeError, match=r"add: argument 'b': a datetime\.datetime is not JSON"):
        add.enqueue(1, b=datetime.now(UTC))
    with pytest.raises(TypeError, match=r"positional argument 0\[1\]\['x'\]: nan is not"):
        add.enqueue([1, {"x": float("nan")}], 2)
    # an integer larger than a job's JSON carries is refused here, before any transaction
    # commits (after it, on the on-commit path, it lost the job)
    with pytest.raises(TypeError, match=r"argument 'b'\[0\]: 1180591620717411303424 does not"):
        with transaction.atomic():
            add.enqueue(1, b=[2**70])
    # and a NUL character, which PostgreSQL cannot store, before the caller commits too
    # (refused only in the on-commit callback, it lost the job the caller had been given)
    with transaction.atomic():
        with pytest.raises(UnstorableMessage, match="NUL character"):
            add.enqueue(1, b={"text": "a\x00b"})
    assert len(_jobs()) == before


def test_a_tuple_argument_travels_as_a_list() -> None:
    result = add.enqueue((1, (2, 3)), b={"pair": (4, 5)})
    assert (result.args, result.kwargs) == ([[1, [2, 3]]], {"b": {"pair": [4, 5]}})
    stored = add.get_result(result.id)
    assert (stored.args, stored.kwargs) == ([[1, [2, 3]]], {"b": {"pair": [4, 5]}})


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ((1, "a", [None, True, 1.5]), None),
        ({"k": {"n": [1]}}, None),
        ({1: "x"}, "key 1 is not a string"),
        ([0, {"a": {1}}], "[1]['a']: a builtins.set is not JSON"),
        (b"x", "a builtins.bytes is not JSON"),
        (float("inf"), "inf is not a JSON number"),
        ([2**64 - 1, -(2**63)], None),
        ([2**64], "[0]: 18446744073709551616 does not fit 64 bits (pass it as a string)"),
        (-(2**63) - 1, "-9223372036854775809 does not fit 64 bits (pass it as a string)"),
    ],
)
def test_json_problem(value: Any, problem: str | None) -> None:
    assert json_problem(value) == problem


def test_check_arguments_accepts_json() -> None:
    check_arguments("t", (1, [2]), {"k": {"v": None}})


def test_priority_out_of_django_range_is_invalid() -> None:
    with pytest.raises(InvalidTask):
        add.using(priority=101)


def test_unknown_result_does_not_exist() -> None:
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result("0193a1c2-0000-7000-8000-000000000000")


def _row(state: JobState, **fields: Any) -> JobRow:
    return JobRow(
        id="j1",
        kind="django.tasks.default",
        version=1,
        queue="default",
        state=state,
        priority=0,
        attempt=1,
        max_attempts=1,
        run_at=0.0,
        enqueued_at=0.0,
        owner="local",
        payload={"task": f"{__name__}.add", "args": [1, 2]},
        worker="w1",
        **fields,
    )


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (JobState.QUEUED, TaskResultStatus.READY),
        (JobState.RETRYING, TaskResultStatus.READY),
        (JobState.RUNNING, TaskResultStatus.RUNNING),
        (JobState.SUCCEEDED, TaskResultStatus.SUCCESSFUL),
        (JobState.FAILED, TaskResultStatus.FAILED),
        (JobState.DEAD, TaskResultStatus.FAILED),
        (JobState.CANCELLED, TaskResultStatus.FAILED),
    ],
)
def test_states_map_to_statuses(state: JobState, status: TaskResultStatus) -> None:
    assert result_of(_row(state), "default").status == status


def test_success_and_failure_carry_value_and_error() -> None:
    done = result_of(_row(JobState.SUCCEEDED, result=3, finished_at=5.0), "default")
    assert (done.return_value, done.worker_ids, done.finished_at) == (
        3,
        ["w1"],
        datetime.fromtimestamp(5.0, UTC),
    )
    error = {"type": "KeyError", "message": "'x'", "traceback": "Traceback …"}
    failed = result_of(_row(JobState.DEAD, error=error), "default")
    assert failed.errors[0].exception_class is KeyError
    assert failed.errors[0].traceback == "Traceback …"
    mine = {"type": "Undo", "message": "", "traceback": f"Traceback …\n{__name__}.Undo\n"}
    assert result_of(_row(JobState.FAILED, error=mine), "default").errors[0].exception_class is Undo
    with pytest.raises(TaskResultDoesNotExist):
        result_of(dataclasses.replace(_row(JobState.QUEUED), kind="other"), "default")


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        ({"type": "Cancelled", "message": "cancelled while running"}, Cancel),
        ({"type": "Cancel", "message": "no longer wanted"}, Cancel),
        ({"type": "JobTimeout", "message": "ran past 5 s"}, JobTimeout),
        ({"type": "LeaseExpired", "message": "its worker was lost"}, JobError),
        ({"type": "Gone", "message": "a class no traceback names"}, JobError),
    ],
)
def test_offloads_own_errors_name_a_class_django_can_import(
    error: dict[str, str], cls: type[BaseException]
) -> None:
    # A task cancelled while it ran (or ended by offload) has no traceback: its TaskError
    # still names a class Django imports, and says what offload recorded.
    found = result_of(_row(JobState.CANCELLED, error=error), "default").errors[0]
    assert found.exception_class is cls
    assert found.traceback == f"{error['type']}: {error['message']}"


class Undo(Exception):
    """An exception of the project's own."""


class _Db:
    def __init__(self, vendor: str, **given: Any) -> None:
        self.vendor = vendor
        self.settings_dict = {"HOST": "", "PORT": "", "NAME": "shop", "USER": "u", **given}


@pytest.mark.parametrize(
    ("url", "db", "joins"),
    [
        ("postgresql://u@localhost/shop", _Db("postgresql"), True),
        ("postgresql://u@127.0.0.1:5432/shop", _Db("postgresql", HOST="127.0.0.1"), True),
        ("postgresql://u@127.0.0.1:5433/shop", _Db("postgresql", HOST="127.0.0.1"), False),
        ("postgresql://u@localhost/other", _Db("postgresql"), False),
        ("sqlite:///shop.db", _Db("sqlite"), False),
        ("redis://localhost/0", _Db("postgresql"), False),
        ("postgresql://other@localhost/shop", _Db("postgresql"), False),
        # The same database in another schema is not the same place for offload's tables.
        (
            "postgresql://u@localhost/shop?options=-csearch_path%3Doffload_schema",
            _Db("postgresql", OPTIONS={"options": "-c search_path=app_schema"}),
            False,
        ),
        (
            "postgresql://u@localhost/shop?options=-csearch_path%3Doffload_schema",
            _Db("postgresql"),
            False,
        ),
        (
            "postgresql://u@localhost/shop?options=-c%20search_path%3DShop%2Cpublic",
            _Db("postgresql", OPTIONS={"options": "-csearch_path=shop,public"}),
            True,
        ),
        (
            "postgresql://u@localhost/shop?options=--search-path%3Dshop&sslmode=require",
            _Db("postgresql", OPTIONS={"options": "-c search_path=shop"}),
            True,
        ),
        (
            "postgresql://u@localhost/shop",
            _Db("postgresql", OPTIONS={"options": "-c statement_timeout=5s"}),
            False,
        ),
        (  # unreadable options count as different
            "postgresql://u@localhost/shop?options=-x",
            _Db("postgresql", OPTIONS={"options": "-x"}),
            False,
        ),
        ("postgresql://u@localhost/shop?host=elsewhere", _Db("postgresql"), False),
    ],
)
def test_same_database_is_detected_from_the_settings(url: str, db: _Db, joins: bool) -> None:
    assert TaskConfig.of({"url": url}, {"default"}).joins(db) is joins


@pytest.mark.parametrize(
    ("options", "settings_set"),
    [
        (None, {}),
        ("", {}),
        ("-c search_path=app", {"search_path": "app"}),
        ("-csearch_path=app", {"search_path": "app"}),
        (r"--search-path=App,\ Public", {"search_path": "app,public"}),
        ('-c search_path="App",x', {"search_path": '"App",x'}),
        ("-c a=1 -cb=2", {"a": "1", "b": "2"}),
        (r"-c application_name=my\ app", {"application_name": "my app"}),
    ],
)
def test_server_settings_of_libpq_options(
    options: str | None, settings_set: dict[str, str]
) -> None:
    assert server_settings(options) == settings_set


@pytest.mark.parametrize("options", ["-x", "-c", "search_path=a", "-c =a", "--flag", "-c a=1 \\"])
def test_server_settings_refuse_what_they_cannot_read(options: str) -> None:
    with pytest.raises(Incomparable):
        server_settings(options)


def test_options_are_checked() -> None:
    assert TaskConfig.of({"same_transaction": False}, set()).joins(_Db("postgresql")) is False
    with pytest.raises(ConfigurationError, match="no option 'urls'"):
        TaskConfig.of({"urls": "x"}, set())
    with pytest.raises(ConfigurationError, match="max_attempts"):
        TaskConfig.of({"max_attempts": 0}, set())
    assert TaskConfig.of({"timeout": timedelta(minutes=1)}, set()).timeout == 60.0


def test_worker_command_drops_the_options_of_manage_py() -> None:
    argv = ["--concurrency", "4", "--backend", "bulk", "--settings=x.y", "--pythonpath", "p"]
    assert worker_args(argv) == ["--concurrency", "4", "--backend", "bulk"]
    # and those every Django command takes (-v 2 was refused: "No such option: -v")
    argv = ["-v", "2", "--traceback", "--verbosity=3", "-v0", "--no-color", "--max-jobs", "1"]
    assert worker_args(argv) == ["--max-jobs", "1"]


def test_worker_command_has_its_own_usage() -> None:
    command = worker_command("manage.py offload_worker")
    names = [p.name for p in command.params]
    assert names[0] == "backend" and "app" not in names and "concurrency" in names
    assert "--backend" in command.help and not any(p.required for p in command.params)


def test_worker_command_refuses_another_backend_or_url() -> None:
    with pytest.raises(CommandError, match=r"'nope' is not in TASKS; .*: 'default'$"):
        check_backend("nope", None)
    with pytest.raises(CommandError, match="'immediate' is not an OffloadBackend in TASKS"):
        check_backend("immediate", None)
    with pytest.raises(CommandError, match=r"give offload's URL \(memory://\)"):
        check_backend("default", "sqlite:///other.db")
    check_backend("default", "memory://")
    check_backend("default", None)


def test_only_an_offload_backend_is_mounted_or_worked() -> None:
    from offload.contrib.django.asgi import mount
    from offload.contrib.django.worker import worker_app

    with pytest.raises(ConfigurationError, match="not offload's OffloadBackend"):
        mount(lambda *a: None, backend="immediate")
    with pytest.raises(ConfigurationError, match="ImmediateBackend, not offload's"):
        worker_app("immediate")
    assert set(worker_app("default").handlers) == {"django.tasks.default", "django.tasks.reports"}


def test_a_record_django_prints_is_not_printed_again_at_the_root() -> None:
    import io
    import logging

    from django.utils.log import RequireDebugTrue

    from offload._logging import ShownAbove, print_once

    parent, ours, theirs = logging.getLogger("djtest"), io.StringIO(), io.StringIO()
    django_console = logging.StreamHandler(theirs)  # as Django's default LOGGING has it
    django_console.addFilter(RequireDebugTrue())
    root_handler = logging.StreamHandler(ours)  # as offload's worker sets the root up
    parent.addHandler(django_console)
    logging.getLogger().addHandler(root_handler)
    parent.setLevel(logging.INFO)
    try:
        print_once()
        print_once()
        assert len(root_handler.filters) == 1
        with override_settings(DEBUG=True):
            logging.getLogger("djtest.tasks").info("debug on")
        logging.getLogger("djtest.tasks").info("debug off")
    finally:
        logging.getLogger().removeHandler(root_handler)
        parent.removeHandler(django_console)
        for handler in logging.getLogger().handlers:  # pytest's, given the filter too
            handler.filters = [f for f in handler.filters if not isinstance(f, ShownAbove)]
    assert theirs.getvalue() == "debug on\n"
    assert ours.getvalue() == "debug off\n"


def test_the_worker_prints_a_django_line_once_with_debug_on() -> None:
    # As `manage.py offload_worker` runs: Django set up with DEBUG on and its default
    # LOGGING (a console handler on `django`), the worker's module imported (it calls
    # print_once), then offload's command sets the root's handler up.
    script = """
import logging, django
from django.conf import settings
settings.configure(DEBUG=True)
django.setup()
from offload._logging import print_once
print_once()
from offload.cli import _setup_logging
_setup_logging()
logging.getLogger("django.tasks").info("Task id=1 state=RUNNING")
logging.getLogger("offload.worker").info("offload's own line")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr.count("Task id=1 state=RUNNING") == 1, done.stderr
    assert done.stderr.count("offload's own line") == 1, done.stderr


def test_a_task_the_worker_does_not_know_is_given_back_not_failed() -> None:
    from offload.contrib.django.calls import TaskCall
    from offload.contrib.django.worker import run_call
    from offload.errors import _ForAnotherWorker

    call = TaskCall.model_validate({"task": "shop.tasks.deployed_later", "args": [], "kwargs": {}})
    # (it was a Retry, spending an attempt: with the default max_attempts of 1, failed at once)
    with pytest.raises(_ForAnotherWorker, match=r"shop\.tasks\.deployed_later waits for a"):
        run_call(call, ctx=None)  # type: ignore[arg-type]  # refused before the context is read
    # and the worker asks before the job starts (no start, no wait counted), as it does of
    # a kind it has no handler for.
    from offload.contrib.django.worker import _unready

    assert "shop.tasks.deployed_later waits for a" in (_unready(call) or "")


def test_a_return_value_json_cannot_carry_fails_the_task_at_once_not_retried() -> None:
    from offload.contrib.django.config import app_for
    from offload.contrib.django.worker import run_call
    from offload.worker.runner import Worker

    # Given a backend that gives each task 3 attempts, and a task returning a datetime,
    app = app_for(TaskConfig.of({"url": "memory://", "max_attempts": 3}, {"dates"}))
    app.handles(app.spec_of("django.tasks.dates").cls)(run_call)
    ran: list[str] = []
    task_started.connect(
        lambda sender, task_result, **_: ran.append(task_result.id), weak=False, dispatch_uid="ran"
    )

    async def run_one() -> JobRow | None:
        async with app:
            call = {"task": dated.module_path, "args": [], "kwargs": {}}
            job = await app.enqueue(app.spec_of("django.tasks.dates").cls(**call))
            await Worker(app, concurrency=1, max_jobs=1).run()
            return await app.get(job.id, owner=None)

    try:
        row = asyncio.run(run_one())
    finally:
        task_started.disconnect(dispatch_uid="ran")
    # when a worker runs it, it ran once and failed for good, saying why: a retry would
    # only run it again (it was retried until its attempts were spent)
    assert row is not None and (row.state, row.attempt) == (JobState.FAILED, 1)
    assert len(ran) == 1
    assert row.error is not None and row.error["type"] == "TypeError"
    assert "return value cannot be stored" in row.error["message"]
    assert "Unsupported type" in row.error["message"]


def test_a_task_enqueued_by_a_running_task_belongs_to_that_tasks_owner() -> None:
    from offload.contrib.django.config import app_for
    from offload.contrib.django.worker import run_call
    from offload.worker.runner import Worker

    app = app_for(TaskConfig.of({"url": "memory://"}, {"spawning"}))
    app.handles(app.spec_of("django.tasks.spawning").cls)(run_call)

    async def run_one() -> JobRow | None:
        async with app:
            call = {"task": spawns.module_path, "args": [], "kwargs": {}}
            cls = app.spec_of("django.tasks.spawning").cls
            job = await app.enqueue(cls(**call), owner="user:42")
            await Worker(app, concurrency=1, max_jobs=1).run()
            return await app.get(job.id, owner=None)

    # Given a task of user 42's that enqueues another, when a worker runs it,
    row = asyncio.run(run_one())
    assert row is not None and row.state is JobState.SUCCEEDED
    # the task it enqueued is user 42's too (it was `local`'s: no user could see it)
    child = next(r for r in _jobs() if r.id == row.result)
    assert (child.kind, child.owner) == ("django.tasks.default", "user:42")


@pytest.mark.parametrize(
    ("middleware", "problem"),
    [
        ([AUTHENTICATION, PRINCIPAL], None),
        (["x.Other"], None),
        (
            [PRINCIPAL, AUTHENTICATION],
            "PrincipalMiddleware is before AuthenticationMiddleware in MIDDLEWARE",
        ),
        ([PRINCIPAL], "PrincipalMiddleware is in MIDDLEWARE without AuthenticationMiddleware"),
    ],
)
def test_manage_py_check_finds_the_principal_middleware_out_of_order(
    middleware: list[str], problem: str | None
) -> None:
    from django.core.checks import run_checks

    with override_settings(MIDDLEWARE=middleware):
        found = [e for e in run_checks() if e.id == "offload.E001"]
    assert [e.msg for e in found] == ([problem] if problem else [])


@pytest.mark.parametrize(("key", "refused"), [("short", True), ("k" * 32, False), (None, False)])
def test_manage_py_check_refuses_a_signing_key_offload_would_refuse(
    monkeypatch: pytest.MonkeyPatch, key: str | None, refused: bool
) -> None:
    from django.core.checks import run_checks

    # A short OFFLOAD_SECRET_KEY failed only the first request that enqueued a task.
    if key is None:
        monkeypatch.delenv("OFFLOAD_SECRET_KEY", raising=False)
    else:
        monkeypatch.setenv("OFFLOAD_SECRET_KEY", key)
    found = [e for e in run_checks() if e.id == "offload.E002"]
    assert [e.msg for e in found] == ([f"{short_secret(b'short')}"] if refused else []), found


def test_manage_py_check_refuses_a_short_fallback_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.checks import run_checks

    monkeypatch.setenv("OFFLOAD_SECRET_KEY", "k" * 32)
    monkeypatch.setenv("OFFLOAD_SECRET_KEY_FALLBACKS", f"{'o' * 32},old")
    found = [e.msg for e in run_checks() if e.id == "offload.E002"]
    assert found == [short_secret(b"old", "a key in OFFLOAD_SECRET_KEY_FALLBACKS")]
    monkeypatch.setenv("OFFLOAD_SECRET_KEY", "hex:")  # (a template whose file was missing)
    found = [e.msg for e in run_checks() if e.id == "offload.E002"]
    assert len(found) == 1 and found[0].startswith("OFFLOAD_SECRET_KEY: a key written hex:")


CHECK_SUBCLASS = """
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "offload.contrib.django"],
    MIDDLEWARE=["__main__.Own", "offload.contrib.django.principal.PrincipalMiddleware"],
)
django.setup()
from django.contrib.auth.middleware import AuthenticationMiddleware
class Own(AuthenticationMiddleware):
    pass
from django.core.checks import run_checks
print([e.id for e in run_checks() if e.id.startswith("offload")])
"""


def test_a_subclass_of_djangos_authentication_middleware_is_authentication() -> None:
    # A project's own authentication middleware, Django's underneath, before
    # PrincipalMiddleware: no error (it was one, stopping migrate and runserver).
    done = subprocess.run(
        [sys.executable, "-c", CHECK_SUBCLASS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
