"""Rotating the signing key (OFFLOAD_SECRET_KEY): the key it replaces, named in
OFFLOAD_SECRET_KEY_FALLBACKS, still vouches for what it signed (download links already sent
in emails and webhooks, stream tickets, dashboard forms open in a browser) while everything
new is signed with the new key; once a fallback is removed, what it signed is refused."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from offload import App, Settings
from offload._links import Presenter, signing_key
from offload._signing import check_signed
from offload.errors import ConfigurationError
from offload.web import create_app
from offload.web.dashboard.csrf import csrf_token, csrf_valid
from offload.web.feeds import make_ticket

pytestmark = pytest.mark.anyio
OLD = b"the-old-key-of-32-bytes-or-more!"
NEW = b"the-new-key-of-32-bytes-or-more!"
TOKENS = {"tok-alice": "alice"}


async def answers(settings: Settings, key: str, ticket: str) -> tuple[int, int, str]:
    """What a web tier of `settings` answers to a download link and a stream ticket signed
    with the old key, and a link it signs itself now."""
    app = App("rotation", settings=settings.with_(api_tokens=TOKENS))
    link = urlsplit(Presenter(OLD, ttl_s=60).link(key))
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            download = await c.get(f"{link.path}?{link.query}")
            # (no such job: a 404 once the ticket is taken, a 401 where it is not)
            events = await c.get(f"/v1/jobs/{uuid.uuid4()}/events", params={"ticket": ticket})
            return download.status_code, events.status_code, api.state.present.link(key)


async def test_what_the_old_key_signed_is_taken_while_it_is_a_fallback(
    settings: Settings,
) -> None:
    # Given a file, a link to it and a ticket, both signed with the key in use until now
    app = App("rotation", settings=settings)
    await app.blobs.put("reports/r1.pdf", b"%PDF-1.4 r1")
    ticket = make_ticket(OLD, "alice", int(time.time()) + 60)
    # When the web tier signs with a new key and keeps the old one as a fallback
    rotated = settings.with_(secret_key=NEW, secret_key_fallbacks=(OLD,))
    download, events, fresh = await answers(rotated, "reports/r1.pdf", ticket)
    # Then the old link and ticket are taken, and a new link is signed with the new key only
    assert (download, events) == (200, 404)
    query = dict(part.split("=", 1) for part in urlsplit(fresh).query.split("&"))
    path = urlsplit(fresh).path
    assert check_signed(NEW, path, query["expires"], query["signature"], time.time())
    assert not check_signed(OLD, path, query["expires"], query["signature"], time.time())
    # And once the fallback is removed, what the old key signed is refused
    retired = settings.with_(secret_key=NEW, secret_key_fallbacks=())
    download, events, _ = await answers(retired, "reports/r1.pdf", ticket)
    assert (download, events) == (403, 401)


def test_a_dashboard_form_rendered_before_the_rotation_is_taken() -> None:
    token = csrf_token(OLD, "ops", time.time())
    assert csrf_valid((NEW, OLD), "ops", token, time.time())
    assert not csrf_valid((NEW,), "ops", token, time.time())
    assert not csrf_valid((NEW, OLD), "someone-else", token, time.time())


def test_the_fallbacks_are_read_from_the_environment_and_checked() -> None:
    env = {"OFFLOAD_SECRET_KEY": NEW.decode(), "OFFLOAD_SECRET_KEY_FALLBACKS": OLD.decode()}
    assert Settings.from_env(env).secret_key_fallbacks == (OLD,)
    assert Settings.from_env({}).secret_key_fallbacks == ()
    # A key taken with a line end (as OFFLOAD_SECRET_KEY is taken as written) and a list
    # with spaces after its commas: each item is taken as written and without them.
    spaced = {**env, "OFFLOAD_SECRET_KEY_FALLBACKS": f"{OLD.decode()}\n,, {'x' * 40}"}
    assert Settings.from_env(spaced).secret_key_fallbacks == (
        OLD + b"\n",
        OLD,
        b" " + b"x" * 40,
        b"x" * 40,
    )
    short = {**env, "OFFLOAD_SECRET_KEY_FALLBACKS": f"{OLD.decode()},short"}
    with pytest.raises(ConfigurationError, match="a key in OFFLOAD_SECRET_KEY_FALLBACKS is 5"):
        Settings.from_env(short)
    for bad in ("hex:zz", "hex:", "hex: "):  # (hex: alone: a template's missing file)
        with pytest.raises(ConfigurationError, match="FALLBACKS: a key written hex:"):
            Settings.from_env({**env, "OFFLOAD_SECRET_KEY_FALLBACKS": bad})
        with pytest.raises(ConfigurationError, match="OFFLOAD_SECRET_KEY: a key written hex:"):
            Settings.from_env({"OFFLOAD_SECRET_KEY": bad})


def test_the_key_file_beside_the_blobs_is_named_in_hex(tmp_path: Path) -> None:
    # The key made beside the blobs (no OFFLOAD_SECRET_KEY) is 32 random bytes, kept as hex:
    # moving to a key of one's own, it is named hex:<the file's text> as a fallback (its
    # bytes are no text an environment variable can hold).
    settings = Settings(blobs_url=str(tmp_path / "blobs"))
    made = signing_key(settings)
    text = (tmp_path / "blobs" / ".signing-key").read_text().strip()
    env = {"OFFLOAD_SECRET_KEY": NEW.decode(), "OFFLOAD_SECRET_KEY_FALLBACKS": f"hex:{text}"}
    assert Settings.from_env(env).secret_key_fallbacks == (made,)
    assert Settings.from_env({"OFFLOAD_SECRET_KEY": f"hex:{text}"}).secret_key == made


def test_a_key_set_in_code_as_text_is_refused(settings: Settings) -> None:
    # (a str was a 500 at the first ticket or link signed)
    app = App("rotation", settings=settings.with_(secret_key=NEW.decode()))
    with pytest.raises(ConfigurationError, match="secret_key must be bytes"):
        create_app(app)


@pytest.mark.parametrize("fallbacks", [(b"short",), ("x" * 40,), [OLD]])
def test_fallbacks_set_in_code_are_checked_too(settings: Settings, fallbacks: Any) -> None:
    # (a str was a 500 at the first link that failed the key in use)
    app = App("rotation", settings=settings.with_(secret_key_fallbacks=fallbacks))
    with pytest.raises(ConfigurationError, match=r"OFFLOAD_SECRET_KEY_FALLBACKS|tuple of bytes"):
        create_app(app)
