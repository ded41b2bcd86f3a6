"""The RFC 9457 problem document as plain data: the shape of every HTTP error offload gives,
the web tier's and a worker's metrics endpoint's (which imports no web tier)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

#: Where every problem `type` URI begins; the problem's slug follows.
PROBLEM_TYPE_BASE = "https://offload.dev/problems/"
#: The media type of a problem document.
PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_document(status: int, detail: str, *, slug: str | None = None) -> dict[str, Any]:
    """The members every problem document has: `type` (`PROBLEM_TYPE_BASE` and `slug`, by
    default the status's phrase in kebab case), `title` (the phrase), `status`, `detail`."""
    phrase = HTTPStatus(status).phrase
    return {
        "type": PROBLEM_TYPE_BASE + (slug or phrase.lower().replace(" ", "-").replace("'", "")),
        "title": phrase,
        "status": status,
        "detail": detail,
    }
