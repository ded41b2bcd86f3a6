"""The short fault-injection run (`bench.chaos`) on every engine: a regression fails CI.

Each run: a few hundred jobs over HTTP and `enqueue_many` (idempotency keys, duplicate
submissions, replays) while about 20 s of seeded faults hit three workers, the web process
and the engine (kills, stops past the lease, clock skew, connection kills, restarts); then
the driver's checks. `make chaos` is the long run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..services import unavailable

TOP = Path(__file__).resolve().parents[2]
#: Seeds fixed, so a failure can be replayed with the same faults at the same moments.
SEED = 13
JOBS = 300
FAULT_SECONDS = 20


def needs(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            unavailable(program, "not on PATH (the chaos run starts its own server)")


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("engine", "setting", "programs"),
    [
        pytest.param("sqlite", "", (), id="sqlite"),
        pytest.param("postgres", "", ("initdb", "pg_ctl"), id="postgres"),
        pytest.param("redis", "appendfsync=always", ("redis-server",), id="redis-always"),
    ],
)
def test_faults_lose_no_job_and_every_duplicate_has_a_cause(
    engine: str, setting: str, programs: tuple[str, ...], tmp_path: Path
) -> None:
    needs(*programs)
    # Given the chaos driver against a private engine, with a fixed seed,
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "bench.chaos", "--engine", engine, "--seed", str(SEED)]
    command += ["--jobs", str(JOBS), "--fault-seconds", str(FAULT_SECONDS), "--workers", "3"]
    command += ["--json", str(report_path)]
    if setting:
        command += ["--setting", setting]
    # when it runs its load and its faults, then drains and checks,
    run = subprocess.run(
        command, cwd=TOP, env=os.environ, capture_output=True, text=True, timeout=840
    )
    shown = f"{run.stdout}\n{run.stderr[-4000:]}"
    assert report_path.exists(), shown
    (report,) = json.loads(report_path.read_text())
    # then every check passed: nothing lost or stuck, no stale settle, every duplicate
    # explained by a fault, one job per key, 5xx only while the web process was down,
    # every SIGTERMed worker exited 0 and every followed event stream reached the end.
    assert report["jobs"] >= JOBS // 2, shown
    assert sum(report["faults"].values()) >= 5, shown
    assert report["problems"] == [], shown
    assert run.returncode == 0, shown
