"""Signed links to results, from the local folder store and from a store off this filesystem."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from offload import App, Settings
from offload._links import Presenter
from offload.stores import BlobStore
from offload.stores.blobs import BLOB_REF_PREFIX, check_key
from offload.web import create_app

pytestmark = pytest.mark.anyio


class RemoteBlobs:
    """A BlobStore with no local files, as an object store is (kept in memory here)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        self.objects[check_key(key)] = data
        return BLOB_REF_PREFIX + key

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[check_key(key)]
        except KeyError:
            raise FileNotFoundError(key) from None

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def path_of(self, key: str) -> Path | None:
        return None


async def test_a_signed_link_serves_a_blob_from_a_store_off_this_filesystem(
    settings: Settings,
) -> None:
    store = RemoteBlobs()
    assert isinstance(store, BlobStore)
    app = App("remote-blobs", settings=settings, blobs=store)
    await store.put("reports/r1.pdf", b"%PDF-1.4 remote")
    presenter = Presenter(b"test-secret-of-32-bytes-or-more!", ttl_s=60)
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            link = urlsplit(presenter.link("reports/r1.pdf"))
            ok = await c.get(f"{link.path}?{link.query}")
            assert ok.status_code == 200 and ok.content == b"%PDF-1.4 remote"
            assert ok.headers["content-type"] == "application/pdf"
            assert 'filename="r1.pdf"' in ok.headers["content-disposition"]
            assert ok.headers["x-content-type-options"] == "nosniff"  # never sniffed as a page
            missing = urlsplit(presenter.link("reports/none.pdf"))
            gone = await c.get(f"{missing.path}?{missing.query}")
            assert gone.status_code == 404
            assert gone.headers["content-type"] == "application/problem+json"
            forged = await c.get(f"{link.path}?expires=9999999999&signature=bad")
            assert forged.status_code == 403


@pytest.mark.parametrize(
    "key", ["reports/x\n", "reports/x\r", "\nreports/x", "../x", "a//b", "a/./b", ".hidden", ""]
)
def test_a_key_with_a_line_break_or_a_bad_segment_is_refused(key: str) -> None:
    # `$` matches before a final line break: a key ending in one passed the check before
    with pytest.raises(ValueError, match="invalid blob key"):
        check_key(key)


def test_a_key_of_safe_characters_passes() -> None:
    assert check_key("reports/2026-12/r1.v2.pdf") == "reports/2026-12/r1.v2.pdf"


async def test_a_signed_link_serves_the_range_asked_for_and_answers_others_as_the_api_does(
    settings: Settings,
) -> None:
    # Given a file of ten bytes in the local store, behind a signed link,
    app = App("ranges", settings=settings)
    await app.blobs.put("reports/r.bin", b"0123456789")
    link = urlsplit(Presenter(b"test-secret-of-32-bytes-or-more!", ttl_s=60).link("reports/r.bin"))
    url = f"{link.path}?{link.query}"
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            # HEAD tells its size, and sends nothing,
            head = await c.head(url)
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == "10"
            assert (await c.head(url.replace("signature=", "signature=0"))).status_code == 403
            # a Range within it is sent (206),
            part = await c.get(url, headers={"Range": "bytes=2-4"})
            assert (part.status_code, part.content) == (206, b"234")
            assert part.headers["content-range"] == "bytes 2-4/10"
            # a Range that cannot be read is ignored: the whole file (it was a plain-text 400),
            for unread in ("bytes=abc", "items=0-5", "bytes=5-2"):
                whole = await c.get(url, headers={"Range": unread})
                assert (whole.status_code, whole.content) == (200, b"0123456789"), unread
            # and one past the end is a 416 problem document naming the size (plain text).
            past = await c.get(url, headers={"Range": "bytes=20-30"})
            assert past.status_code == 416
            assert past.headers["content-type"] == "application/problem+json"
            assert past.json()["type"].endswith("/range-not-satisfiable")
            assert past.headers["content-range"] == "bytes */10"
            # Of a Range of several parts, those past the end are left out when another is
            # within the file (it was a 416 for the whole): one part left is sent alone,
            one_left = await c.get(url, headers={"Range": "bytes=2-4, 20-30, -0"})
            assert (one_left.status_code, one_left.content) == (206, b"234")
            assert one_left.headers["content-range"] == "bytes 2-4/10"
            # two left are sent as parts,
            two_left = await c.get(url, headers={"Range": "bytes=0-1,12-,7-8"})
            assert two_left.status_code == 206
            assert two_left.headers["content-type"].startswith("multipart/byteranges")
            assert b"Content-Range: bytes 0-1/10" in two_left.content
            assert b"Content-Range: bytes 7-8/10" in two_left.content
            assert b"Content-Range: bytes 12" not in two_left.content
            # and when none is within it, the answer is the 416 still (parts that cannot be
            # read beside it too: they are ignored).
            for none_within in ("bytes=10-,20-30", "bytes=20-30,", "bytes=20-30,x-y,5"):
                none_left = await c.get(url, headers={"Range": none_within})
                assert none_left.status_code == 416, none_within
                assert none_left.headers["content-range"] == "bytes */10"
            kept = await c.get(url, headers={"Range": "bytes=x-y,2-4,20-"})
            assert (kept.status_code, kept.content) == (206, b"234")
    # Each of those answers is declared.
    answers = api.openapi()["paths"]["/files/{key}"]["get"]["responses"]
    assert {"200", "206", "416"} <= set(answers)
