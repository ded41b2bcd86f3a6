"""Fair queues contract: a gated claim of a fair queue takes one job of each owner in turn,
the owner least recently served (by any claim) first, so one owner's backlog never holds
another's job back by more than a claim; limits still apply; on every backend."""

from __future__ import annotations

import pytest

from offload.brokers import Backend
from offload.contract import KindLimits

from ._support import LONG, envelope

pytestmark = pytest.mark.anyio


async def fair(backend: Backend, limit: int, queues: tuple[str, ...] = ("q",)) -> list[str]:
    leases = await backend.claim_gated(
        list(queues), worker_id="w1", lease_for=LONG, limit=limit, fair=["q"]
    )
    return [le.envelope.owner for le in leases]


async def backlog(backend: Backend, owner: str, n: int, queue: str = "q") -> None:
    await backend.enqueue([envelope(queue, owner=owner) for _ in range(n)])


async def test_owners_take_turns_least_recently_served_first(backend: Backend) -> None:
    # Given alice's 5 jobs, then bob's 2, then carol's 1
    await backlog(backend, "alice", 5)
    await backlog(backend, "bob", 2)
    await backlog(backend, "carol", 1)
    # When a fair claim takes 4, then 4 more
    first, second = await fair(backend, 4), await fair(backend, 4)
    # Then each owner gets one in turn, and the next claim starts from the least served
    # (it may take fewer than asked while jobs remain: a fair share of it from each owner)
    assert first == ["alice", "bob", "carol", "alice"]
    assert second[:2] == ["bob", "alice"] and set(second[2:]) <= {"alice"}
    assert len(second) >= 3


async def test_a_single_job_of_another_owner_goes_before_a_long_backlog(
    backend: Backend,
) -> None:
    # Given alice's 200 jobs being claimed, then bob's single job
    await backlog(backend, "alice", 200)
    assert await fair(backend, 3) == ["alice"] * 3
    await backlog(backend, "bob", 1)
    # When the next fair claim takes one, Then it is bob's
    assert await fair(backend, 1) == ["bob"]
    assert await fair(backend, 2) == ["alice", "alice"]


async def test_a_plain_queue_stays_first_in_first_out(backend: Backend) -> None:
    await backlog(backend, "alice", 3, queue="p")
    await backlog(backend, "bob", 1, queue="p")
    leases = await backend.claim_gated(["p"], worker_id="w1", lease_for=LONG, limit=4, fair=["q"])
    assert [le.envelope.owner for le in leases] == ["alice", "alice", "alice", "bob"]


async def test_fair_and_plain_queues_take_turns_in_one_claim(backend: Backend) -> None:
    await backlog(backend, "alice", 3)
    await backlog(backend, "zed", 3, queue="p")
    leases = await backend.claim_gated(
        ["q", "p"], worker_id="w1", lease_for=LONG, limit=4, fair=["q"]
    )
    assert sorted(le.envelope.queue for le in leases) == ["p", "p", "q", "q"]


async def test_claims_of_one_job_take_turns_between_fair_and_plain_queues(
    backend: Backend,
) -> None:
    # A worker of a fair queue claims no more than its free slots, often one: each claim
    # of one took from the plain queues first, so the fair queue waited for their backlog.
    await backlog(backend, "alice", 3)
    await backlog(backend, "zed", 3, queue="p")
    await backlog(backend, "bob", 3, queue="r")
    taken = []
    for _ in range(6):
        (lease,) = await backend.claim_gated(
            ["p", "q", "r"], worker_id="w1", lease_for=LONG, limit=1, fair=["q", "r"]
        )
        taken.append(lease.envelope.queue)
    # Each source takes its turn (the plain queues as one, then each fair queue)
    assert sorted(taken[:3]) == ["p", "q", "r"] and sorted(taken[3:]) == ["p", "q", "r"]


async def test_an_owners_jobs_keep_their_priority_order(backend: Backend) -> None:
    low, high = envelope(owner="alice", priority=5), envelope(owner="alice", priority=1)
    await backend.enqueue([low, high])
    leases = await backend.claim_gated(["q"], worker_id="w1", lease_for=LONG, limit=1, fair=["q"])
    assert [le.job_id for le in leases] == [high.id]


async def test_a_paused_fair_queue_gives_nothing(backend: Backend) -> None:
    await backlog(backend, "alice", 2)
    await backend.pause("q")
    assert await fair(backend, 5) == []
    await backend.resume("q")
    assert await fair(backend, 5) == ["alice", "alice"]


async def test_limits_apply_on_a_fair_queue(backend: Backend) -> None:
    await backend.declare_limits([KindLimits(kind="test.job", queue="q", max_running=3)])
    await backlog(backend, "alice", 5)
    await backlog(backend, "bob", 5)
    assert await fair(backend, 10) == ["alice", "bob", "alice"]
    assert await fair(backend, 10) == []


async def test_owners_whose_jobs_went_away_do_not_take_the_turns(backend: Backend) -> None:
    # Given many owners seen by a fair claim, whose jobs are then cancelled
    gone = [envelope(owner=f"a-gone-{n:02d}") for n in range(12)]  # first by name
    await backend.enqueue(gone)
    await backlog(backend, "alice", 1)
    assert await fair(backend, 1) == ["a-gone-00"]
    for job in gone[1:]:
        await backend.cancel(job.id)
    # When owners with jobs remain, Then a claim still finds them, first thing
    await backlog(backend, "bob", 2)
    assert await fair(backend, 2) == ["alice", "bob"]


@pytest.mark.parametrize("plain_claim", ["claim", "claim_gated"])
async def test_a_queue_no_longer_fair_gives_its_waiting_jobs_to_plain_claims(
    backend: Backend, plain_claim: str
) -> None:
    # Given jobs of several owners that a fair claim has seen (on Redis it moved them to
    # lists of each owner's), one of them cancelled since
    await backlog(backend, "alice", 3)
    owners_bob = [envelope(owner="bob") for _ in range(2)]
    await backend.enqueue(owners_bob)
    assert await fair(backend, 1) == ["alice"]
    await backend.cancel(owners_bob[0].id)
    # When the queue is read as a plain one (its kinds made plain, or the fair kind
    # retired beside plain ones) and a job comes after
    late = envelope(owner="carol")
    await backend.enqueue([late])
    claim = getattr(backend, plain_claim)
    taken: list[str] = []
    for _ in range(10):  # (Redis moves them back a chunk a claim)
        leases = await claim(["q"], worker_id="w2", lease_for=LONG, limit=10)
        if not leases:
            break
        taken += [le.envelope.owner for le in leases]
    # Then every job still waiting is claimed, once, the cancelled one not
    assert sorted(taken) == ["alice", "alice", "bob", "carol"]
