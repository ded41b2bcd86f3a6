"""The command line tells the truth: read-only commands create nothing, ids resolve by prefix,
errors are one clear line with an exit code, and servers say where they point at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import Result
from typer.testing import CliRunner

import offload
from offload import App, Context, JobState, Message, Settings
from offload import cli as cli_module
from offload.cli import cli
from offload.contract import KindLimits
from offload.worker.runner import Worker

from ..services import (
    server_store,
)
from ..sqlite_support import sqlite_file

#: The App the commands below load with `--app` (this module, imported by name).
APP_REF = f"{__name__}:app"
app = App("cli-test")


@app.message("cli.report", queue="reports")
class Report(Message):
    period: str


@app.message("cli.shout")
class Shout(Message):
    text: str


@app.handles(Report)
def report(msg: Report, ctx: Context) -> None:
    return None


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=input)


def one_line(result: Result) -> str:
    """The whole output of a failed command, which must be a single line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def enqueue(url: str, *messages: Message) -> list[str]:
    async def main() -> list[str]:
        async with App("setup", url=url) as setup:
            setup.message("cli.report", queue="reports")(Report)
            setup.message("cli.shout")(Shout)
            return [job.id for job in await setup.enqueue_many(messages)]

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def fresh_settings(workdir: Path) -> None:
    """`--url` reconfigures the module's App: each test starts from the environment."""
    app.configure(Settings.from_env())


@pytest.fixture
def url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'jobs.db'}"


# -- read-only commands create nothing -------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["jobs", "list"], ["queues"], ["jobs", "show", "0193"], ["jobs", "cancel", "01"]]
)
def test_read_only_commands_in_an_empty_folder_create_no_database(
    workdir: Path, command: list[str]
) -> None:
    result = invoke(*command)
    assert result.exit_code == 1
    line = one_line(result)
    assert "sqlite:///offload.db" in line and "offload migrate" in line
    assert "offload worker" in line
    assert list(workdir.iterdir()) == []


def test_a_database_in_a_missing_folder_is_reported_not_created(workdir: Path) -> None:
    missing = workdir / "no" / "such" / "dir" / "x.db"
    result = invoke("queues", env={"OFFLOAD_URL": f"sqlite:///{missing}"})
    assert result.exit_code == 1
    assert f"sqlite:///{missing}" in one_line(result)
    assert not (workdir / "no").exists()


def test_migrate_creates_the_database_the_read_only_commands_then_read(url: str) -> None:
    assert invoke("queues", "--url", url).exit_code == 1
    made = invoke("migrate", "--url", url)
    assert made.exit_code == 0 and "created an offload database" in made.output
    again = invoke("migrate", "--url", url)  # (it said "up to date" the first time too)
    assert again.exit_code == 0 and "schema is up to date" in again.output
    result = invoke("queues", "--url", url, "--json")
    assert result.exit_code == 0
    assert set(orjson.loads(result.output)) == {"offload.notify"}  # no job anywhere yet


def test_an_older_file_is_upgraded_by_migrate_not_by_a_look_at_it(workdir: Path) -> None:
    path = workdir / "old.db"
    url = f"sqlite:///{path}"
    assert invoke("migrate", "--url", url).exit_code == 0
    with sqlite_file(path) as conn:  # as an older offload left it
        conn.execute("UPDATE offload_meta SET value = '4' WHERE key = 'schema_version'")
    looked = invoke("queues", "--url", url)
    assert looked.exit_code == 2
    assert "older than this offload (5): run `offload migrate`" in one_line(looked)
    migrated = invoke("migrate", "--url", url)
    assert migrated.exit_code == 0 and "applied schema migrations [5]" in migrated.output
    assert invoke("queues", "--url", url).exit_code == 0


def test_a_file_that_is_not_an_offload_database_is_refused_untouched(workdir: Path) -> None:
    other = workdir / "other.db"
    other.write_bytes(b"")
    result = invoke("jobs", "list", "--url", f"sqlite:///{other}")
    assert result.exit_code == 1 and "not an offload database" in one_line(result)
    assert other.read_bytes() == b""


# -- jobs: full ids, prefixes, unknown ids, states -------------------------------------------


def test_jobs_list_shows_whole_ids(url: str) -> None:
    ids = enqueue(url, Report(period="2026-10"), Shout(text="hi"))
    result = invoke("jobs", "list", "--url", url)
    assert result.exit_code == 0, result.output
    for job_id in ids:
        assert job_id in result.output
    wide = invoke("jobs", "list", "--url", url, "--wide")
    assert wide.exit_code == 0 and "reports" in wide.output and "local" in wide.output


def test_names_in_tables_are_shown_as_written_not_as_markup(url: str) -> None:
    # A queue `mail[eu]` showed as `mail` (Rich markup), and one holding `[/x]` ended the
    # command with a markup error.
    async def main() -> None:
        async with App("setup", url=url) as setup:
            setup.message("cli.report[eu]", queue="mail[eu]")(Report)
            setup.message("cli.shout", queue="[/x]q")(Shout)
            await setup.enqueue_many([Report(period="2026-10"), Shout(text="hi")])

    asyncio.run(main())
    queues = invoke("queues", "--url", url)
    assert queues.exit_code == 0, queues.output
    assert "mail[eu]" in queues.output and "[/x]q" in queues.output
    wide = invoke("jobs", "list", "--url", url, "--wide")
    assert wide.exit_code == 0, wide.output
    assert "cli.report[eu]" in wide.output and "[/x]q" in wide.output
    # and so do its other lines (a purge's said so after it had deleted the jobs)
    matched = invoke("jobs", "cancel", "--all-matching", "--queue", "no[/x]", "--url", url, "--yes")
    assert matched.exit_code == 0 and "queue=no[/x]" in matched.output, matched.output
    purged = invoke("jobs", "purge", "[/x]q", "--url", url, "--yes")
    assert purged.exit_code == 0 and "from [/x]q" in purged.output, purged.output


def test_jobs_list_says_when_a_delayed_job_runs(url: str) -> None:
    async def main() -> str:
        async with App("setup", url=url) as setup:
            setup.message("cli.report", queue="reports")(Report)
            return (await setup.enqueue(Report(period="2026-10"), delay=600)).id

    job_id = asyncio.run(main())
    listed = invoke("jobs", "list", "--url", url)
    assert listed.exit_code == 0, listed.output
    (line,) = [line for line in listed.output.splitlines() if job_id in line]
    assert "queued (runs in 9m)" in line  # `offload queues` counts it as scheduled


def test_jobs_show_retry_and_cancel_take_a_unique_prefix(url: str) -> None:
    (job_id,) = enqueue(url, Report(period="2026-10"))
    shown = invoke("jobs", "show", job_id[:13], "--url", url)
    assert shown.exit_code == 0, shown.output
    assert job_id in shown.output and '"state": "queued"' in shown.output
    stored = orjson.loads(shown.output)["stored"]
    assert stored["payload"] == {"period": "2026-10"} and stored["owner"] == "local"
    cancelled = invoke("jobs", "cancel", job_id[:8].upper(), "--url", url)
    assert cancelled.exit_code == 0 and f"job {job_id} cancelled" in cancelled.output
    retried = invoke("jobs", "retry", job_id.replace("-", "")[:20], "--url", url)
    assert retried.exit_code == 0 and f"job {job_id} is queued again" in retried.output


def test_jobs_list_filters_by_queue_text_and_time_and_counts_the_matches(url: str) -> None:
    first, second, shout = enqueue(
        url, Report(period="2026-10"), Report(period="2026-11"), Shout(text="Hello World")
    )
    reports = invoke("jobs", "list", "--url", url, "--queue", "reports")
    assert reports.exit_code == 0, reports.output
    assert first in reports.output and second in reports.output and shout not in reports.output
    assert "2 shown of 2 matching" in reports.output
    found = invoke("jobs", "list", "--url", url, "--search", "hello WORLD", "--json")
    assert found.exit_code == 0 and shout in found.output and first not in found.output
    recent = invoke("jobs", "list", "--url", url, "--since", "1h", "--limit", "1")
    assert recent.exit_code == 0 and "1 shown of 3 matching" in recent.output
    older = invoke("jobs", "list", "--url", url, "--until", "2026-01-01T00:00:00Z")
    assert older.exit_code == 0 and "0 shown of 0 matching" in older.output
    mine = invoke("jobs", "list", "--url", url, "--id", second[:30], "--owner", "local")
    assert second in mine.output and first not in mine.output
    bad = invoke("jobs", "list", "--url", url, "--since", "soon")
    assert bad.exit_code == 2 and "neither an age" in one_line(bad)
    inverted = invoke("jobs", "list", "--url", url, "--since", "30m", "--until", "1h")
    assert inverted.exit_code == 2 and "is not before --until" in one_line(inverted)
    # An age before year 1 was a traceback (OverflowError); a limit out of range too
    for age in ("999999d", "99999999999d"):
        too_old = invoke("jobs", "list", "--url", url, "--since", age)
        assert too_old.exit_code == 2 and "longer ago than any job" in one_line(too_old)
    for limit in ("0", "-1", "99999999999999999999"):
        assert invoke("jobs", "list", "--url", url, "--limit", limit).exit_code == 2, limit


def test_a_bulk_action_asks_again_when_more_match_than_it_asked_about(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(url, Report(period="1"), Report(period="2"))
    asked: list[str] = []
    confirm = cli_module.typer.confirm

    def meanwhile(text: str, **kw: object) -> bool:
        # Given a third report enqueued while the operator reads the first question,
        asked.append(text)
        if len(asked) == 1:
            enqueue(url, Report(period="3"))
        return confirm(text, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cli_module.typer, "confirm", meanwhile)
    answer = invoke("jobs", "cancel", "--all-matching", "--queue", "reports", "--url", url,
                    input="y\ny\n")  # fmt: skip
    # then the question comes again with the new count, and all three are cancelled.
    assert answer.exit_code == 0, answer.output
    assert [q.split(" queued")[0] for q in asked] == ["cancel 2", "cancel 3"]
    assert "1 more match now" in answer.output and "cancelled 3 jobs" in answer.output


def test_bulk_actions_ask_with_the_count_and_change_exactly_what_matches(url: str) -> None:
    first, second, shout = enqueue(url, Report(period="1"), Report(period="2"), Shout(text="x"))
    ask = ["jobs", "cancel", "--all-matching", "--queue", "reports", "--url", url]
    # Given the question, a "no" changes nothing
    no = invoke(*ask, input="n\n")
    assert no.exit_code == 1
    assert "cancel 2 queued, retrying or running jobs matching queue=reports?" in no.output
    assert "2 shown of 2 matching" in invoke("jobs", "list", "--state", "queued", "--queue",
                                             "reports", "--url", url).output  # fmt: skip
    # and a "yes" cancels both reports, and only them
    yes = invoke(*ask, input="y\n")
    assert yes.exit_code == 0 and "cancelled 2 jobs" in yes.output
    cancelled = invoke("jobs", "list", "--state", "cancelled", "--json", "--url", url).output
    assert first in cancelled and second in cancelled and shout not in cancelled
    # A filter that names a state is the question (it listed every retryable state too)
    asked = invoke("jobs", "retry", "--all-matching", "--state", "cancelled", "--url", url,
                   input="n\n")  # fmt: skip
    assert "retry 2 jobs matching state=cancelled?" in asked.output
    retried = invoke("jobs", "retry", "--all-matching", "--kind", "cli.report", "--yes",
                     "--url", url)  # fmt: skip
    assert retried.exit_code == 0 and "retried 2 jobs" in retried.output
    # A bulk delete never touches waiting jobs: there is nothing it may delete
    nothing = invoke("jobs", "delete", "--all-matching", "--yes", "--url", url)
    assert "no cancelled, dead, failed or succeeded job matches (every job)" in nothing.output
    # (asked for queued jobs, while one is queued: it said "no job matches", and exited 0)
    waiting = invoke("jobs", "delete", "--all-matching", "--state", "queued", "--url", url)
    assert waiting.exit_code == 2 and one_line(waiting) == (
        "error: queued jobs cannot be deleted: only cancelled, dead, failed or succeeded jobs "
        "can be"
    )
    assert shout in invoke("jobs", "list", "--state", "queued", "--url", url).output
    invoke("jobs", "cancel", first, "--url", url)
    gone = invoke("jobs", "delete", "--all-matching", "--yes", "--url", url)
    assert gone.exit_code == 0 and "deleted 1 job" in gone.output and "1 jobs" not in gone.output
    assert first not in invoke("jobs", "list", "--url", url).output
    refused = invoke("jobs", "delete", shout, "--url", url)
    assert refused.exit_code == 1 and "only a finished job can be deleted" in refused.output
    invoke("jobs", "cancel", shout, "--url", url)
    # One job's delete asks too: a "no" keeps it, a "yes" deletes it
    kept = invoke("jobs", "delete", shout[:30], "--url", url, input="n\n")
    assert kept.exit_code == 1 and f"delete job {shout} with its history?" in kept.output
    assert "Aborted." in kept.output and shout in invoke("jobs", "list", "--url", url).output
    deleted = invoke("jobs", "delete", shout[:30], "--url", url, input="y\n")
    assert deleted.exit_code == 0 and f"job {shout} deleted" in deleted.output
    assert shout not in invoke("jobs", "list", "--url", url).output


def test_purge_asks_with_the_count_of_waiting_jobs(url: str) -> None:
    enqueue(url, Report(period="1"), Report(period="2"), Shout(text="x"))
    no = invoke("jobs", "purge", "reports", "--url", url, input="n\n")
    assert no.exit_code == 1 and "delete the 2 waiting jobs in 'reports'?" in no.output
    assert (
        "2 shown of 2 matching" in invoke("jobs", "list", "--queue", "reports", "--url", url).output
    )
    yes = invoke("jobs", "purge", "reports", "--url", url, input="y\n")
    assert yes.exit_code == 0 and "purged 2 jobs from reports" in yes.output
    empty = invoke("jobs", "purge", "reports", "--url", url)  # nothing to ask about
    assert empty.exit_code == 0 and one_line(empty) == "no job waits in reports"
    for queue in ("reports", "no-such-queue"):  # with --yes too (it said "purged 0 jobs")
        told = invoke("jobs", "purge", queue, "--yes", "--url", url)
        assert told.exit_code == 0 and one_line(told) == f"no job waits in {queue}"
    assert "1 shown of 1 matching" in invoke("jobs", "list", "--url", url).output


def test_a_bulk_action_needs_an_id_or_all_matching_never_both(url: str) -> None:
    (job_id,) = enqueue(url, Report(period="1"))
    for args in (
        ["retry"],
        ["cancel", job_id, "--all-matching"],
        ["delete", job_id, "--kind", "x"],
    ):
        result = invoke("jobs", *args, "--url", url)
        assert result.exit_code == 2 and one_line(result).startswith("error: "), args


def test_an_ambiguous_prefix_lists_the_candidates(url: str) -> None:
    first, second = enqueue(url, Report(period="1"), Report(period="2"))
    common = first[: next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)]
    for command in ("show", "retry", "cancel"):
        result = invoke("jobs", command, common, "--url", url)
        assert result.exit_code == 1, result.output
        assert "ambiguous" in result.output
        assert first in result.output and second in result.output


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema or key prefix on the test servers."""
    with server_store(request.param) as url:
        yield url


def test_prefixes_resolve_on_server_backends(workdir: Path, server_url: str) -> None:
    first, second = enqueue(server_url, Report(period="1"), Report(period="2"))
    ambiguous = invoke("jobs", "show", first[:4], "--url", server_url)
    assert ambiguous.exit_code == 1 and first in ambiguous.output and second in ambiguous.output
    cancelled = invoke("jobs", "cancel", second.replace("-", "")[:31].upper(), "--url", server_url)
    assert cancelled.exit_code == 0 and f"job {second} cancelled" in cancelled.output
    unknown = invoke("jobs", "show", "0" * 12, "--url", server_url)
    assert unknown.exit_code == 1 and one_line(unknown) == f"error: no job {'0' * 12}"


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_an_unknown_id_is_no_job_and_exit_1(url: str, command: str) -> None:
    enqueue(url, Report(period="1"))
    unknown = "01a2229f-9ca6-7065-bb1a-9a899badf774"
    result = invoke("jobs", command, unknown, "--url", url)
    assert result.exit_code == 1
    assert one_line(result) == f"error: no job {unknown}"
    result = invoke("jobs", command, "not-an-id", "--url", url)
    assert result.exit_code == 1 and one_line(result) == "error: no job not-an-id"
    result = invoke("jobs", command, "", "--url", url)
    assert result.exit_code == 1 and one_line(result) == "error: no job (an empty id)"


def test_a_bogus_state_is_an_error_naming_the_valid_ones(url: str) -> None:
    enqueue(url, Report(period="1"))
    result = invoke("jobs", "list", "--state", "bogus", "--url", url)
    assert result.exit_code == 2
    for state in JobState:
        assert state.value in result.output
    listed = invoke("jobs", "list", "--state", "queued", "--json", "--url", url)
    assert listed.exit_code == 0 and '"state": "queued"' in listed.output


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"offload {offload.__version__}"


# -- unreachable servers: one line, with the cause, within the connect timeout ----------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize(
    "scheme", [pytest.param("postgresql", id="postgres"), pytest.param("redis", id="redis")]
)
def test_an_unreachable_server_is_one_line_with_its_cause(workdir: Path, scheme: str) -> None:
    pytest.importorskip("psycopg" if scheme == "postgresql" else "redis")
    port = closed_port()
    where = f"{scheme}://u:s3cret@127.0.0.1:{port}/0"
    result = invoke("queues", "--url", where)
    assert result.exit_code == 1
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line and "refused" in line.lower()
    assert "s3cret" not in line


@pytest.mark.parametrize(
    "scheme", [pytest.param("postgresql", id="postgres"), pytest.param("redis", id="redis")]
)
def test_a_silent_server_fails_after_the_connect_timeout_setting(
    workdir: Path, scheme: str
) -> None:
    pytest.importorskip("psycopg" if scheme == "postgresql" else "redis")
    with silent_server() as port:
        started = time.monotonic()
        result = invoke(
            "jobs",
            "list",
            env={"OFFLOAD_URL": f"{scheme}://127.0.0.1:{port}/0", "OFFLOAD_CONNECT_TIMEOUT": "0.5"},
        )
        elapsed = time.monotonic() - started
    assert result.exit_code == 1
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line and "0.5" in line
    # The default connect timeout is 5 s and PostgreSQL's was 10: the setting is honoured.
    assert elapsed < 4.5


# -- servers say where they point --------------------------------------------------------------


class _Server:
    """Stands in for uvicorn: serves nothing and returns at once."""

    should_exit = False

    async def serve(self) -> None:
        return None


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run(self: Worker) -> None:
        return None

    monkeypatch.setattr(Worker, "run", run)
    monkeypatch.setattr(cli_module, "_server", lambda *a, **k: _Server())


def banner_fields(output: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in output.splitlines():
        name, _, value = line.strip().partition(" ")
        if name in ("backend", "queues", "kinds", "concurrency"):
            assert name not in fields, f"{name} printed twice:\n{output}"
            fields[name] = value.strip()
    return fields


@pytest.mark.usefixtures("no_serving")
def test_worker_prints_its_backend_queues_kinds_and_concurrency(workdir: Path) -> None:
    result = invoke("worker", "--app", APP_REF, "--concurrency", "3")
    assert result.exit_code == 0, result.output
    fields = banner_fields(result.output)
    # A relative SQLite path is shown resolved: two folders visibly mean two databases.
    assert fields["backend"] == f"sqlite:///offload.db ({workdir / 'offload.db'})"
    assert fields["queues"] == "reports, offload.notify"
    assert fields["kinds"] == "cli.report"
    assert fields["concurrency"].startswith("3")


@pytest.mark.usefixtures("no_serving")
def test_a_worker_on_a_queue_no_handled_kind_uses_warns_and_lists_no_kind(
    workdir: Path,
) -> None:
    result = invoke("worker", "--app", APP_REF, "--queues", "reprots,offload.notify")
    assert result.exit_code == 0, result.output
    fields = banner_fields(result.output)
    assert fields["queues"] == "reprots, offload.notify" and fields["kinds"] == "(none)"
    assert (
        "warning: no kind this worker handles is routed to queue reprots (theirs: reports); "
        "a misspelt name?" in result.output
    )
    served = invoke("worker", "--app", APP_REF, "--queues", "reports")
    assert banner_fields(served.output)["kinds"] == "cli.report"
    assert "warning" not in served.output


def test_an_autoscaled_worker_on_an_unrouted_queue_warns_too(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload.worker.autoscaler import AutoscalingSupervisor

    async def run(self: AutoscalingSupervisor) -> int:  # starts no process
        return 0

    monkeypatch.setattr(AutoscalingSupervisor, "run", run)
    result = invoke("worker", "--app", APP_REF, "--queues", "reprots", "--autoscale", "1:2")
    assert result.exit_code == 0, result.output
    assert banner_fields(result.output)["kinds"] == "(none)"
    assert "warning: no kind this worker handles is routed to queue reprots" in result.output


@pytest.mark.usefixtures("no_serving")
def test_web_prints_its_backend_with_the_password_masked(workdir: Path) -> None:
    pytest.importorskip("psycopg")
    port = closed_port()
    result = invoke(
        "web", "--app", APP_REF, "--url", f"postgresql://app:s3cret@127.0.0.1:{port}/db"
    )
    assert result.exit_code == 1  # the server is unreachable: said after the banner
    fields = banner_fields(result.output)
    assert fields["backend"] == f"postgresql://app:***@127.0.0.1:{port}/db"
    assert fields["queues"] == "default, reports"
    assert fields["kinds"] == "cli.report, cli.shout"
    assert "s3cret" not in result.output


@pytest.mark.usefixtures("no_serving")
def test_dev_prints_its_banner_once(workdir: Path) -> None:
    result = invoke("dev", "--app", APP_REF, "--concurrency", "2")
    assert result.exit_code == 0, result.output
    fields = banner_fields(result.output)
    assert set(fields) == {"backend", "queues", "kinds", "concurrency"}
    assert fields["concurrency"].startswith("2")


def test_masking_covers_user_info_and_password_options() -> None:
    mask = cli_module._shown_url
    assert mask("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask("postgresql://u@h/db?password=pw&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert mask("memory://") == "memory://"


def test_queues_shows_each_limited_kind_with_its_usage(url: str) -> None:
    # Given a kind limited to 5 running and 100 starts a minute, 2 of its jobs running
    async def main() -> None:
        async with App("setup", url=url) as setup:
            setup.message("cli.report", queue="reports")(Report)
            await setup.enqueue_many([Report(period=str(n)) for n in range(3)])
            backend = setup._require_backend()
            limits = KindLimits(
                kind="cli.report", queue="reports", max_running=5, rate=100, per_s=60.0
            )
            await backend.declare_limits([limits])
            await backend.claim_gated(["reports"], worker_id="w", lease_for=60, limit=2)

    asyncio.run(main())
    # When the queues are listed, as a table and as JSON
    table = invoke("queues", "--url", url, env={"COLUMNS": "250"})
    shown = invoke("queues", "--url", url, "--json")
    # Then the queue's limits show with their usage
    assert table.exit_code == 0, table.output
    assert "cli.report  2/5 running  2/100/m" in table.output
    assert orjson.loads(shown.output)["reports"]["limits"] == {
        "cli.report": {"max_running": 5, "rate": "100/m", "running": 2, "recent_starts": 2}
    }


# -- erasing one owner ------------------------------------------------------------------------


def _enqueue_for(url: str, owner: str, n: int) -> list[str]:
    async def main() -> list[str]:
        async with App("setup", url=url) as setup:
            setup.message("cli.report", queue="reports")(Report)
            return [(await setup.enqueue(Report(period=str(i)), owner=owner)).id for i in range(n)]

    return asyncio.run(main())


def test_erase_asks_with_her_count_then_erases_her_jobs_only(url: str) -> None:
    hers, his = _enqueue_for(url, "alice", 2), _enqueue_for(url, "bob", 1)
    no = invoke("jobs", "erase", "--owner", "alice", "--url", url, input="n\n")
    assert no.exit_code == 1 and "erase alice's 2 jobs with their history and deliveries?" in (
        no.output
    )
    assert "3 shown of 3 matching" in invoke("jobs", "list", "--url", url).output
    yes = invoke("jobs", "erase", "--owner", "alice", "--url", url, input="y\n")
    assert yes.exit_code == 0, yes.output
    assert "erased alice: 2 jobs (2 cancelled first), 0 deliveries, 0 fair-queue turns" in (
        yes.output
    )
    listed = invoke("jobs", "list", "--url", url, "--json")
    assert [r["id"] for r in orjson.loads(listed.output)] == his
    # and --json gives the ids, for her files named after them
    again = _enqueue_for(url, "alice", 1)
    said = invoke("jobs", "erase", "--owner", "alice", "--url", url, "--yes", "--json")
    assert said.exit_code == 0 and orjson.loads(said.output)["jobs"] == again
    assert set(hers).isdisjoint(again)


def test_erase_refuses_the_deliveries_owner_and_names_a_job_left_running(url: str) -> None:
    refused = invoke("jobs", "erase", "--owner", "offload.notify", "--url", url, "--yes")
    assert refused.exit_code == 2 and one_line(refused).startswith("error: --owner")
    (job_id,) = _enqueue_for(url, "alice", 1)

    async def claim() -> None:
        async with App("claimer", url=url) as claimer:
            leases = await claimer._require_backend().claim(
                ["reports"], worker_id="w", lease_for=600, limit=1
            )
            assert [le.job_id for le in leases] == [job_id]

    asyncio.run(claim())
    left = invoke("jobs", "erase", "--owner", "alice", "--wait", "0", "--url", url, "--yes")
    assert left.exit_code == 1
    assert f"error: 1 job(s) left, still running after 0 s or enqueued meanwhile: {job_id}" in (
        left.output
    )
