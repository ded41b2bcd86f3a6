"""Competing consumers: OS processes claiming from one backend never share a job."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from offload.brokers import Backend

from ._support import claim_until_empty, envelope

if TYPE_CHECKING:
    from .conftest import BackendParam

pytestmark = pytest.mark.anyio

JOBS = 2_000
PROCESSES = 4
QUEUE = "mp"


@pytest.mark.slow
async def test_processes_claim_every_job_exactly_once(
    backend: Backend,
    backend_url: str,
    backend_name: str,
    backend_param: BackendParam,
    tmp_path: Path,
) -> None:
    if not backend_param.cross_process:
        pytest.skip(f"{backend_name} lives inside one process; others cannot open it")
    # Given 2,000 ready jobs in one queue
    envs = [envelope(QUEUE, payload={"n": i}) for i in range(JOBS)]
    await backend.enqueue(envs)
    # When four OS processes claim (in batches of different sizes) and settle until none wait
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    outs = [tmp_path / f"claimer{i}.json" for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=claim_until_empty, args=(backend_url, QUEUE, limit, barrier, str(out)))
        for limit, out in zip((1, 3, 8, 16), outs, strict=True)
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    try:
        for p in procs:
            await anyio.to_thread.run_sync(p.join, 60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    elapsed = time.monotonic() - start
    # Then every job was claimed by exactly one process and all are succeeded
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    claimed = {out.stem: json.loads(out.read_text()) for out in outs}
    counts = Counter(job_id for ids in claimed.values() for job_id in ids)
    assert set(counts) == {e.id for e in envs}
    assert [job_id for job_id, n in counts.items() if n != 1] == []
    assert sum(1 for ids in claimed.values() if ids) >= 2, "the processes did not compete"
    rows = await backend.list_jobs(owner=None, state="succeeded", limit=JOBS + 10)
    assert len(rows) == JOBS
    by = {r.id: r.result["by"] for r in rows}
    for name, ids in claimed.items():  # each job's result came from the process that claimed it
        assert {by[job_id] for job_id in ids} <= {f"proc-{name}"}
    stats = (await backend.stats()).get(QUEUE, {})
    assert [stats.get(k, 0) for k in ("queued", "scheduled", "running", "dead")] == [0, 0, 0, 0]
    assert elapsed < 30
