"""`python -m bench.chaos`: one engine (or every one with --all), a table, an exit status."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .driver import Config, run
from .table import render, write_docs

#: What `--all` runs: every engine, and each Redis durability setting.
MATRIX = [
    ("sqlite", ""),
    ("postgres", ""),
    ("redis", "appendfsync=everysec"),
    ("redis", "appendfsync=always"),
]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--engine", choices=["sqlite", "postgres", "redis"])
    p.add_argument("--setting", default="", help="e.g. appendfsync=always (Redis)")
    p.add_argument("--all", action="store_true", help="every engine and setting")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--fault-seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the reports here as JSON")
    p.add_argument("--docs", type=Path, help="write the table into this Markdown file")
    p.add_argument("--faults", default="", help="only these fault kinds, comma-separated")
    p.add_argument("--keep", action="store_true", help="keep each run's folder (logs)")
    args = p.parse_args(argv)
    if not args.all and not args.engine:
        p.error("give --engine or --all")
    return args


def shown(argv: list[str]) -> list[str]:
    """The arguments as the docs show them: without `--json` and its file (a local path)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip or arg == "--json" or arg.startswith("--json="):
            skip = arg == "--json"
            continue
        out.append(arg)
    return out


def main(argv: list[str]) -> int:
    args = parse(argv)
    # A SIGTERM (a test's timeout, Ctrl-C's cousin) unwinds: the processes and the engine
    # the run started are stopped and removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The driver's own client (enqueue_many, the drain) logs every reconnect while the
    # faults happen; what failed is in the ledger, so only errors are shown.
    for name in ("offload", "psycopg", "redis"):
        logging.getLogger(name).setLevel(logging.ERROR)
    matrix = MATRIX if args.all else [(args.engine, args.setting)]
    reports = []
    for engine, setting in matrix:
        config = Config(
            engine,
            setting,
            seed=args.seed,
            jobs=args.jobs,
            fault_seconds=args.fault_seconds,
            workers=args.workers,
            keep=args.keep,
            only=tuple(filter(None, args.faults.split(","))),
        )
        report = run(config)
        reports.append(report)
        print(render([report]))
        for problem in report.problems():
            print(f"  FAIL {problem}")
    if len(reports) > 1:
        print(render(reports))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in reports], indent=2, default=str))
    if args.docs:
        write_docs(args.docs, reports, " ".join(["python -m bench.chaos", *shown(argv)]))
    return 1 if any(r.problems() for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
