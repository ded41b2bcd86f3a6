"""A value as a job's record stores it: a handler's result, a `ctx.once` step's value."""

from __future__ import annotations

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


def jsonable(value: Any) -> Any:
    """A value as a job's record stores it (a handler's result, a step's value): JSON, a
    pydantic model (alone or inside lists and dicts) as its JSON.

    Raises:
        TypeError: a value JSON cannot carry (or an integer past 64 bits).
        ValueError: a pydantic model that cannot be dumped as JSON.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
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
