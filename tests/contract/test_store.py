"""JobStore contract: progress, cancellation, requeue, the change feed, effects and listing."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from offload.brokers import Backend, open_backend
from offload.contract import JobState, Outcome
from offload.errors import InvalidTransition, JobNotFound

from ._support import LONG, ShiftClock, claim, done, envelope, rescue, status
from .conftest import BackendParam

pytestmark = pytest.mark.anyio


async def test_progress_is_recorded_for_the_lease_holder(backend: Backend) -> None:
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    assert await backend.progress(lease, 0.25, "rendering") is True
    assert (await status(backend, env.id))["progress"] == {"fraction": 0.25, "message": "rendering"}
    assert await backend.progress(lease, None, "only a message") is True
    assert (await status(backend, env.id))["progress"] == {
        "fraction": None,
        "message": "only a message",
    }


async def test_progress_of_a_finished_job_changes_nothing(backend: Backend) -> None:
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.progress(lease, 0.5, "half")
    await backend.settle([done(lease, {"ok": True})])
    assert await backend.progress(lease, 0.9, "late") is False
    record = await status(backend, env.id)
    assert record["state"] == "succeeded"
    assert record["progress"] == {"fraction": 0.5, "message": "half"}


async def test_cancel_of_a_queued_job_means_it_never_runs(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a queued job and a scheduled one
    queued, scheduled = envelope(), envelope(delay=30)
    await backend.enqueue([queued, scheduled])
    # When both are cancelled
    row = await backend.cancel(queued.id)
    await backend.cancel(scheduled.id)
    # Then they are cancelled and never claimed, not even after the delay
    assert row.state == "cancelled"
    for env in (queued, scheduled):
        record = await status(backend, env.id)
        assert record["state"] == "cancelled" and record["finished_at"] is not None
        assert record["attempt"] == 0 and record["started_at"] is None
    clock.advance(31)
    assert await claim(backend) == []


async def test_cancel_of_a_running_job_is_signalled_through_heartbeats(
    backend: Backend,
) -> None:
    # Given a running job whose heartbeat reports no cancellation
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    (before,) = await backend.extend([lease], lease_for=60)
    assert before.held and not before.cancel_requested
    # When it is cancelled
    row = await backend.cancel(env.id)
    # Then it keeps running until its worker hears of it on the next heartbeat
    assert row.state == "running"
    (after,) = await backend.extend([lease], lease_for=60)
    assert after.job_id == env.id and after.held and after.cancel_requested
    # And the worker's cancelled outcome ends it
    stop = Outcome(lease=lease, state=JobState.CANCELLED, error={"type": "Cancelled"})
    assert await backend.settle([stop]) == [True]
    record = await status(backend, env.id)
    assert record["state"] == "cancelled" and record["finished_at"] is not None


async def test_extend_reports_cancellation_per_lease(backend: Backend) -> None:
    a, b = envelope(), envelope()
    await backend.enqueue([a, b])
    leases = await claim(backend, limit=2)
    await backend.cancel(b.id)
    answers = await backend.extend(leases, lease_for=60)
    assert {x.job_id: (x.held, x.cancel_requested) for x in answers} == {
        a.id: (True, False),
        b.id: (True, True),
    }


async def test_cancel_requested_survives_a_lapsed_lease(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a running job that was cancelled, whose worker then died
    env = envelope()
    await backend.enqueue([env])
    await claim(backend, lease_for=LONG)
    await backend.cancel(env.id)
    clock.advance(LONG + 1)
    # When the sweeper rescues the lapsed lease (reported with its cancel flag)
    (lapsed,) = await backend.expired(limit=10)
    assert lapsed.cancel_requested
    await rescue(backend, clock)
    # Then the job is not delivered again: the cancellation stands
    assert await claim(backend) == []
    assert (await status(backend, env.id))["state"] == "cancelled"


@pytest.mark.parametrize("given_back", [False, True])
async def test_a_cancel_its_worker_had_not_seen_stands_when_the_attempt_would_run_again(
    backend: Backend, clock: ShiftClock, given_back: bool
) -> None:
    # Given a running job cancelled between two heartbeats of its worker,
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.cancel(env.id)
    # when the attempt fails and would be retried (or is given back unspent at a stop),
    state = JobState.QUEUED if given_back else JobState.RETRYING
    error = {"type": "RuntimeError", "message": "boom"}
    again = Outcome(lease=lease, state=state, error=error, run_at=clock.now(), refund=given_back)
    assert await backend.settle([again]) == [True]
    # then it ends cancelled and runs no more (it ran again, as often as its budget let it).
    record = await status(backend, env.id)
    assert record["state"] == "cancelled" and record["finished_at"] is not None
    assert record["attempt"] == (0 if given_back else 1)
    clock.advance(5)
    assert await claim(backend) == []
    assert [r.id for r in await backend.list_jobs(owner=None, state="cancelled")] == [env.id]
    # A job retried with no cancel asked runs again, as ever.
    other = envelope()
    await backend.enqueue([other])
    (lease,) = await claim(backend)
    retry = Outcome(lease=lease, state=JobState.RETRYING, error=error, run_at=clock.now())
    assert await backend.settle([retry]) == [True]
    assert [lease.envelope.id for lease in await claim(backend)] == [other.id]


@pytest.mark.parametrize(
    "final", [JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED]
)
async def test_cancel_of_a_final_job_raises_invalid_transition(
    backend: Backend,
    final: JobState,
) -> None:
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.settle([Outcome(lease=lease, state=final, result="r")])
    with pytest.raises(InvalidTransition):
        await backend.cancel(env.id)
    assert (await status(backend, env.id))["state"] == final.value


async def test_cancel_of_an_unknown_job_raises_job_not_found(backend: Backend) -> None:
    with pytest.raises(JobNotFound):
        await backend.cancel("no-such-job")


async def test_requeue_of_a_waiting_or_running_job_raises_invalid_transition(
    backend: Backend,
) -> None:
    running, queued = envelope(priority=-1), envelope()
    await backend.enqueue([running, queued])
    await claim(backend, limit=1)
    for env in (running, queued):
        with pytest.raises(InvalidTransition):
            await backend.requeue(env.id)
    with pytest.raises(JobNotFound):
        await backend.requeue("no-such-job")


async def test_requeue_of_a_cancelled_job_runs_it(backend: Backend) -> None:
    env = envelope()
    await backend.enqueue([env])
    await backend.cancel(env.id)
    assert (await backend.requeue(env.id)).state == "queued"
    assert [le.job_id for le in await claim(backend)] == [env.id]


async def test_change_feed_delivers_every_state_change_in_order(backend: Backend) -> None:
    # Given a job that is enqueued, claimed, reports progress twice and succeeds
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.progress(lease, 0.5, "half")
    await backend.progress(lease, 0.9, "nearly")
    await backend.settle([done(lease, {"pdf": "blob:r.pdf"})])
    # When its changes are read from the start
    changes = await backend.changes_since(0, job_id=env.id)
    # Then every change is there, oldest first, each carrying the job as it was
    states = [c.row.state for c in changes]
    assert states == ["queued", "running", "running", "running", "succeeded"]
    progress = [(c.row.progress_fraction, c.row.progress_message) for c in changes[2:4]]
    assert progress == [(0.5, "half"), (0.9, "nearly")]
    assert changes[-1].row.result == {"pdf": "blob:r.pdf"}
    assert [c.final for c in changes] == [False, False, False, False, True]
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(c.job_id == env.id and c.owner == "local" for c in changes)
    assert all(c.row.id == env.id for c in changes)


async def test_change_feed_follows_retries_and_requeue(backend: Backend) -> None:
    env = envelope(max_attempts=2)
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.settle([Outcome(lease=lease, state=JobState.RETRYING, run_at=time.time())])
    (lease,) = await claim(backend)
    await backend.settle([Outcome(lease=lease, state=JobState.DEAD)])
    await backend.requeue(env.id)
    changes = await backend.changes_since(0, job_id=env.id)
    assert [(c.row.state, c.row.attempt) for c in changes] == [
        ("queued", 0),
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("dead", 2),
        ("queued", 0),
    ]


async def test_change_feed_resumes_after_a_seq(backend: Backend) -> None:
    env = envelope()
    await backend.enqueue([env])
    (first,) = await backend.changes_since(0)
    assert await backend.changes_since(first.seq) == []
    await claim(backend)
    later = await backend.changes_since(first.seq)
    assert [c.row.state for c in later] == ["running"]
    assert later[0].seq > first.seq


async def test_change_feed_respects_limit(backend: Backend) -> None:
    await backend.enqueue([envelope() for _ in range(5)])
    page = await backend.changes_since(0, limit=2)
    rest = await backend.changes_since(page[-1].seq, limit=10)
    assert len(page) == 2 and len(rest) == 3


async def test_changes_since_filters_by_job_and_owner(backend: Backend) -> None:
    # Given jobs of alice and bob that both move
    a1, a2, b1 = envelope(owner="alice"), envelope(owner="alice"), envelope(owner="bob")
    await backend.enqueue([a1, a2, b1])
    for lease in await claim(backend, limit=3):
        await backend.settle([done(lease)])
    # When the feed is read per owner and per job
    alices = await backend.changes_since(0, owner="alice")
    bobs = await backend.changes_since(0, owner="bob")
    one = await backend.changes_since(0, job_id=a2.id)
    both = await backend.changes_since(0, job_id=b1.id, owner="alice")
    # Then each sees only its own changes
    assert {c.job_id for c in alices} == {a1.id, a2.id} and len(alices) == 6
    assert all(c.owner == "alice" for c in alices)
    assert {c.job_id for c in bobs} == {b1.id} and len(bobs) == 3
    assert [c.row.state for c in one] == ["queued", "running", "succeeded"]
    assert both == []
    assert len(await backend.changes_since(0)) == 9


async def test_wait_changes_returns_soon_after_a_change(backend: Backend) -> None:
    await backend.changes_since(0)  # the feed reader is up to date

    async def enqueue_later() -> None:
        await anyio.sleep(0.1)
        await backend.enqueue([envelope()])

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(enqueue_later)
        await backend.wait_changes(60.0)
    assert time.monotonic() - start < 30.0  # long before its end (not how soon: loaded CI)
    assert len(await backend.changes_since(0)) == 1


async def test_remember_and_recall_side_steps(backend: Backend) -> None:
    env = envelope()
    await backend.enqueue([env])
    assert await backend.recall(env.id, "charge") == (False, None)
    await backend.remember(env.id, "charge", {"payment": "pi_123", "amount": 42})
    await backend.remember(env.id, "nothing", None)
    assert await backend.recall(env.id, "charge") == (True, {"payment": "pi_123", "amount": 42})
    assert await backend.recall(env.id, "nothing") == (True, None)
    assert await backend.recall("other-job", "charge") == (False, None)
    await backend.remember(env.id, "charge", "replaced")
    assert await backend.recall(env.id, "charge") == (True, "replaced")
    # A step's first result stands where asked (`ctx.once`: a worker that lost its lease
    # while the step ran wrote over the one another worker had stored and gone on with).
    await backend.remember(env.id, "charge", "stale", first=True)
    assert await backend.recall(env.id, "charge") == (True, "replaced")
    await backend.remember(env.id, "fresh", "first", first=True)
    assert await backend.recall(env.id, "fresh") == (True, "first")


async def test_a_deleted_jobs_records_are_not_written_after(backend: Backend) -> None:
    # Given a finished job an operator deleted while a delivery of its, or a step of a
    # thread that ran on, was under way,
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.remember(env.id, "offload.deliveries.email", [{"target": "a@b.example"}])
    await backend.settle([done(lease, 1)])
    assert await backend.delete_many([env.id]) == 1
    # when that delivery or step records what it did,
    await backend.remember(env.id, "offload.deliveries.email", [{"target": "a@b.example"}])
    await backend.remember(env.id, "step", "late", first=True)
    # then nothing is kept of the job: no record that nothing would ever delete
    assert await backend.recall(env.id, "offload.deliveries.email") == (False, None)
    assert await backend.recall(env.id, "step") == (False, None)


#: Numbers as JSON writers write them: floats past 1e16 (an exponent), an integral float, a
#: tiny one, the 64-bit integers' ends, and strings that look like them.
NUMBERS = {
    "avogadro": 6.02214076e23,
    "e16": 1e16,
    "two_60": 2.0**60,
    "negative": -1e20,
    "max": 1.7976931348623157e308,
    "integral": 3.0,
    "tiny": 5e-324,
    "small": 1.5e-7,
    "ints": [2**64 - 1, -(2**63), 0],
    "text": 'a 1e+16 "b" 6.02e+23\\',
    "1e+16": ["e+5", "1e+16"],
}


def _same_numbers(found: Any) -> None:
    assert found == NUMBERS
    assert {k: type(v) for k, v in found.items()} == {k: type(v) for k, v in NUMBERS.items()}
    assert all(type(n) is int for n in found["ints"])


async def test_numbers_read_back_as_they_were_written(backend: Backend) -> None:
    # Given a payload, a result and a remembered step of floats with exponents and the rest
    env = envelope(payload=NUMBERS)
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.remember(env.id, "step", NUMBERS)
    await backend.settle([done(lease, NUMBERS)])
    # Then each reads back the same numbers, floats as floats (PostgreSQL's jsonb wrote
    # 6.02e+23 as the integer 602214076000000000000000), and text as it was.
    row = await backend.get(env.id)
    assert row is not None
    _same_numbers(row.payload)
    _same_numbers(row.result)
    _same_numbers((await backend.recall(env.id, "step"))[1])


async def test_list_is_newest_first_and_paginates_with_before(backend: Backend) -> None:
    # Given seven jobs of alice and two of bob
    alice = [envelope(owner="alice") for _ in range(7)]
    bob = [envelope(owner="bob") for _ in range(2)]
    await backend.enqueue(alice[:3] + bob[:1] + alice[3:] + bob[1:])
    # When alice's jobs are listed three at a time
    pages, before = [], None
    while True:
        page = await backend.list_jobs(owner="alice", before=before, limit=3)
        if not page:
            break
        pages.append([r.id for r in page])
        before = page[-1].id
    # Then the pages cover all her jobs once, newest first, and none of bob's
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [e.id for e in reversed(alice)]
    assert len(await backend.list_jobs(owner=None, limit=100)) == 9


async def test_list_filters_by_owner_state_and_kind(backend: Backend) -> None:
    a_k1, a_k2, a_run = (
        envelope(owner="alice", kind="k1"),
        envelope(owner="alice", kind="k2"),
        envelope(owner="alice", kind="k1", priority=-1),
    )
    b_k1 = envelope(owner="bob", kind="k1")
    await backend.enqueue([a_k1, a_k2, a_run, b_k1])
    (lease,) = await claim(backend, limit=1)
    assert lease.job_id == a_run.id

    async def ids(**filters: str | None) -> set[str]:
        return {r.id for r in await backend.list_jobs(**filters)}  # type: ignore[arg-type]

    assert await ids(owner="alice") == {a_k1.id, a_k2.id, a_run.id}
    assert await ids(owner="alice", kind="k1") == {a_k1.id, a_run.id}
    assert await ids(owner="alice", state="queued") == {a_k1.id, a_k2.id}
    assert await ids(owner="alice", state="running", kind="k1") == {a_run.id}
    assert await ids(owner="alice", state="running", kind="k2") == set()
    assert await ids(owner=None, kind="k1", state="queued") == {a_k1.id, b_k1.id}
    assert await ids(owner="carol") == set()
    assert await ids(owner=None, state="no-such-state") == set()
    # Every owner's jobs of a kind, in several states, newest first, a page at a time
    pages, before = [], None
    while page := await backend.list_jobs(owner=None, kind="k1", before=before, limit=2):
        pages.append([r.id for r in page])
        before = page[-1].id
    assert pages == [[b_k1.id, a_run.id], [a_k1.id]]
    rows = await backend.list_jobs(owner="bob")
    assert rows[0].owner == "bob" and rows[0].kind == "k1"


async def test_last_seq_is_the_newest_feed_position(backend: Backend) -> None:
    assert await backend.last_seq() == 0
    await backend.enqueue([envelope(), envelope()])
    await claim(backend, limit=1)
    changes = await backend.changes_since(0)
    assert len(changes) == 3
    assert await backend.last_seq() == changes[-1].seq
    assert await backend.changes_since(await backend.last_seq()) == []


async def test_prune_deletes_old_finished_jobs_but_keeps_dead_and_live_ones(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given one job in each state that prune must tell apart
    envs = {
        name: envelope(priority=p)
        for p, name in enumerate(["succeeded", "failed", "cancelled", "dead", "running", "queued"])
    }
    await backend.enqueue(list(envs.values()))
    for name in ("succeeded", "failed", "cancelled", "dead", "running"):
        (lease,) = await claim(backend, limit=1)
        assert lease.job_id == envs[name].id
        if name != "running":
            await backend.settle([Outcome(lease=lease, state=JobState(name))])
    await backend.remember(envs["succeeded"].id, "step", 1)
    await backend.remember(envs["dead"].id, "step", 2)
    # When jobs that finished over an hour ago are pruned, then those finished at all
    assert await backend.prune(3600) == 0
    clock.advance(3601)
    pruned = await backend.prune(3600)
    # Then only succeeded, failed and cancelled jobs are gone, with their feed and steps
    assert pruned == 3
    for name in ("succeeded", "failed", "cancelled"):
        assert await backend.get(envs[name].id) is None
        assert await backend.changes_since(0, job_id=envs[name].id) == []
    assert await backend.recall(envs["succeeded"].id, "step") == (False, None)
    for name in ("dead", "running", "queued"):
        assert (await status(backend, envs[name].id))["state"] == name
    assert await backend.recall(envs["dead"].id, "step") == (True, 2)
    assert len(await backend.changes_since(0, job_id=envs["dead"].id)) == 3


async def test_opening_without_create_reads_an_existing_store(
    backend: Backend, backend_url: str, backend_name: str, backend_param: BackendParam
) -> None:
    if not backend_param.cross_process:
        pytest.skip(f"{backend_name} lives inside one backend object; another cannot open it")
    # Given a store that a worker (or `offload migrate`) made, with a job in it
    env = envelope()
    await backend.enqueue([env])
    # When a read-only caller opens it without creating anything, it reads the same jobs.
    reader = open_backend(backend_url)
    await reader.open(create=False)
    try:
        assert [row.id for row in await reader.list_jobs(owner=None)] == [env.id]
        assert (await reader.stats())[env.queue]["queued"] == 1
    finally:
        await reader.close()
