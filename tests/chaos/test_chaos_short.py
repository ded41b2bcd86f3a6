"""The short fault-injection run (`bench.chaos`) on every engine: a regression fails CI.

Each run: a few hundred jobs over HTTP and `enqueue_many` (idempotency keys, duplicate
submissions, replays) while about 20 s of seeded faults hit three workers, the web process
and the engine (kills, stops past the lease, clock skew, connection kills, restarts); then
the driver's checks. `make chaos` is the long run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .engine_support import require_engine

TOP = Path(__file__).resolve().parents[2]
#: Seeds fixed, so a failure can be replayed with the same faults at the same moments.
SEED = 13
JOBS = 300
FAULT_SECONDS = 20


def run_driver(command: list[str], timeout: float = 780) -> tuple[int, str]:
    """Run the driver; past `timeout`, SIGTERM it (it stops what it started), then kill
    what is left of its process group."""
    with subprocess.Popen(
        command, cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=60)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the chaos run took more than {timeout:.0f} s:\n{out[-6000:]}")
    return proc.returncode, out[-6000:]


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("engine", "setting"),
    [
        pytest.param("sqlite", "", id="sqlite"),
        pytest.param("postgres", "", id="postgres"),
        pytest.param("redis", "appendfsync=always", id="redis-always"),
    ],
)
def test_faults_lose_no_job_and_every_duplicate_has_a_cause(
    engine: str, setting: str, tmp_path: Path
) -> None:
    require_engine(engine)  # the run starts its own server
    # Given the chaos driver against a private engine, with a fixed seed,
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "bench.chaos", "--engine", engine, "--seed", str(SEED)]
    command += ["--jobs", str(JOBS), "--fault-seconds", str(FAULT_SECONDS), "--workers", "3"]
    command += ["--json", str(report_path)]
    if setting:
        command += ["--setting", setting]
    # when it runs its load and its faults, then drains and checks,
    code, shown = run_driver(command)
    assert report_path.exists(), shown
    (report,) = json.loads(report_path.read_text())
    # then every check passed: nothing lost or stuck, no stale settle, every duplicate
    # explained by a fault, one job per key, 5xx only while the web process was down,
    # every SIGTERMed worker exited 0 and every followed event stream reached the end.
    # (A run is not vacuous: on a loaded machine a killed web process takes seconds to come
    # back, and submissions meanwhile are refused, so fewer than JOBS are accepted.)
    assert report["jobs"] >= JOBS // 5, shown
    assert sum(report["faults"].values()) >= 5, shown
    assert report["problems"] == [], shown
    assert code == 0, shown
