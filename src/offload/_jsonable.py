"""A value as a job's record stores it: a handler's result, a `ctx.once` step's value."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from ._text import has_nul
from .contract import MAX_NESTING, nested_deeper


def _model_json(value: Any) -> Any:
    """orjson's `default` for a pydantic model nested in a result: its JSON form."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


#: The most a stored value (a handler's result, a step's value) may take as JSON. A larger
#: one belongs in the blob store; and orjson, out of memory as it writes one (a worker
#: under a memory limit), ends the process (a segmentation fault) where it would raise.
MAX_VALUE_BYTES = 64 * 2**20


def jsonable(value: Any) -> Any:
    """A value as a job's record stores it (a handler's result, a step's value): JSON, a
    pydantic model (alone or inside lists and dicts) as its JSON.

    Raises:
        TypeError: a value JSON cannot carry (or an integer past 64 bits).
        ValueError: a pydantic model that cannot be dumped as JSON.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if _larger_than(value, MAX_VALUE_BYTES):
        raise ValueError(
            f"it takes more than {MAX_VALUE_BYTES // 2**20} MiB as JSON, more than a job's "
            "record keeps: write it to the blob store (ctx.blobs.put) and return its reference"
        )
    if nested_deeper(value):
        raise TypeError(f"it nests objects and arrays more than {MAX_NESTING} levels deep")
    try:
        dumped: bytes | None = orjson.dumps(value)
    except orjson.JSONEncodeError:
        dumped = None
    if dumped is None:
        # A pydantic model inside a list or dict (`[Dog(...)]`): dumped as a model is, the
        # value stored is what that JSON reads back. Anything else raises TypeError.
        dumped = orjson.dumps(value, default=_model_json)
        value = orjson.loads(dumped)
        if nested_deeper(value):
            raise TypeError(f"it nests objects and arrays more than {MAX_NESTING} levels deep")
    if has_nul(dumped):
        # PostgreSQL's jsonb refuses it, and with it the whole batch of outcomes it is in
        raise TypeError("it contains a NUL character (\\u0000), which no engine stores alike")
    return value


def _larger_than(value: Any, limit: int) -> bool:
    """Whether `value` (JSON as Python, with pydantic models and dataclasses inside, as a
    result may hold them) takes more than `limit` bytes as JSON, by a count that never
    overstates: strings' characters and quotes, brackets, commas and colons, a byte for
    each other value; it stops at the first count over `limit`."""
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, list | tuple):
            size += (len(item) + 1 if item else 2) + _items(item, stack)
        elif isinstance(item, dict):
            size += len(item) + 2  # (at most its braces, colons and commas)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, BaseModel):
            stack.append(dict(item))
        elif is_dataclass(item) and not isinstance(item, type):
            stack.append(_fields_of(item))
        else:
            size += 1
        if size > limit:
            return True
    return False


def _items(items: list[Any] | tuple[Any, ...], stack: list[Any]) -> int:
    """The bytes of a list's scalars and strings (each scalar one at least); what nests is
    put on `stack`, for `_larger_than` to count. A list of a million numbers is counted at
    C speed."""
    kinds = set(map(type, items))
    if kinds <= _SCALARS:
        return len(items)
    if kinds == {str}:
        return sum(map(len, items)) + 2 * len(items)
    size = 0
    for inner in items:
        if isinstance(inner, str):
            size += len(inner) + 2
        elif isinstance(inner, _NESTED):
            stack.append(inner)
        elif is_dataclass(inner):
            stack.append(_fields_of(inner))
        else:
            size += 1
    return size


#: What `_larger_than` walks into rather than counts (dataclasses aside).
_NESTED = (list, tuple, dict, BaseModel)
#: Values JSON writes in a byte or more, none of them text.
_SCALARS = frozenset({int, float, bool, type(None)})


def _fields_of(instance: Any) -> dict[str, Any]:
    """A dataclass instance's fields, one level deep, as orjson writes them."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}
