"""The manifests under deploy/ hold together and say true things about offload: every
document is a kind we mean, every reference resolves, every flag is one `offload worker`
takes, every metric a Prometheus query (a scaler's, an alert's) names is one offload
exports with the labels it has, every alert rule is PromQL, the metrics-api
scaler's valueLocation finds the number in a real GET /v1/queues, and the PostgreSQL
scalers' SQL runs against the real schema and counts what `App.stats` counts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import psycopg
import pytest
import typer
import yaml

from offload import App, Message, Settings
from offload.cli import cli
from offload.metrics import DEPTH_STATES, METRIC_NAMES, SQLITE_METRIC_NAMES, Metrics
from offload.web import create_app

from ..scrape import parse
from ..services import PgSchema, require_pg

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KINDS = {
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "ScaledJob"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found.append((path.relative_to(DEPLOY).as_posix(), doc))
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc.get("kind") == kind]


def triggers(kind: str) -> Iterator[dict[str, Any]]:
    for scaler in of_kind("ScaledObject") + of_kind("ScaledJob"):
        for trigger in scaler["spec"]["triggers"]:
            if trigger["type"] == kind:
                yield trigger


def containers() -> Iterator[dict[str, Any]]:
    for doc in of_kind("Deployment"):
        yield from doc["spec"]["template"]["spec"]["containers"]
    for doc in of_kind("ScaledJob"):
        yield from doc["spec"]["jobTargetRef"]["template"]["spec"]["containers"]


def test_every_manifest_is_a_kind_we_mean_and_its_references_resolve() -> None:
    docs = documents()
    assert {path for path, _ in docs} >= {
        "keda/scaledobject-prometheus.yaml",
        "keda/scaledobject-metrics-api.yaml",
        "keda/scaledobject-postgresql.yaml",
        "keda/scaledjob.yaml",
        "kubernetes/offload.yaml",
        "prometheus/scrape-config.yaml",
        "prometheus/alerts.yaml",
    }
    for path, doc in docs:
        if path.startswith("prometheus/"):
            continue  # a Prometheus configuration fragment, no Kubernetes object
        assert (doc["apiVersion"], doc["kind"]) in KINDS, path
    assert {trigger["type"] for t in ("prometheus", "metrics-api", "postgresql")
            for trigger in triggers(t)} == {"prometheus", "metrics-api", "postgresql"}  # fmt: skip
    deployments = {d["metadata"]["name"] for d in of_kind("Deployment")}
    for scaled in of_kind("ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    auths = {a["metadata"]["name"]: a for a in of_kind("TriggerAuthentication")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in of_kind("Secret")}
    for kind in ("metrics-api", "postgresql"):
        for trigger in triggers(kind):
            auth = auths[trigger["authenticationRef"]["name"]]
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["key"] in secrets[ref["name"]], ref
    for container in containers():
        for env in container.get("env", []):
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets[ref["name"]], ref


def test_worker_commands_use_only_flags_offload_worker_takes() -> None:
    command = typer.main.get_command(cli)
    worker = command.commands["worker"]  # type: ignore[attr-defined]
    flags = {opt for param in worker.params for opt in param.opts}
    seen = set()
    for container in containers():
        args = container["args"]
        if args[:2] != ["offload", "worker"]:
            continue
        used = {arg.split("=")[0] for arg in args if arg.startswith("--")}
        assert used <= flags, used - flags
        seen |= used
    assert {"--metrics-port", "--metrics-host", "--max-jobs", "--exit-when-idle"} <= seen
    (job,) = of_kind("ScaledJob")
    (container,) = job["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
    assert {"--max-jobs", "--exit-when-idle"} <= set(container["args"])
    assert job["spec"]["jobTargetRef"]["template"]["spec"]["restartPolicy"] == "Never"


def test_prometheus_queries_name_metrics_and_labels_offload_exports() -> None:
    exported = parse(Metrics().render().decode())
    # METRIC_NAMES is what a registry of offload's serves (histograms by their base name).
    ours = {name for name in exported.types if name.startswith("offload_")}
    assert {name.removesuffix("_total") for name in METRIC_NAMES} == ours
    queries = [trigger["metadata"]["query"] for trigger in triggers("prometheus")]
    assert queries
    for query in queries:
        for name, matchers in re.findall(r"(offload_[a-z_]+)\{([^}]*)\}", query):
            assert name in METRIC_NAMES, name
            labels = dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', matchers))
            assert set(labels) <= {"queue", "state"}
            for state in labels.get("state", "").split("|"):
                assert not state or state in DEPTH_STATES, state
    scrape = yaml.safe_load((DEPLOY / "prometheus/scrape-config.yaml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["offload-web"]["metrics_path"] == "/metrics"
    assert jobs["offload-web"]["authorization"]["type"] == "Bearer"


#: The labels of each metric an alert names (the README's "Metrics" table).
LABELS = {
    "offload_jobs_completed_total": {"kind", "queue", "state"},
    "offload_queue_depth": {"queue", "state"},
    "offload_queue_oldest_age_seconds": {"queue"},
    "offload_queue_paused": {"queue"},
    "offload_queue_stats_up": set(),
    "offload_worker_slots": {"state"},
    "offload_deliveries_total": {"channel", "outcome"},
    "offload_sqlite_write_pauses_spent_total": set(),
    "offload_http_requests_total": {"method", "route", "status"},
}
#: The values of the labels an alert matches on.
VALUES = {
    "state": {
        "succeeded",
        "failed",
        "cancelled",
        "dead",
        "retrying",
        *DEPTH_STATES,
        "busy",
        "idle",
    },
    "outcome": {"delivered", "retrying", "failed", "refused", "superseded"},
    "channel": {"webhook", "email"},
    "status": {"5.."},  # a pattern of HTTP statuses: every server error
}


def test_the_alert_rules_parse_and_name_what_offload_exports() -> None:
    rules_file = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())
    rules = [rule for group in rules_file["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in rules}) == len(rules) >= 8
    for rule in rules:
        expr = rule["expr"]
        promql_parser.parse(expr)  # PromQL, or ValueError
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        named = re.findall(r"(offload_[a-z_]+)(\{[^}]*\})?", expr)
        assert named, rule["alert"]
        labels: set[str] = set()
        for name, matchers in named:
            assert name in METRIC_NAMES or name in SQLITE_METRIC_NAMES, name
            labels |= LABELS[name]
            for label, value in re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', matchers):
                assert label in LABELS[name], (rule["alert"], name, label)
                assert set(value.split("|")) <= VALUES[label], (rule["alert"], value)
        # every web replica serves the same queue gauges: a sum would count them N times
        summed = r"\bsum\b(?:\s*(?:by|without)\s*\([^)]*\))?\s*\(\s*offload_queue_"
        assert not re.search(summed, expr), rule["alert"]
        for grouped in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            used = {g.strip() for g in grouped.split(",") if g.strip()}
            assert used <= labels, (rule["alert"], used)


def gjson(document: Any, path: str) -> Any:
    """A GJSON path of plain keys (KEDA's valueLocation), `\\.` escaping a dot in a key."""
    keys = [key.replace("\\.", ".") for key in re.split(r"(?<!\\)\.", path)]
    for key in keys:
        document = document[key]
    return document


class Report(Message):
    n: int = 0


class Other(Message):
    n: int = 0


@pytest.fixture
async def pg_app() -> AsyncIterator[App]:
    require_pg()
    schema = PgSchema()
    await schema.create()
    app = App("deploy", settings=Settings(url=schema.url, api_tokens={"keda-tok": "keda"}))
    app.message("reports.export", queue="reports")(Report)
    app.message("other.kind", queue="team.other")(Other)
    try:
        async with app:
            # Given 4 reports jobs ready, one of them claimed (running), one scheduled for
            # later, and 2 jobs in a queue whose name has a dot,
            await app.enqueue_many([Report(n=i) for i in range(4)])
            await app.enqueue(Report(n=9), delay=3600)
            await app.enqueue_many([Other(), Other()])
            backend = app._require_backend()
            leases = await backend.claim(["reports"], worker_id="t", lease_for=60, limit=1)
            assert len(leases) == 1
            yield app
    finally:
        await schema.drop()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_the_postgresql_scalers_sql_runs_on_the_real_schema(pg_app: App) -> None:
    stats = (await pg_app.stats())["reports"]
    assert (stats["queued"], stats["running"]) == (3, 1)
    (scaled_object,) = (
        t["metadata"]["query"]
        for doc in of_kind("ScaledObject")
        for t in doc["spec"]["triggers"]
        if t["type"] == "postgresql"
    )
    (scaled_job,) = (t["metadata"]["query"] for t in of_kind("ScaledJob")[0]["spec"]["triggers"])
    async with await psycopg.AsyncConnection.connect(pg_app.settings.url) as conn:
        # the ScaledObject counts ready and running jobs, the ScaledJob ready ones only.
        assert (await (await conn.execute(scaled_object)).fetchone()) == (
            stats["queued"] + stats["running"],
        )
        assert (await (await conn.execute(scaled_job)).fetchone()) == (stats["queued"],)
        # While the queue is paused its ready jobs wait for no worker: the running ones count.
        assert await pg_app.pause("reports")
        assert (await (await conn.execute(scaled_object)).fetchone()) == (stats["running"],)
        assert (await (await conn.execute(scaled_job)).fetchone()) == (0,)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_the_metrics_api_value_location_reads_get_v1_queues(pg_app: App) -> None:
    (trigger,) = triggers("metrics-api")
    meta = trigger["metadata"]
    assert meta["authMode"] == "bearer" and meta["format"] == "json"
    path = httpx.URL(meta["url"]).path
    api = create_app(pg_app)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
        # The route wants a bearer token (any principal), as the TriggerAuthentication gives;
        assert (await web.get(path)).status_code == 401
        answer = await web.get(path, headers={"Authorization": "Bearer keda-tok"})
    assert answer.status_code == 200
    # the valueLocation finds the queue's ready count, a number,
    value = gjson(answer.json(), meta["valueLocation"])
    assert value == (await pg_app.stats())["reports"]["queued"] == 3
    # and a queue name with a dot is reached by escaping it.
    assert gjson(answer.json(), "queues.team\\.other.queued") == 2
