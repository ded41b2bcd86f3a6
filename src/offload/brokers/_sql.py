"""Load the named queries a backend package keeps beside its code, in `queries.sql`."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.M)


@cache
def queries(package: str | None) -> dict[str, str]:
    """The queries of `package`'s `queries.sql`, keyed by their `-- name:` line."""
    assert package, "call with the backend module's __package__"
    text = resources.files(package).joinpath("queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
