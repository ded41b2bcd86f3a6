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
from .images import NotAnImage, inspect_image
from .site import created, current_user, failure, render, site_of, to_login

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


async def upload(request: Request) -> Response:
    """Check the upload, store the original in the blob store, enqueue `demo.thumbnails`."""
    site = site_of(request)
    user = current_user(request)
    if user is None:
        return problem(401, "sign in first", slug="signed-out", instance=request.url.path)
    limit = site.config.max_upload_bytes
    megabytes = f"{limit / (1 << 20):.3g} MB"

    async def refuse(status: int, detail: str, slug: str) -> Response:
        jobs = (
            []
            if "json" in request.headers.get("accept", "")
            else (await site.exports.list(user.id, THUMBNAILS_KIND))
        )
        return failure(
            request,
            status,
            detail,
            slug,
            page="thumbnails.html",
            user=user,
            active="thumbnails",
            jobs=jobs,
        )

    try:
        body = await _read_capped(request, limit + FORM_OVERHEAD_BYTES)
    except TooLarge:
        return await refuse(413, f"The file is too large: images up to {megabytes}.", "too-large")
    try:
        form = await _form_request(request, body).form(max_files=1, max_fields=10)
    except HTTPException as exc:
        return await refuse(400, f"The upload could not be read: {exc.detail}", "bad-upload")
    try:
        token = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
        if not site.sessions.check_csrf(request, token):
            return problem(403, "the form expired; reload the page", slug="bad-csrf-token")
        file = form.get("image")
        if not isinstance(file, UploadFile) or not file.filename:
            return await refuse(400, "Choose an image file to upload.", "no-file")
        name = _display_name(file.filename)
        data = await file.read()
    finally:
        await form.close()
    if len(data) > limit:
        return await refuse(413, f"The file is too large: images up to {megabytes}.", "too-large")
    try:
        info = await asyncio.to_thread(inspect_image, data)
    except NotAnImage as exc:
        return await refuse(415, f"“{name}” is not an image we can use: {exc}.", "not-an-image")
    key = f"uploads/{user.id}/{uuid7()}/original.{info.extension}"
    await site.app.blobs.put(key, data)
    try:
        job = await site.exports.make_thumbnails(user, key, name)
    except BaseException:
        await site.app.blobs.delete(key)  # nothing enqueued: leave nothing behind either
        raise
    return created(request, job)
