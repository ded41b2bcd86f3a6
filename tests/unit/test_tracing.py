"""offload.tracing without an SDK: with the API alone nothing is recorded and nothing is
carried, and with no API at all (the `otel` extra not installed) every hook is a no-op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import trace

import offload
from offload import tracing

from ._tracing_app import Ping, _app, _run_one

pytestmark = pytest.mark.anyio


async def test_with_the_api_but_no_sdk_jobs_run_and_carry_no_trace(tmp_path: Path) -> None:
    # Given the API without an SDK (its proxy provider is the global one),
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not tracing.active() and tracing.current() is None
    app = _app(tmp_path)
    # when a job is enqueued, even inside a span of the API's no-op tracer,
    with trace.get_tracer("tests").start_as_current_span("caller"):
        job = await app.enqueue(Ping(n=1))
    # then its envelope carries no trace, it runs as usual,
    row = await app.get(job.id)
    assert row is not None and row.trace is None
    assert await _run_one(app, job.id) == "succeeded"
    # and no header would carry a context either.
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}
    await app.close()


def test_without_the_api_installed_every_hook_is_a_no_op(tmp_path: Path) -> None:
    # Given a process where `opentelemetry` cannot be imported (as when not installed),
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # what a missing package is to `import`
        import asyncio, json
        from tests.unit._tracing_app import _app, _run_one, Ping
        from offload import tracing

        async def main():
            app = _app(__import__("pathlib").Path({str(tmp_path)!r}))
            job = await app.enqueue(Ping(n=1))
            row = await app.get(job.id)
            state = await _run_one(app, job.id)
            headers = {{}}
            tracing.inject(headers)
            await app.close()
            return {{"active": tracing.active(), "trace": row.trace, "state": state,
                    "headers": headers, "api": tracing._API}}

        print(json.dumps(asyncio.run(main())))
        """
    )
    root = Path(__file__).resolve().parents[2]
    source = Path(offload.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(root)])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    # when a job is enqueued and run, then nothing fails and nothing is traced.
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "active": False,
        "trace": None,
        "state": "succeeded",
        "headers": {},
        "api": False,
    }


async def test_an_sdk_configured_after_the_app_opened_counts_from_the_next_resolve(
    tmp_path: Path,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from ..tracing_support import reset_global_provider

    # Given an app opened while no SDK was configured,
    app = _app(tmp_path)
    await app.open()
    assert not tracing.active()
    reset_global_provider()
    trace.set_tracer_provider(TracerProvider())
    try:
        # when the SDK is configured afterwards, offload looks only at the next resolve:
        before = await app.enqueue(Ping(n=1))
        assert tracing.resolve() and tracing.active()
        after = await app.enqueue(Ping(n=2))
        rows = [await app.get(before.id), await app.get(after.id)]
        assert [row is not None and row.trace is not None for row in rows] == [False, True]
    finally:
        reset_global_provider()
        assert not tracing.resolve()
        await app.close()
