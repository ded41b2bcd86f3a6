"""Load named queries from the per-dialect `.sql` files beside this module."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.M)


@cache
def queries(dialect: str) -> dict[str, str]:
    """The queries of `sql/<dialect>.sql`, keyed by their `-- name:` line."""
    text = resources.files(__package__).joinpath("sql", f"{dialect}.sql").read_text("utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
