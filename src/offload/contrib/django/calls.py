"""TaskCall: one call of a Django task as an offload message, its arguments JSON-checked."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import JsonValue

from ...contract import Message

#: The offload kind of each Django queue: `django.tasks.<queue>`.
KIND_PREFIX = "django.tasks."


def kind_of(queue: str) -> str:
    return KIND_PREFIX + queue


class TaskCall(Message):
    """The contract of the `django.tasks.<queue>` kinds: which task, with what."""

    #: The task's module path (`myapp.tasks.send_report`).
    task: str
    args: list[JsonValue] = []
    kwargs: dict[str, JsonValue] = {}
    #: The task's `run_after`, as given (the job's `run_at` moves with retries).
    run_after: datetime | None = None


#: The integers a job's JSON carries: 64 bits, signed or not (larger ones are refused as it
#: is written).
INT_RANGE = (-(2**63), 2**64 - 1)


def json_problem(value: Any) -> str | None:
    """Why `value` cannot travel as JSON unchanged, or None: a type JSON has not (a
    datetime, a model instance, bytes), a float that is not finite, a key not a string.
    Inside a list or dict, the problem's place comes first (`[1]['x']: …`)."""
    found = _problem(value)
    if found is None:
        return None
    place, what = found
    return f"{place}: {what}" if place else what


def _problem(value: Any) -> tuple[str, str] | None:
    """(where inside `value`, what) of the first thing JSON cannot carry, or None."""
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        if INT_RANGE[0] <= value <= INT_RANGE[1]:
            return None
        return "", f"{value} does not fit 64 bits (pass it as a string)"
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", f"{value!r} is not a JSON number")
    items: list[tuple[str, Any]]
    if isinstance(value, list | tuple):
        items = [(f"[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        bad = next((k for k in value if not isinstance(k, str)), None)
        if bad is not None:
            return "", f"key {bad!r} is not a string"
        items = [(f"[{k!r}]", item) for k, item in value.items()]
    else:
        return "", f"a {type(value).__module__}.{type(value).__qualname__} is not JSON"
    for place, item in items:
        found = _problem(item)
        if found is not None:
            return place + found[0], found[1]
    return None


def check_arguments(path: str, args: Any, kwargs: dict[str, Any]) -> None:
    """Raise unless every argument of a call of task `path` travels as JSON unchanged (a
    tuple arrives as a list, as JSON carries it).

    Raises:
        TypeError: names the argument, and what in it JSON cannot carry.
    """
    named = [(f"positional argument {i}", v) for i, v in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for name, value in named:
        found = _problem(value)
        if found is not None:
            raise TypeError(
                f"{path}: {name}{found[0]}: {found[1]}; task arguments travel as JSON "
                "(pass ids, strings and numbers, and load objects in the task)"
            )
