"""Rotating the signing key (OFFLOAD_SECRET_KEY): the key it replaces, named in
OFFLOAD_SECRET_KEY_FALLBACKS, still vouches for what it signed (download links already sent
in emails and webhooks, stream tickets, dashboard forms open in a browser) while everything
new is signed with the new key; once a fallback is removed, what it signed is refused."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from offload import App, Settings
from offload._links import Presenter
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
    env = {
        "OFFLOAD_SECRET_KEY": NEW.decode(),
        "OFFLOAD_SECRET_KEY_FALLBACKS": f" {OLD.decode()} ,, {'x' * 40}",
    }
    assert Settings.from_env(env).secret_key_fallbacks == (OLD, b"x" * 40)
    assert Settings.from_env({}).secret_key_fallbacks == ()
    short = {**env, "OFFLOAD_SECRET_KEY_FALLBACKS": f"{OLD.decode()},short"}
    with pytest.raises(ConfigurationError, match="a key in OFFLOAD_SECRET_KEY_FALLBACKS is 5"):
        Settings.from_env(short)
