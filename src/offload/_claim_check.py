"""Claim checks: a message payload above a size threshold travels as a blob reference.

`App` checks large payloads in before it stores their envelopes; the worker checks them
out before it validates the message, so handlers never see the difference. A payload blob
is named after its job (`payloads/<job id>.json`) and lives as long as the job's row: the
worker's periodic sweep deletes the blobs whose job is gone (pruned after its retention,
deleted, purged) or never came to be (a rolled-back `enqueue_in`, a replayed key).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ._text import has_nul
from .contract import UnencodableMessage, UnstorableMessage

if TYPE_CHECKING:
    from .app import App
    from .contract import Envelope
    from .stores.blobs import BlobStore

log = logging.getLogger("offload.claim_check")

#: The one field of a payload that stands for a checked-in message: {"key", "bytes", "sha256"}.
CLAIM_CHECK_FIELD = "$offload_claim_check"
#: The folder of the blob store that holds checked-in payloads.
PAYLOADS_PREFIX = "payloads"
#: How old a payload blob must be before the sweep may delete it for want of a job
#: (seconds): longer than any enqueue takes between storing the blob and committing its row.
DEFAULT_SWEEP_GRACE_S = 3600.0
#: Payload blobs one sweep looks at most.
DEFAULT_SWEEP_LIMIT = 1000
#: Longest a failed enqueue waits to delete the payloads it wrote (seconds).
DISCARD_WAIT_S = 5.0


class ClaimCheckError(Exception):
    """A checked-in payload is missing or not what was stored: no retry brings it back."""


def payload_key(job_id: str) -> str:
    return f"{PAYLOADS_PREFIX}/{job_id}.json"


def claim_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The claim check a payload carries in place of the message, or None."""
    claim = payload.get(CLAIM_CHECK_FIELD) if len(payload) == 1 else None
    return claim if isinstance(claim, dict) else None


def encoded(kind: str, payload: Any) -> bytes:
    """A payload as the JSON text every engine stores, checked as every engine takes it.

    Raises:
        UnencodableMessage: a value JSON cannot carry (an integer past 64 bits, say): a
            `TypeError` and an `UnstorableMessage`.
        UnstorableMessage: a float NaN or infinity (JSON has neither: it would be stored as
            null), or a NUL character (`\\u0000`), which PostgreSQL refuses and the other
            engines keep: refused on every engine, as a handler's result is.
    """
    try:
        raw = orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise UnencodableMessage(f"a {kind} message cannot be stored as JSON: {exc}") from exc
    if b"null" in raw and _non_finite(payload):  # orjson writes NaN and infinity as null
        raise UnstorableMessage(
            f"a {kind} message holds a float NaN or infinity, which JSON cannot carry (it "
            "would arrive as null): leave it out, or send it as text"
        )
    if has_nul(raw):
        raise UnstorableMessage(
            f"a {kind} message holds a NUL character (\\u0000) in a string or bytes, "
            "which not every engine stores: leave it out or encode it (base64, say)"
        )
    return raw


def _non_finite(value: Any) -> bool:
    """Whether a float NaN or infinity is anywhere in `value` (JSON as Python)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def fits(envelopes: Sequence[Envelope], threshold: int) -> bool:
    """Whether `check_in` would store every payload as it is (none over `threshold`).

    Raises:
        TypeError, UnstorableMessage: as `encoded`.
    """
    sizes = [len(encoded(e.kind, e.payload)) for e in envelopes]
    return threshold <= 0 or all(size <= threshold for size in sizes)


async def check_in(
    blobs: Callable[[], BlobStore], envelopes: Sequence[Envelope], threshold: int
) -> tuple[list[Envelope], list[str]]:
    """Store each payload of more than `threshold` bytes (as JSON) in the blob store and put
    a claim check in its place; 0 checks nothing in. Returns the envelopes to store and the
    keys of the blobs written (for the caller to delete if the store fails).

    Args:
        blobs: gives the blob store, opened only when a payload is large.

    Raises:
        TypeError, UnstorableMessage: as `encoded`, before anything is stored.
    """
    # Each checked before any is stored; the JSON kept of the payloads to store aside only:
    # orjson's bytes hold some 4 KB each however short, 400 MB for a batch of 100,000.
    raws = [_aside(encoded(e.kind, e.payload), threshold) for e in envelopes]
    out: list[Envelope] = []
    keys: list[str] = []
    try:
        for envelope, raw in zip(envelopes, raws, strict=True):
            if raw is None:
                out.append(envelope)
                continue
            key = payload_key(envelope.id)
            keys.append(key)  # before the put: one interrupted may still land
            await blobs().put(key, raw, "application/json")
            claim = {"key": key, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
            out.append(dataclasses.replace(envelope, payload={CLAIM_CHECK_FIELD: claim}))
    except BaseException:
        if keys:  # a later payload's store failed: no job is stored, so none of these is
            # A bounded wait: on a store that does not answer, each delete would wait out
            # its own deadline; what is left is an orphan the sweep deletes later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(discard(blobs(), keys), DISCARD_WAIT_S)
        raise
    return out, keys


def _aside(raw: bytes, threshold: int) -> bytes | None:
    """A payload's JSON where it is to be stored aside (over `threshold`, not 0), else None."""
    return raw if 0 < threshold < len(raw) else None


async def check_out(blobs: BlobStore, claim: dict[str, Any]) -> dict[str, Any]:
    """The payload a claim check stands for, read back from the blob store.

    Raises:
        ClaimCheckError: the blob is gone or its bytes are not the ones checked in.
        BackendError: the blob store failed (worth a retry).
    """
    key = str(claim.get("key", ""))
    try:
        raw = await blobs.get(key)
    except (FileNotFoundError, ValueError) as exc:
        raise ClaimCheckError(f"the checked-in payload {key!r} is missing") from exc
    if hashlib.sha256(raw).hexdigest() != claim.get("sha256"):
        raise ClaimCheckError(f"the checked-in payload {key!r} does not match its checksum")
    payload: dict[str, Any] = orjson.loads(raw)
    return payload


async def discard(blobs: BlobStore, keys: Sequence[str]) -> None:
    """Delete payload blobs no stored job refers to; a failure is logged, the sweep retries."""
    for key in keys:
        try:
            await blobs.delete(key)
        except Exception as exc:
            log.warning("could not delete %s: %s", key, exc, extra={"action": "claim_discard"})


async def sweep(
    app: App,
    *,
    older_than_s: float = DEFAULT_SWEEP_GRACE_S,
    limit: int = DEFAULT_SWEEP_LIMIT,
) -> int:
    """Delete payload blobs older than `older_than_s` whose job no longer exists (or never
    did), looking at `limit` of them each time: each sweep goes on past the keys the ones
    before it looked at (in the store's listing order, whatever it is), and starts over past
    the end, so that the payloads of jobs kept for good (dead ones) cannot hide the orphans
    after them. A blob store that cannot list its keys is left alone. Returns how many went."""
    keys = getattr(app.blobs, "keys", None)
    if keys is None:
        return 0
    cutoff = time.time() - older_than_s  # blob times are wall-clock times
    skip = _SWEPT_TO.get(app, 0)
    stale: list[str] = []
    listed = seen = 0
    async with contextlib.aclosing(keys(PAYLOADS_PREFIX)) as listing:  # closed on break
        async for key, modified in listing:
            listed += 1
            if listed <= skip:
                continue
            if seen >= limit:
                break
            seen += 1
            name = key.rsplit("/", 1)[-1]
            if modified > cutoff or not name.endswith(".json"):
                continue
            if await app.get(name.removesuffix(".json")) is None:
                stale.append(key)
        else:
            skip = seen = 0  # the end: the next sweep starts over
    # (the keys this one deletes no longer come before the next one's place)
    _SWEPT_TO[app] = skip + seen - len(stale) if seen else 0
    await discard(app.blobs, stale)
    return len(stale)


#: Per app, how many payload keys its latest sweep went past (0: start from the first).
_SWEPT_TO: weakref.WeakKeyDictionary[App, int] = weakref.WeakKeyDictionary()
