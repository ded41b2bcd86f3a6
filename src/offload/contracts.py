"""Message contracts as data: the snapshot `offload contracts export` writes (every kind's
JSON Schema at its current version, with its routing and upgraders), and the breaking
changes `offload contracts check` finds between a committed snapshot and the code.

A change is breaking when something already out there could no longer be read or routed:
jobs stored at the snapshot's version, clients posting what the snapshot promised. A
kind's schema may change in any way under a new version when upgraders lead from the
snapshot's version to it (a worker upgrades older payloads step by step; the HTTP API
takes the current version only, so its clients must move with it: `client_changes` says
what they would meet); at the same version it may only widen, and the HTTP API may not
take away what clients were promised (the kind itself, a field they send). A changed
queue, a removed upgrader and a removed kind strand stored jobs whatever the version; a
removed kind passes once named in `allow_removed` (its jobs drained).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from ._options import JobOptions
from ._schema_diff import narrowings
from .app import App, MessageSpec
from .errors import ConfigurationError

#: The layout of a snapshot (its "format" member): a reader refuses any other.
SNAPSHOT_FORMAT = 1
#: Options of `App.enqueue` that are not a snapshot's: the owner is who submits, not how.
_NOT_OPTIONS = ("owner",)


@dataclass(frozen=True, slots=True)
class BreakingChange:
    """One change of the code that breaks what a committed snapshot promised."""

    kind: str
    #: The version it concerns: the snapshot's (a field changed in place, a removed kind),
    #: or the code's (a version that cannot be reached by upgraders).
    version: int
    #: The field it concerns (`address.city`, `sizes[]`), or None for the kind itself.
    field: str | None
    detail: str

    def __str__(self) -> str:
        where = f"{self.kind} v{self.version}"
        if self.field:
            return f"{where}, field {self.field}: {self.detail}"
        return f"{where}: {self.detail}"


def message_schema(spec: MessageSpec) -> dict[str, Any]:
    """The JSON Schema a payload of the kind validates against (pydantic's)."""
    return spec.cls.model_json_schema()


def client_schema(spec: MessageSpec) -> dict[str, Any]:
    """The schema of what an HTTP client sends: the `FromPrincipal` fields left out (the
    web tier fills them from the caller, and refuses a body that carries one)."""
    schema = message_schema(spec)
    if not spec.principal_fields:
        return schema
    left_out = set(spec.principal_fields)
    properties = schema.get("properties", {})
    schema["properties"] = {k: v for k, v in properties.items() if k not in left_out}
    required = [name for name in schema.get("required", ()) if name not in left_out]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    return schema


def enqueue_options_schema() -> dict[str, Any]:
    """The JSON Schema of the options `App.enqueue` takes beside the message (priority,
    delay, run_at, idempotency_key, callback_url, notify_email): made from the options'
    own types, so it cannot drift from them."""
    schema = TypeAdapter(JobOptions).json_schema()
    properties = {k: v for k, v in schema["properties"].items() if k not in _NOT_OPTIONS}
    return {
        "additionalProperties": False,
        "description": "The options of App.enqueue beside the message: how to run one job.",
        "properties": properties,
        "title": "EnqueueOptions",
        "type": "object",
    }


def kind_contract(spec: MessageSpec, upgrades_from: Collection[int] = ()) -> dict[str, Any]:
    """One kind's entry in a snapshot."""
    return {
        "fair": spec.fair,
        "from_principal": sorted(spec.principal_fields),
        "http": spec.http,
        "queue": spec.queue,
        "schema": message_schema(spec),
        "unique": spec.unique,
        "unique_key": list(spec.unique_key),
        "upgrades_from": sorted(upgrades_from),
        "version": spec.version,
    }


def snapshot(app: App) -> dict[str, Any]:
    """The contracts of every kind of `app` (its own kinds: offload's built-in deliveries
    are offload's to evolve) and the enqueue options."""
    kinds = {
        kind: kind_contract(spec, app.upgraders.get(kind, {}))
        for kind, spec in sorted(app.kinds.items())
    }
    return {"enqueue_options": enqueue_options_schema(), "format": SNAPSHOT_FORMAT, "kinds": kinds}


def dumps(doc: Mapping[str, Any]) -> str:
    """A snapshot as text fit to commit: keys sorted, indented, one final newline, so the
    same contracts always give the same bytes."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def loads(text: str, *, source: str = "the snapshot") -> dict[str, Any]:
    """A snapshot read back.

    Raises:
        ConfigurationError: not JSON, or not a snapshot this offload can read.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{source} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kinds"), dict) or "format" not in doc:
        raise ConfigurationError(f"{source} is not an offload contracts snapshot")
    if doc.get("format") != SNAPSHOT_FORMAT:
        raise ConfigurationError(
            f"{source} has snapshot format {doc.get('format')!r}; this offload reads "
            f"format {SNAPSHOT_FORMAT}"
        )
    return doc


def breaking_changes(
    committed: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    allow_removed: Collection[str] = (),
) -> list[BreakingChange]:
    """What `current` (the code's snapshot) breaks of `committed`, kind by kind.

    Args:
        allow_removed: kinds that may be gone from the code (no job of them is left).

    Raises:
        ConfigurationError: a kind entry of either snapshot is malformed.
    """
    found: list[BreakingChange] = []
    now_kinds: Mapping[str, Any] = current["kinds"]
    for kind, was in sorted(committed["kinds"].items()):
        now = now_kinds.get(kind)
        try:
            if now is None:
                found += [] if kind in allow_removed else [_removed(kind, was)]
            else:
                found += [*_stranding_changes(kind, was, now), *_version_changes(kind, was, now)]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"the contract of {kind} is malformed: {exc!r}") from None
    return found


def _removed(kind: str, was: Mapping[str, Any]) -> BreakingChange:
    return BreakingChange(
        kind,
        int(was["version"]),
        None,
        "kind removed: its queued jobs would never run (drain them, then pass "
        f"--allow-removed {kind})",
    )


def _stranding_changes(
    kind: str, was: Mapping[str, Any], now: Mapping[str, Any]
) -> list[BreakingChange]:
    """Changes that leave stored jobs behind whatever the version: another queue, an
    upgrader gone; and those that change how the queue's jobs are claimed or matched,
    which every worker and stored key must agree on (`_routing_changes`)."""
    found = _routing_changes(kind, was, now)
    if now["queue"] != was["queue"]:
        detail = (
            f"queue changed from {was['queue']} to {now['queue']}: jobs waiting in "
            f"{was['queue']} would be left there"
        )
        found.append(BreakingChange(kind, int(was["version"]), None, detail))
    gone = sorted(set(was["upgrades_from"]) - set(now["upgrades_from"]))
    found += [
        BreakingChange(
            kind,
            v,
            None,
            f"upgrader from v{v} removed: jobs stored at v{v} could no longer be read",
        )
        for v in gone
    ]
    return found


def _routing_changes(
    kind: str, was: Mapping[str, Any], now: Mapping[str, Any]
) -> list[BreakingChange]:
    """A kind made fair or no longer (its whole queue claims otherwise, and on Redis every
    worker of the queue must run one declaration); a unique kind's key fields changed
    (stored jobs keep the key they were made with: one waiting under the old key and a new
    one no longer match) or its mode (`queued`, `active`: whether a running job holds its
    key). A snapshot from before these were recorded says nothing of them."""
    found = []
    version = int(was["version"])
    if "fair" in was and bool(now["fair"]) != bool(was["fair"]):
        detail = (
            f"fair changed from {str(bool(was['fair'])).lower()} to "
            f"{str(bool(now['fair'])).lower()}: the queue {now['queue']} is claimed otherwise, "
            "and on Redis every worker of it must run one declaration (deploy them together)"
        )
        found.append(BreakingChange(kind, version, None, detail))
    if "unique" in was and was["unique"] is not None and now["unique"] is not None:
        # (made unique, or no longer, strands nothing: jobs of before match nothing either)
        if sorted(was["unique_key"]) != sorted(now["unique_key"]):  # the key's fields
            detail = (
                f"unique key changed from {_fields(was)} to {_fields(now)}: a job stored "
                "under the old key and a new one no longer match (drain, or expect a repeat)"
            )
            found.append(BreakingChange(kind, version, None, detail))
        if was["unique"] != now["unique"]:
            detail = (
                f"unique changed from {was['unique']!r} to {now['unique']!r}: a job that runs "
                f"{'now holds its key' if now['unique'] == 'active' else 'no longer holds its key'}"
                ", so a repeat meanwhile is answered otherwise (200 with it, or a new job)"
            )
            found.append(BreakingChange(kind, version, None, detail))
    return found


def _fields(contract: Mapping[str, Any]) -> str:
    return ", ".join(sorted(contract["unique_key"])) or "the whole payload"


def _version_changes(
    kind: str, was: Mapping[str, Any], now: Mapping[str, Any]
) -> list[BreakingChange]:
    """A new version needs an upgrader from each older one; in place, only widening."""
    old_v, new_v = int(was["version"]), int(now["version"])
    if new_v < old_v:
        detail = (
            f"version went down from {old_v} to {new_v}: jobs stored at v{old_v} could not be read"
        )
        return [BreakingChange(kind, new_v, None, detail)]
    if new_v == old_v:
        return _same_version_changes(kind, old_v, was, now)
    steps = set(now["upgrades_from"])
    return [
        BreakingChange(kind, new_v, None, f"no upgrader from v{v} (the snapshot has v{old_v})")
        for v in range(old_v, new_v)
        if v not in steps
    ]


def client_changes(
    committed: Mapping[str, Any], current: Mapping[str, Any]
) -> list[BreakingChange]:
    """What new versions break for HTTP clients, which a new version is allowed to (so these
    are no breaking changes): the API takes a kind's current version only (upgraders turn
    stored jobs, not request bodies), so a client that posts what the snapshot's version
    promised gets 422 where the new one narrowed it, and 404 where the kind left the API."""
    found: list[BreakingChange] = []
    for kind, was in sorted(committed["kinds"].items()):
        now = current["kinds"].get(kind)
        if now is None or not was["http"] or int(now["version"]) <= int(was["version"]):
            continue
        old_v, new_v = int(was["version"]), int(now["version"])
        if not now["http"]:
            found.append(
                BreakingChange(kind, new_v, None, "no longer posted over HTTP: clients get 404")
            )
            continue
        found += [
            BreakingChange(
                kind,
                new_v,
                n.path or None,
                f"{n.detail}: clients that post the v{old_v} body get 422",
            )
            for n in narrowings(was["schema"], now["schema"])
        ]
    return found


def advisories(
    committed: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    allow_removed: Collection[str] = (),
) -> list[str]:
    """What `check` warns of without failing: an `--allow-removed` kind that the snapshot
    does not have (misspelt) or the code still declares (a stale option, which would let a
    later removal pass unseen), and a kind made unique (jobs stored before carry no key, so
    a repeat of one of them is a second job until they have run)."""
    notes = []
    for kind in sorted(allow_removed):
        if kind not in committed["kinds"]:
            notes.append(f"--allow-removed {kind}: the snapshot has no such kind (misspelt?)")
        elif kind in current["kinds"]:
            notes.append(
                f"--allow-removed {kind}: the kind is still declared (drop the option, or it "
                "lets a later removal pass unseen)"
            )
    for kind, was in sorted(committed["kinds"].items()):
        now = current["kinds"].get(kind)
        if now is not None and was.get("unique") is None and now.get("unique") is not None:
            notes.append(
                f"{kind}: made unique: jobs stored before carry no key, so a repeat of one of "
                "them is a second job until they have run"
            )
    return notes


def _same_version_changes(
    kind: str, version: int, was: Mapping[str, Any], now: Mapping[str, Any]
) -> list[BreakingChange]:
    """Changes made in place, without a new version: the schema may only widen, and the
    HTTP API may not take away what clients were promised."""
    found = [
        BreakingChange(kind, version, n.path or None, n.detail)
        for n in narrowings(was["schema"], now["schema"])
    ]
    if was["http"] and not now["http"]:
        found.append(
            BreakingChange(kind, version, None, "no longer posted over HTTP: clients get 404")
        )
    if was["http"] and now["http"]:
        filled = set(now["from_principal"]) - set(was["from_principal"])
        found += [
            BreakingChange(
                kind, version, name, "now filled from the caller: clients that send it get 422"
            )
            for name in sorted(filled)
        ]
        unfilled = set(was["from_principal"]) - set(now["from_principal"])
        found += [
            BreakingChange(
                kind, version, name, "no longer filled from the caller: clients must send it"
            )
            for name in sorted(unfilled)
            if name in now["schema"].get("required", ())
        ]
    return found
