"""Job ids: UUIDv7 carrying their creation time, in order, and the floor of a moment."""

from __future__ import annotations

import os
import uuid

from offload._ids import uuid7, uuid7_block, uuid7_floor


def _ms(job_id: str) -> int:
    return uuid.UUID(job_id).int >> 80


def test_an_id_carries_the_time_it_is_made_at() -> None:
    assert _ms(uuid7(1_800_000_000.123)) == 1_800_000_000_123
    assert uuid.UUID(uuid7()).version == 7


def test_ids_of_one_clock_sort_in_creation_order_within_a_millisecond() -> None:
    ids = [uuid7(1_900_000_000.0) for _ in range(5000)]  # more than the 12-bit counter holds
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_clock_far_behind_keeps_its_own_time() -> None:
    uuid7(1_950_000_000.0)
    old = uuid7(1_700_000_000.0)
    assert _ms(old) == 1_700_000_000_000


def test_the_floor_of_a_moment_sorts_below_every_id_of_it_and_above_earlier_ones() -> None:
    at = 1_800_000_000.5
    floor = uuid7_floor(at)
    earlier = uuid7(at - 0.002)
    assert uuid7(at) >= floor > earlier
    assert uuid7_floor(-5) == str(uuid.UUID(int=0))


def test_a_forked_child_makes_ids_of_its_own() -> None:
    # Given a process that has read random bytes ahead for its ids,
    uuid7(2_000_000_000.0)
    read, write = os.pipe()
    # when it forks and parent and child each make an id in the same millisecond,
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, uuid7(2_000_000_001.0).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = uuid7(2_000_000_001.0)
    # then the two ids differ: the child did not reuse the parent's unread bytes.
    assert os.waitstatus_to_exitcode(status) == 0
    assert _ms(child) == _ms(parent) and child != parent


def test_ids_made_together_are_those_made_one_by_one_in_order() -> None:
    # Given a batch of ids made at one moment, more than one millisecond's counter holds,
    at = 1_960_000_000.0
    batch = uuid7_block(5000, at)(0, 5000)
    after = uuid7(at)
    # then they are distinct, in order, of that moment (or the milliseconds borrowed after
    # it), and an id made next sorts after them all.
    assert batch == sorted(batch) and len(set(batch)) == len(batch)
    assert 1_960_000_000_000 <= _ms(batch[0]) <= _ms(batch[-1]) <= 1_960_000_000_003
    assert after > batch[-1]
    assert all(uuid.UUID(i).version == 7 for i in batch)


def test_a_reserved_block_stays_in_order_whatever_is_made_between_its_parts() -> None:
    # Given a block of ids reserved at one moment, written out in two parts,
    at = 1_965_000_000.0
    block = uuid7_block(2000, at)
    first = block(0, 1000)
    # when an id of a clock far ahead is made between the two parts (another task's),
    uuid7(at + 5)
    second = block(1000, 2000)
    # then the block's ids are still distinct and in order.
    ids = first + second
    assert ids == sorted(ids) and len(set(ids)) == 2000
