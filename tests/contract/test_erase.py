"""Erasing one owner's data (`App.erase_owner`): her jobs with their history, their
deliveries and payload files, her fair-queue turns; no notification of it leaves, and
nothing of another owner goes; on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from offload import App, Message
from offload._claim_check import payload_key
from offload.brokers import Backend
from offload.contract import Envelope, JobFilter, JobRow, JobState, Lease, Outcome
from offload.notify.base import EMAIL_KIND, NOTIFY_QUEUE, WEBHOOK_KIND, EmailDelivery
from offload.notify.targets import follow_ups_of_row, targets
from offload.settings import Settings

from ._support import LONG, ShiftClock, claim, envelope

pytestmark = pytest.mark.anyio

#: One endpoint that several owners' jobs call back (an integration's, say).
SHARED_HOOK = "https://hooks.example.com/offload"


class Note(Message):
    text: str


@pytest.fixture
async def app(backend_url: str, clock: ShiftClock, tmp_path: Path) -> AsyncIterator[App]:
    """An App on the test's backend, payloads over 1 KiB checked in to a folder."""
    settings = Settings(
        url=backend_url,
        blobs_url=str(tmp_path / "blobs"),
        claim_check_bytes=1024,
        secret_key=b"e" * 32,
    )
    a = App("erase", settings=settings, clock=clock)
    a.message("t.note")(Note)
    await a.open()
    try:
        yield a
    finally:
        await a.close()


def _hooked(
    owner: str, queue: str = "qa", *, delay: float = 0.0, email: str | None = None
) -> Envelope:
    options: dict[str, str] = {"callback_url": SHARED_HOOK}
    if email:
        options["notify_email"] = email
    return dataclasses.replace(envelope(queue, owner=owner, delay=delay), options=options)


async def _deliveries(app: App) -> dict[str, tuple[str, JobState]]:
    """Every delivery job: id -> (the job it notifies of, its state)."""
    rows = await app.search_jobs(JobFilter(queue=NOTIFY_QUEUE), limit=1000)
    return {r.id: (r.payload["job_id"], r.state) for r in rows}


async def _finish(app: App, backend: Backend, e: Envelope, state: JobState) -> None:
    """Claim `e`, the one ready job of its queue, and settle it `state`, with the
    notifications a worker would enqueue."""
    (lease,) = await claim(backend, e.queue)
    assert lease.job_id == e.id
    row = await backend.get(e.id)
    assert row is not None
    ended = dataclasses.replace(row, state=state)
    notes = follow_ups_of_row(app, ended, marker=lease.token)
    outcome = Outcome(lease=lease, state=state, follow_ups=notes)
    assert await backend.settle([outcome]) == [True]


async def test_her_jobs_and_their_deliveries_go_and_no_one_elses(app: App) -> None:
    backend = app._require_backend()
    # Given a dead mail to alice's address, of a job retention took long ago
    mail = EmailDelivery(
        job_id=envelope().id, to="alice@example.com", state="x", notification_id="n"
    )
    orphan = envelope(NOTIFY_QUEUE, kind=EMAIL_KIND, owner="offload.notify")
    orphan = dataclasses.replace(orphan, payload=mail.model_dump())
    await backend.enqueue([orphan])
    await _finish(app, backend, orphan, JobState.DEAD)
    # and her jobs: one waiting (webhook and email), one done (its webhook waits), one
    # dead, with steps recorded; and bob's, calling back the same endpoint
    waiting = _hooked("alice", delay=3600, email="alice@example.com")
    done = _hooked("alice", "q1")
    dead = envelope("q2", owner="alice")
    bobs_waiting = _hooked("bob", delay=3600)
    bobs_done = _hooked("bob", "q3")
    await backend.enqueue([waiting, done, dead, bobs_waiting, bobs_done])
    await _finish(app, backend, done, JobState.SUCCEEDED)
    await _finish(app, backend, dead, JobState.DEAD)
    await _finish(app, backend, bobs_done, JobState.SUCCEEDED)
    for e in (waiting, done, dead, bobs_done):
        await backend.remember(e.id, "step", 1)
    (hers,) = [d for d, (job, _) in (await _deliveries(app)).items() if job == done.id]
    (bobs,) = [d for d, (job, _) in (await _deliveries(app)).items() if job == bobs_done.id]

    # When alice is erased, her address named
    erased = await app.erase_owner("alice", addresses=["alice@example.com"], wait_s=LONG)

    # Then her jobs are gone with their history and steps, ids reported
    assert sorted(erased.jobs) == sorted([waiting.id, done.id, dead.id])
    assert erased.cancelled == 1 and erased.complete and erased.left == ()
    for e in (waiting, done, dead):
        assert await backend.get(e.id) is None
        assert await backend.changes_since(0, job_id=e.id) == []
        assert await backend.recall(e.id, "step") == (False, None)
    # and her deliveries (the waiting webhook, the orphaned mail) with them; the cancel
    # enqueued none (a waiting job's cancel notifies, and she asked to be forgotten)
    left = await _deliveries(app)
    assert hers not in left and orphan.id not in left
    assert not [d for d, (job, _) in left.items() if job in {waiting.id, done.id, dead.id}]
    assert erased.deliveries == 2
    # while bob's jobs and his delivery to the same endpoint stay whole
    assert set(left) == {bobs}
    for e in (bobs_waiting, bobs_done):
        assert await backend.get(e.id) is not None
    assert await backend.recall(bobs_done.id, "step") == (True, 1)
    row = await backend.get(bobs_waiting.id)
    assert row is not None and row.state is JobState.QUEUED
    # and no queue was paused
    assert not (await app.stats())[NOTIFY_QUEUE]["paused"]


async def test_a_running_job_is_stopped_and_erased_with_what_its_end_notified(
    app: App, clock: ShiftClock
) -> None:
    backend = app._require_backend()
    # Given alice's job with a webhook, running
    e = _hooked("alice")
    await backend.enqueue([e])
    (lease,) = await claim(backend, "qa")
    # When she is erased, the erasure waits while her job runs, asked to stop
    erasing = asyncio.create_task(app.erase_owner("alice", wait_s=LONG))
    while not ((row := await backend.get(e.id)) and row.cancel_requested):
        assert not erasing.done()
        await asyncio.sleep(0.01)
    # and silenced: the notification its end enqueues sends nothing (no queue is paused)
    assert row.options == {"silenced": True} and _silent(app, row)
    assert not (await app.stats())[NOTIFY_QUEUE]["paused"]
    await _settle_cancelled(app, backend, lease, e)
    assert [job for job, _ in (await _deliveries(app)).values()] == [e.id]
    erased = await asyncio.wait_for(erasing, LONG)
    # Then the job is gone, and its "cancelled" webhook with it
    assert erased.jobs == (e.id,) and erased.cancelled == 1 and erased.deliveries == 1
    assert await backend.get(e.id) is None
    assert await _deliveries(app) == {}


def _silent(app: App, row: JobRow) -> bool:
    """Whether a delivery of the job would send nothing: it asks for none (a delivery
    reads its job's options as it sends, and ends "superseded" where they ask for none)."""
    return targets(app, row.kind, row.options) == {}


async def _settle_cancelled(app: App, backend: Backend, lease: object, e: Envelope) -> None:
    """Settle a job cancelled as its worker does: with the notifications its options asked
    for when it was claimed (`e`'s)."""
    assert isinstance(lease, Lease)
    row = await backend.get(lease.job_id)
    assert row is not None
    ended = dataclasses.replace(row, state=JobState.CANCELLED, options=e.options)
    notes = follow_ups_of_row(app, ended, marker=lease.token)
    outcome = Outcome(lease=lease, state=JobState.CANCELLED, follow_ups=notes)
    assert await backend.settle([outcome]) == [True]


async def test_a_job_still_running_at_the_deadline_is_left_and_named(app: App) -> None:
    backend = app._require_backend()
    # Given alice's running job (webhook and mail) and a done one
    running = _hooked("alice", "qa", email="alice@example.com")
    done = envelope("qb", owner="alice")
    await backend.enqueue([running, done])
    (lease,) = await claim(backend, "qa")
    await _finish(app, backend, done, JobState.SUCCEEDED)
    # When she is erased without waiting
    erased = await app.erase_owner("alice", wait_s=0)
    # Then the done job goes, the running one stays, asked to stop, and is named
    assert erased.jobs == (done.id,) and erased.left == (running.id,)
    assert not erased.complete and erased.cancelled == 0
    row = await backend.get(running.id)
    assert row is not None and row.state is JobState.RUNNING and row.cancel_requested
    # and when it ends later, what its end enqueued sends nothing, whenever it runs
    await _settle_cancelled(app, backend, lease, running)
    row = await backend.get(running.id)
    assert row is not None and _silent(app, row)
    assert len([j for j, _ in (await _deliveries(app)).values() if j == running.id]) == 2
    # until an erasure again takes it, and them
    again = await app.erase_owner("alice", wait_s=0)
    assert again.jobs == (running.id,) and again.deliveries == 2 and again.complete
    assert await _deliveries(app) == {}


async def test_two_erasures_at_once_pause_nothing_and_silence_both(app: App) -> None:
    backend = app._require_backend()
    # Given alice's and carol's running jobs with webhooks
    a, c = _hooked("alice", "qa"), _hooked("carol", "qc")
    await backend.enqueue([a, c])
    (alices,) = await claim(backend, "qa")
    (carols,) = await claim(backend, "qc")

    async def asked(job_id: str) -> None:
        while not ((row := await backend.get(job_id)) and row.cancel_requested):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # When both are erased at once, and alice's job ends first
    erasing_a = asyncio.create_task(app.erase_owner("alice", wait_s=LONG))
    erasing_c = asyncio.create_task(app.erase_owner("carol", wait_s=LONG))
    await asked(a.id)
    await asked(c.id)
    await _settle_cancelled(app, backend, alices, a)
    assert (await asyncio.wait_for(erasing_a, LONG)).complete
    # Then carol's job, still running, is silenced (no pause to be undone by alice's end)
    row = await backend.get(c.id)
    assert row is not None and _silent(app, row) and not erasing_c.done()
    assert not (await app.stats())[NOTIFY_QUEUE]["paused"]
    await _settle_cancelled(app, backend, carols, c)
    assert (await asyncio.wait_for(erasing_c, LONG)).deliveries == 1
    assert await _deliveries(app) == {}


async def test_an_erasure_stopped_before_it_deleted_her_jobs_leaves_a_rerun_their_deliveries(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload import _erase

    backend = app._require_backend()
    # Given alice's done job whose webhook waits
    done = _hooked("alice", "q1")
    await backend.enqueue([done])
    await _finish(app, backend, done, JobState.SUCCEEDED)

    # When an erasure is stopped (Ctrl-C, kill -9) as it would delete her jobs
    async def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_erase, "_delete", stopped)
    with pytest.raises(KeyboardInterrupt):
        await app.erase_owner("alice", wait_s=0)
    monkeypatch.undo()
    # Then her deliveries went first (a rerun finds no job of hers to name them by else)
    assert await _deliveries(app) == {}
    erased = await app.erase_owner("alice", wait_s=0)
    assert erased.jobs == (done.id,) and erased.complete


async def test_a_job_enqueued_for_her_as_it_ends_is_taken(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload import _erase

    backend = app._require_backend()
    # Given a job of hers that arrives while the erasure deletes deliveries (HTTP, say)
    real = _erase._deliveries
    late = _hooked("alice", delay=3600)
    sent = []

    async def arriving(*args: object, **kwargs: object) -> list[str]:
        if not sent:
            sent.append(await backend.enqueue([late]))
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_erase, "_deliveries", arriving)
    # When she is erased, Then it is taken too
    erased = await app.erase_owner("alice", wait_s=LONG)
    assert erased.jobs == (late.id,) and erased.complete
    assert await app.search_jobs(JobFilter(owner="alice")) == []


async def test_her_payload_files_go_with_her_jobs(app: App, tmp_path: Path) -> None:
    # Given alice's and bob's messages too large to store inline
    hers = await app.enqueue(Note(text="a" * 4096), owner="alice", delay=3600)
    his = await app.enqueue(Note(text="b" * 4096), owner="bob", delay=3600)
    blobs = tmp_path / "blobs"
    assert (blobs / payload_key(hers.id)).exists() and (blobs / payload_key(his.id)).exists()
    # When alice is erased, Then her payload's file goes, and bob's stays
    erased = await app.erase_owner("alice", wait_s=0)
    assert erased.files == 1 and erased.files_left == ()
    assert not (blobs / payload_key(hers.id)).exists()
    assert (blobs / payload_key(his.id)).exists()


async def test_her_fair_turns_are_forgotten_and_others_kept(app: App) -> None:
    backend = app._require_backend()
    # Given a fair queue that served alice once (her second job waits) and bob once (his
    # second job waits too)
    await backend.enqueue([envelope("qf", owner=o) for o in ("alice", "bob") * 2])
    leases = await backend.claim_gated(["qf"], worker_id="w", lease_for=LONG, limit=2, fair=["qf"])
    assert sorted(le.envelope.owner for le in leases) == ["alice", "bob"]
    outcomes = [Outcome(lease=le, state=JobState.SUCCEEDED) for le in leases]
    assert await backend.settle(outcomes) == [True, True]
    # When alice is erased, Then her turn goes
    erased = await app.erase_owner("alice", wait_s=0)
    assert erased.turns == 1 and erased.cancelled == 1 and len(erased.jobs) == 2
    assert await backend.forget_owner("alice") == 0
    # and bob's job is still served in turn
    (his,) = await backend.claim_gated(["qf"], worker_id="w", lease_for=LONG, limit=2, fair=["qf"])
    assert his.envelope.owner == "bob"


async def test_forgetting_a_turn_strands_no_waiting_job(app: App) -> None:
    backend = app._require_backend()
    # Given alice's two jobs in a fair queue, one claimed (a claim has seen the other)
    await backend.enqueue([envelope("qf", owner="alice") for _ in range(2)])
    first = await backend.claim_gated(["qf"], worker_id="w", lease_for=LONG, limit=1, fair=["qf"])
    assert len(first) == 1
    # When her turn is forgotten while her second job waits
    await backend.forget_owner("alice")
    # Then a fair claim still takes it
    second = await backend.claim_gated(["qf"], worker_id="w", lease_for=LONG, limit=1, fair=["qf"])
    assert [le.envelope.owner for le in second] == ["alice"]


async def test_an_erasure_refuses_no_owner_and_the_deliveries_owner(app: App) -> None:
    for bad in ("", "a\x00b", "offload.notify"):
        with pytest.raises(ValueError):
            await app.erase_owner(bad)


def _webhook(url: str) -> Envelope:
    """A waiting webhook delivery to `url`, of some other owner's job."""
    e = envelope(NOTIFY_QUEUE, kind=WEBHOOK_KIND, owner="offload.notify", delay=3600)
    payload = {"job_id": envelope().id, "url": url, "state": "succeeded", "notification_id": "n"}
    return dataclasses.replace(e, payload=payload)


async def test_an_address_takes_the_deliveries_naming_it_exactly(app: App) -> None:
    backend = app._require_backend()
    # Given waiting webhooks to her URL and to a longer one, of other owners' jobs
    exact = _webhook("https://alice.example.com/hook")
    longer = _webhook("https://alice.example.com/hook?user=2")
    await backend.enqueue([exact, longer])
    # When alice is erased with her URL named
    erased = await app.erase_owner("alice", addresses=["https://alice.example.com/hook"], wait_s=0)
    # Then the one to exactly it is cancelled and deleted; the other still waits
    assert erased.deliveries == 1 and await backend.get(exact.id) is None
    row = await backend.get(longer.id)
    assert row is not None and row.state is JobState.QUEUED


async def test_a_job_enqueued_for_her_and_taken_at_once_is_silenced_too(app: App) -> None:
    backend = app._require_backend()
    # Given her running job, which the erasure waits for
    first = _hooked("alice")
    await backend.enqueue([first])
    (lease,) = await claim(backend, "qa")
    erasing = asyncio.create_task(app.erase_owner("alice", wait_s=LONG))
    while not ((row := await backend.get(first.id)) and row.cancel_requested):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    # When a job enqueued for her meanwhile is taken by a worker at once
    late = _hooked("alice", "qb")
    await backend.enqueue([late])
    (taken,) = await claim(backend, "qb")
    # Then the erasure's next look silences it and asks it to stop (it took only the
    # waiting ones again: a running one kept its callback URL and address, and notified)
    deadline = asyncio.get_running_loop().time() + LONG
    while not ((row := await backend.get(late.id)) and row.cancel_requested):
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.01)
    assert _silent(app, row)
    await backend.settle([Outcome(lease=lease, state=JobState.CANCELLED)])
    await backend.settle([Outcome(lease=taken, state=JobState.CANCELLED)])
    erased = await asyncio.wait_for(erasing, LONG)
    assert sorted(erased.jobs) == sorted([first.id, late.id]) and erased.complete


async def test_a_delivery_that_ends_while_the_deliveries_are_walked_goes_too(app: App) -> None:
    backend = app._require_backend()
    # Given bob's webhook, sent (a final delivery, which the erasure's delete walk reads),
    b = _hooked("bob", "qb")
    await backend.enqueue([b])
    await _finish(app, backend, b, JobState.SUCCEEDED)
    (his,) = await claim(backend, NOTIFY_QUEUE, limit=1)
    assert await backend.settle([Outcome(lease=his, state=JobState.SUCCEEDED)]) == [True]
    # and her done job, whose webhook a worker is sending as the erasure begins
    e = _hooked("alice")
    await backend.enqueue([e])
    await _finish(app, backend, e, JobState.SUCCEEDED)
    (sending,) = await claim(backend, NOTIFY_QUEUE, limit=1)
    real = backend.delete_many
    ended: list[bool] = []

    async def ending_meanwhile(ids: list[str]) -> int:
        n = await real(ids)
        if not ended:  # (the send ends, superseded, as the erasure walks the deliveries)
            ended.append(True)
            out = Outcome(lease=sending, state=JobState.CANCELLED)
            assert await backend.settle([out]) == [True]
        return n

    backend.delete_many = ending_meanwhile  # type: ignore[method-assign]
    # When she is erased, Then that delivery (her URL, her job's id) goes too
    erased = await asyncio.wait_for(app.erase_owner("alice", wait_s=LONG), LONG)
    assert ended and erased.complete and erased.jobs == (e.id,) and erased.deliveries == 1
    assert [job for job, _ in (await _deliveries(app)).values()] == [b.id]


async def test_addresses_are_a_collection_not_one_string(app: App) -> None:
    with pytest.raises(TypeError, match="not one string"):
        await app.erase_owner("alice", addresses="alice@example.com")


async def test_a_job_of_hers_an_operator_retries_during_the_erasure_is_cancelled_again(
    app: App,
) -> None:
    backend = app._require_backend()
    # Given her running job, which the erasure waits for, and her waiting one it cancelled
    running, waiting = _hooked("alice"), _hooked("alice", "qb", delay=3600)
    await backend.enqueue([running, waiting])
    (lease,) = await claim(backend, "qa")
    erasing = asyncio.create_task(app.erase_owner("alice", wait_s=LONG))
    while not ((row := await backend.get(running.id)) and row.cancel_requested):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    row = await backend.get(waiting.id)
    assert row is not None and row.state is JobState.CANCELLED
    # When an operator retries it meanwhile
    await app.requeue(waiting.id)
    # Then the erasure's next look cancels it again (it looked again only at jobs new to it)
    deadline = asyncio.get_running_loop().time() + LONG
    while not ((row := await backend.get(waiting.id)) and row.state is JobState.CANCELLED):
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.01)
    await backend.settle([Outcome(lease=lease, state=JobState.CANCELLED)])
    erased = await asyncio.wait_for(erasing, LONG)
    assert sorted(erased.jobs) == sorted([running.id, waiting.id]) and erased.complete
