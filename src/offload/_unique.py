"""Unique jobs: the modes a kind may declare and the key a job of a unique kind holds."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic_core import to_jsonable_python

from ._payloads import stored_key
from .contract import Message
from .errors import ConfigurationError

#: `unique=` of `App.message`: "queued" holds the key while a job waits for its first start
#: (ready or delayed); "active" holds it while the job waits or runs (retries included).
UniqueMode = Literal["queued", "active"]
#: The modes `App.message` accepts.
UNIQUE_MODES: tuple[UniqueMode, ...] = ("queued", "active")


def unique_fields(
    cls: type[Message], unique: str | None, fields: Sequence[str] | None
) -> tuple[str, ...] | None:
    """The fields a kind's unique key is made of, checked at declaration: None for a kind
    that is not unique, () for the whole payload.

    Raises:
        ConfigurationError: an unknown mode, `unique_key` without `unique`, or a field the
            message does not have.
    """
    if unique is None:
        if fields is not None:
            raise ConfigurationError("unique_key= needs unique='queued' or unique='active'")
        return None
    if unique not in UNIQUE_MODES:
        raise ConfigurationError(f"unique must be 'queued' or 'active', not {unique!r}")
    if isinstance(fields, str):
        raise ConfigurationError("unique_key is a tuple of field names, not one string")
    chosen = tuple(fields or ())
    unknown = [name for name in chosen if name not in cls.model_fields]
    if unknown:
        raise ConfigurationError(
            f"unique_key names fields {cls.__name__} does not have: {', '.join(unknown)}"
        )
    if fields is not None and not chosen:
        raise ConfigurationError("unique_key names no field (leave it out for the whole payload)")
    # As the payload stores them: a field's alias where it has one (`Field(alias=...)`)
    return tuple(stored_key(cls, name) for name in chosen)


def unique_key(
    kind: str,
    owner: str,
    payload: Mapping[str, Any],
    fields: Sequence[str],
    values: Mapping[str, Any] | None = None,
) -> str:
    """The key a job holds: a digest of its kind, its owner and the chosen fields of its
    payload (the whole payload when `fields` is empty), so equal values give equal keys
    whatever their order, and a key says nothing of the values it was made of.

    The owner is part of it because a job is visible to its owner only: a repeat answered
    with another owner's job would tell one tenant of another's work.

    Args:
        values: the same message dumped as Python values (`model_dump(mode="python")`),
            read beside `payload` to make what equal messages may write apart one
            (`canonical`).
    """
    if values is not None:
        payload = canonical(payload, values)
    chosen = dict(payload) if not fields else {name: payload.get(name) for name in fields}
    text = orjson.dumps([kind, owner, chosen], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()[:40]


def canonical(payload: Any, values: Any) -> Any:
    """`payload` (a message as JSON stores it) with what equal messages may write apart
    made one, found where `values` (the same message as Python values) holds:

    - a set: its items in one order (JSON writes a set in its iteration order, which
      Python's hash seed changes from process to process: one set gave as many keys),
      each made one too where the set was written item by item by default;
    - an aware time: in UTC (`01:00+01:00` and `00:00Z` are one instant), where the payload
      holds it as written by default.

    Where the two do not line up (a serializer of the class's own) the payload stands:
    equal payloads make one key whatever their values."""
    if isinstance(values, set | frozenset) and isinstance(payload, list):
        return _sorted(_set_items(payload, values))
    if isinstance(values, Mapping) and isinstance(payload, Mapping):
        if all(k in values for k in payload):
            return {k: canonical(v, values[k]) for k, v in payload.items()}
        if len(values) == len(payload) and not any(isinstance(k, str) for k in values):
            # (keys JSON writes as text, `1` as "1": paired in their one order)
            pairs = zip(payload.items(), values.values(), strict=True)
            return {k: canonical(v, value) for (k, v), value in pairs}
        return payload
    if (
        isinstance(values, list | tuple)
        and isinstance(payload, list)
        and len(values) == len(payload)
    ):
        return [canonical(p, v) for p, v in zip(payload, values, strict=True)]
    if isinstance(values, datetime) and isinstance(payload, str) and values.utcoffset():
        if payload == _default_json(values):  # (as written by default)
            utc: str = to_jsonable_python(values.astimezone(UTC))
            return utc
    return payload


def _set_items(payload: list[Any], values: set[Any] | frozenset[Any]) -> list[Any]:
    """A set's items, each made one (`canonical`) where the payload holds exactly what the
    default JSON of its items is; else the payload's items as they are."""
    written = [_default_json(v) for v in values]
    if any(w is _NOT_DEFAULT for w in written):
        return payload
    if _sorted([_shape(w) for w in written]) != _sorted([_shape(p) for p in payload]):
        return payload
    return [canonical(w, v) for w, v in zip(written, values, strict=True)]


#: What `_default_json` answers for a value the default JSON cannot write.
_NOT_DEFAULT = object()


def _default_json(value: Any) -> Any:
    try:
        return to_jsonable_python(value)
    except Exception:  # (a type only a serializer of the class's own writes; bytes not UTF-8)
        return _NOT_DEFAULT


def _shape(value: Any) -> Any:
    """`value` with every list's items in one order: what two writings of one set (its
    items' sets in their own orders) share."""
    if isinstance(value, list):
        return _sorted([_shape(v) for v in value])
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return value


def _sorted(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda item: orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
