"""The thumbnails page and its image upload: check it, store the original, enqueue the job.

An upload that is too large (413), not an image (415) or missing (400) is refused before
anything is stored or enqueued.
"""

from __future__ import annotations

import asyncio
import re

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from .._ids import uuid7
from ..web.problems import problem
from .exports import THUMBNAILS_KIND
from .images import ImageInfo, NotAnImage, inspect_image
from .site import (
    Site,
    created,
    current_user,
    failure,
    render,
    site_of,
    to_login,
    wants_json,
)

#: Room for the multipart framing around the file (bytes).
FORM_OVERHEAD_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]+")


class TooLarge(Exception):
    """The request body is over the upload limit."""


async def thumbnails_page(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        return to_login(request)
    jobs = await site_of(request).exports.list(user.id, THUMBNAILS_KIND)
    return render(request, "thumbnails.html", user, active="thumbnails", jobs=jobs)


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (or says it will)."""
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _form_request(request: Request, body: bytes) -> Request:
    """A request that replays an already-read body, for Starlette's multipart parser."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def _display_name(name: str | None) -> str:
    name = _UNSAFE.sub("_", (name or "image").rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    return name.strip()[:120] or "image"


class Refused(Exception):
    """The upload cannot be used: answered with `status` and a message for the user."""

    def __init__(self, status: int, detail: str, slug: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.slug = status, detail, slug


def _too_large(limit: int) -> Refused:
    detail = f"The file is too large: images up to {limit / (1 << 20):.3g} MB."
    return Refused(413, detail, "too-large")


async def _read_image(request: Request, site: Site) -> tuple[str, bytes, ImageInfo]:
    """The uploaded file's display name, bytes and image header, read within the limit.

    Raises:
        Refused: too large, unreadable, a stale form, no file, or not an image.
    """
    limit = site.config.max_upload_bytes
    try:
        body = await _read_capped(request, limit + FORM_OVERHEAD_BYTES)
    except TooLarge:
        raise _too_large(limit) from None
    try:
        form = await _form_request(request, body).form(max_files=1, max_fields=10)
    except HTTPException as exc:
        raise Refused(400, f"The upload could not be read: {exc.detail}", "bad-upload") from None
    try:
        token = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
        if not site.sessions.check_csrf(request, token):
            raise Refused(403, "The form expired: reload the page.", "bad-csrf-token")
        file = form.get("image")
        if not isinstance(file, UploadFile) or not file.filename:
            raise Refused(400, "Choose an image file to upload.", "no-file")
        name, data = _display_name(file.filename), await file.read()
    finally:
        await form.close()
    if len(data) > limit:
        raise _too_large(limit)
    try:
        info = await asyncio.to_thread(inspect_image, data)
    except NotAnImage as exc:
        raise Refused(415, f"“{name}” is not an image we can use: {exc}.", "not-an-image") from None
    return name, data, info


async def upload(request: Request) -> Response:
    """Check the upload, store the original in the blob store, enqueue `demo.thumbnails`."""
    site = site_of(request)
    user = current_user(request)
    if user is None:
        return problem(401, "sign in first", slug="signed-out", instance=request.url.path)
    try:
        name, data, info = await _read_image(request, site)
    except Refused as refused:
        jobs = [] if wants_json(request) else await site.exports.list(user.id, THUMBNAILS_KIND)
        return failure(
            request, refused.status, refused.detail, refused.slug,
            page="thumbnails.html", user=user, active="thumbnails", jobs=jobs,
        )  # fmt: skip
    key = f"uploads/{user.id}/{uuid7()}/original.{info.extension}"
    await site.app.blobs.put(key, data)
    try:
        job = await site.exports.make_thumbnails(user, key, name)
    except BaseException:
        await site.app.blobs.delete(key)  # nothing enqueued: leave nothing behind either
        raise
    return created(request, job)
