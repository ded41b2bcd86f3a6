"""Offload against the peers of one harness run: figures and ratios to the best peer.

python bench/peers_report.py OUT_DIR      # OUT_DIR holds the harness's results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from _results import fmt, write_section

REFERENCE_FLOORS = {"raw-redis (ref)", "raw-pg (ref)", "raw_redis", "raw_pg"}


def _best(rows: list[dict[str, Any]], key: str, lowest: bool = False) -> dict[str, Any] | None:
    rows = [r for r in rows if r.get(key) is not None and not r.get("error")]
    if not rows:
        return None
    return (min if lowest else max)(rows, key=lambda r: r[key])


def _ratio(ours: float | None, best: dict[str, Any] | None, key: str, lowest: bool) -> str:
    if ours is None or best is None or not best[key]:
        return "n/a"
    ratio = best[key] / ours if lowest else ours / best[key]
    return f"{ratio:.2f}x"


def report(results: dict[str, Any]) -> str:
    engines = {"redis": [], "postgres": []}  # type: dict[str, list[dict[str, Any]]]
    backend_of = {name: p["meta"]["backend"] for name, p in results["peers"].items() if "meta" in p}
    ours = []
    for row in results["summary"]:
        backend = backend_of.get(row["adapter"], "?")
        if row["peer"].startswith("offload"):
            ours.append((row, backend))
        elif row["peer"] not in REFERENCE_FLOORS and backend in engines:
            engines[backend].append(row)
    metrics = [
        ("enqueue_jobs_s", "enqueue/s", False),
        ("bulk_jobs_s", "bulk/s", False),
        ("drain_jobs_s", "drain/s", False),
        ("steady_jobs_s", "steady/s", False),
        ("p50_ms", "p50 ms", True),
        ("p99_ms", "p99 ms", True),
    ]
    lines = [
        f"N = {results['config']['n']:,} jobs, {results['config']['reps']} repetition(s), "
        "one worker process. Ratio = offload / best peer on the same engine (for latency: best "
        "peer / offload), so above 1.00x means offload is ahead. The SQLite rows are compared "
        "with the best Redis peer (the issue's target) and the best PostgreSQL peer.",
        "",
        "| offload | worker | compared with | "
        + " | ".join(f"{label} | ratio" for _, label, _ in metrics)
        + " |",
        "|---|---|---|" + "---|---|" * len(metrics),
    ]
    for row, backend in ours:
        pools = {"redis": ["redis"], "postgres": ["postgres"], "sqlite": ["redis", "postgres"]}
        for engine in pools.get(backend, []):
            cells = []
            for key, _, lowest in metrics:
                best = _best(engines[engine], key, lowest)
                cells.append(
                    f"{fmt(row.get(key), 1 if lowest else 0)} | "
                    f"{_ratio(row.get(key), best, key, lowest)}"
                )
            lines.append(
                f"| {row['peer']} | {row['variant']} | best {engine} peer | "
                + " | ".join(cells)
                + " |"
            )
    lines += ["", "Best peer per engine and metric in this run:", ""]
    for engine, rows in engines.items():
        for key, label, lowest in metrics:
            best = _best(rows, key, lowest)
            if best is not None:
                lines.append(
                    f"- {engine}, {label}: {best['peer']} ({best['variant']}) "
                    f"{fmt(best[key], 1 if lowest else 0)}"
                )
    lines += ["", "All rows of the run (the harness's own table):", ""]
    lines.append(
        "| peer | worker | enqueue/s | bulk/s | drain/s | steady/s | startup s | p50 ms | p99 ms |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in results["summary"]:
        lines.append(
            f"| {r['peer']} | {r['variant']} | {fmt(r.get('enqueue_jobs_s'))} | "
            f"{fmt(r.get('bulk_jobs_s'))} | {fmt(r.get('drain_jobs_s'))} | "
            f"{fmt(r.get('steady_jobs_s'))} | {fmt(r.get('startup_s'), 2)} | "
            f"{fmt(r.get('p50_ms'), 1)} | {fmt(r.get('p99_ms'), 1)} |"
        )
    return "\n".join(lines)


def main() -> None:
    out = Path(sys.argv[1])
    results = json.loads((out / "results.json").read_text())
    body = "## Against the peers (`make bench-peers`)\n\n" + report(results)
    print(body)
    write_section("peers", body)


if __name__ == "__main__":
    main()
