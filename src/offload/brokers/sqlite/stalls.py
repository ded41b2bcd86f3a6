"""Lease time that stands still while nobody could write: the answer to a stalled lock.

A worker keeps its leases by writing (a heartbeat every third of the lease). While another
connection holds the write lock (a long write, a backup, the sqlite3 shell), nobody can: a
lock held past the lease would let the leases of healthy workers lapse, and the first
rescuer to get the lock afterwards would hand their jobs to others while they still run.
So the first offload writer that waited that long for the lock adds the wait to every lease
that was live when it began waiting, in the same transaction and before anything else, and
records up to when stalls are paid for, so that the other writers that waited through the
same stall add only what is not paid yet.

Every offload worker writes at least once a heartbeat, so each worker process's first write
after a stall is such a wait, and it comes before that process's next rescue: a rescuer
never sees a lease lapsed by a stall it did not pay for. A rescue that itself waited that
long applies nothing (its lapses were read before the stall ended, its holders could not
heartbeat meanwhile): the next sweep decides again.
"""

from __future__ import annotations

import sqlite3

from .._sql import queries

Q = queries(__package__)

#: A wait for the write lock this long (seconds) or longer is a stall (less for short
#: leases: see SQLiteBackend.claim).
DEFAULT_STALL_S = 0.5


def pause_leases(conn: sqlite3.Connection, began: float, now: float, stall_s: float) -> float:
    """Inside the transaction that waited from `began` to `now` for the lock: add the part
    of the wait no earlier writer paid for to the leases live when it began. Returns the
    seconds added (0 when the unpaid part is shorter than `stall_s`)."""
    row = conn.execute(Q["stall_paid_until"]).fetchone()
    since = began if row is None else max(began, float(row[0]))
    if now - since < stall_s:
        return 0.0
    conn.execute(Q["pause_leases"], (now - since, since))
    conn.execute(Q["pay_stall"], (repr(now),))
    return now - since
