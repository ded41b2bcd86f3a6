"""Whether offload's URL and a Django database are one PostgreSQL database *and* schema.

Both can name the same database yet differ in `search_path` (libpq's `options`, e.g.
`-c search_path=offload_schema`, as the Backends section recommends for offload's tables):
a job written on Django's connection would then miss offload's tables. Anything this
cannot compare counts as different, so the caller takes the safe path (after the commit).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

#: libpq parameters that could point a connection elsewhere than host, port and name say.
_RETARGETING = {"host", "hostaddr", "port", "dbname", "service", "servicefile"}


class Incomparable(ValueError):
    """A connection setting this module cannot read."""


def server_settings(options: str | None) -> dict[str, str]:
    """The server settings libpq's `options` string sets (`-c name=value`, `-cname=value`,
    `--name=value`; backslash escapes a space), names lowercased with `-` as `_`, and
    `search_path` normalised (no blanks around commas, unquoted names lowercased).

    Raises:
        Incomparable: a token that is none of those.
    """
    tokens, i = _tokens(options or ""), 0
    found: dict[str, str] = {}
    while i < len(tokens):
        token = tokens[i]
        if token == "-c" and i + 1 < len(tokens):
            setting, i = tokens[i + 1], i + 2
        elif token.startswith("-c") and token != "-c":
            setting, i = token[2:], i + 1
        elif token.startswith("--") and "=" in token:
            setting, i = token[2:], i + 1
        else:
            raise Incomparable(f"cannot read the connection option {token!r}")
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise Incomparable(f"cannot read the connection option {setting!r}")
        name = name.strip().lower().replace("-", "_")
        found[name] = _search_path(value) if name == "search_path" else value
    return found


def _tokens(text: str) -> list[str]:
    """`text` split at blanks that no backslash escapes, escapes removed (libpq's rule)."""
    tokens, current, escaped, started = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = started = True
        elif ch.isspace():
            if started:
                tokens.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if escaped:
        raise Incomparable("the connection options end in a lone backslash")
    if started:
        tokens.append("".join(current))
    return tokens


def _search_path(value: str) -> str:
    names = (part.strip() for part in value.split(","))
    return ",".join(n if n.startswith('"') else n.lower() for n in names)


def same_database(url: str, given: dict[str, Any]) -> bool:
    """Whether PostgreSQL `url` (offload's) and Django's database settings `given` (its
    `settings_dict`) reach the same database with the same server settings (search_path
    above all): host, port, name, role and the `options` of both. False when unsure."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        return False
    query = parse_qs(parts.query)
    django_options = given.get("OPTIONS") or {}
    if _RETARGETING & (set(query) | set(django_options)):
        return False
    try:
        ours_port, theirs_port = parts.port or 5432, int(given.get("PORT") or 5432)
        ours_set = server_settings(" ".join(query.get("options", [])))
        theirs_set = server_settings(django_options.get("options"))
    except (Incomparable, ValueError, TypeError):
        return False
    # The role too: its own default search_path ("$user", ALTER ROLE … SET) may differ.
    ours = (parts.hostname or "localhost", ours_port, parts.path.lstrip("/"), parts.username)
    theirs = (given.get("HOST") or "localhost", theirs_port, given.get("NAME"), given.get("USER"))
    return (ours, ours_set) == (_or_none(theirs), theirs_set)


def _or_none(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Empty settings (Django's "" for unset) as None, as urlsplit gives them."""
    return tuple(v if v != "" else None for v in values)
