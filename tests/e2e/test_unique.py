"""Unique jobs across two real `offload web` processes: requests racing to submit the same
unique job, half to each process, store exactly one job, and every answer names it (one 202,
the rest 200), on every backend."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .conftest import TOKENS, Stack

pytestmark = pytest.mark.anyio

APP = """
from offload import App, Message

app = App("uniques")


@app.message("e2e.export", unique="queued", unique_key=("period",))
class Export(Message):
    period: str
    attempt: int = 0
"""
#: Requests racing in each round, and rounds (each its own key).
RACERS, ROUNDS = 16, 4


async def test_two_web_processes_racing_store_one_job_per_key(stack: Stack) -> None:
    # Given two `offload web` processes of one app on one backend (no worker: jobs wait)
    (stack.root / "uniques.py").write_text(APP)
    bases = []
    for _ in range(2):
        stack.start_web(app="uniques:app")
        bases.append(stack.base)
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        for n in range(ROUNDS):
            # When RACERS requests submit the same export at once, alternating processes
            period = f"2026-{n + 1:02d}"
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{bases[i % 2]}/v1/jobs/e2e.export",
                        json={"period": period, "attempt": i},
                    )
                    for i in range(RACERS)
                )
            )
            # Then one stored it (202) and every other answer is that job (200, Location)
            codes = sorted(a.status_code for a in answers)
            assert codes == [200] * (RACERS - 1) + [202], [a.text for a in answers]
            ids = {a.json()["id"] for a in answers}
            assert len(ids) == 1
            assert {a.headers["location"].rsplit("/", 1)[1] for a in answers} == ids
        listed = await client.get(f"{bases[0]}/v1/jobs", params={"limit": 100})
        assert len(listed.json()["items"]) == ROUNDS, listed.text
