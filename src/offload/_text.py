"""A handler's text as offload stores and logs it, whatever the handler made of it."""

from __future__ import annotations

import re

#: The most of a handler's error message its job's record and a log line carry.
MESSAGE_CHARS = 2000


def storable(text: str) -> str:
    """`text` as every engine stores it alike: a NUL character written `\\x00` (PostgreSQL's
    jsonb refuses NUL, and with it the whole batch of outcomes it is in), and a character
    UTF-8 cannot carry (a lone surrogate: a file name decoded with `surrogateescape`)
    written as its escape, `\\udce9` (JSON encoders refuse it, and failed the whole batch)."""
    text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def has_nul(dumped: bytes) -> bool:
    """Whether JSON text (orjson's) holds a NUL character, which PostgreSQL's jsonb refuses
    (and with it the whole batch it is in) and the other engines keep: `\\u0000` not itself
    escaped (a string of the six characters `\\u0000` is written `\\\\u0000`)."""
    return b"\\u0000" in dumped and _NUL.search(dumped) is not None


#: A string in JSON text, quotes and escapes and all: a pattern that looks for numbers in
#: JSON text matches this first, so that digits inside a string are skipped as a whole.
JSON_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'

#: A NUL character in JSON text (`\u0000` not itself escaped).
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def said(exc: BaseException) -> str:
    """`str(exc)`, or what stands for it when that raises (an exception's own `__str__`
    may fail: it must not fail the report of its job)."""
    try:
        return str(exc)
    except Exception as failed:
        return f"<{type(exc).__name__}: its message could not be read ({type(failed).__name__})>"


def logged(exc: BaseException) -> str:
    """An error's message as a log line carries it: readable, storable, and cut after
    `MESSAGE_CHARS` (a handler's 10 MB message made a 10 MB line for each attempt)."""
    text = storable(said(exc))
    return text if len(text) <= MESSAGE_CHARS else f"{text[:MESSAGE_CHARS]}… ({len(text):,} chars)"
