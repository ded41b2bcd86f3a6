"""What every dashboard page and action needs: the templates, the operator, the CSRF
token, read-only mode, and the guards of a form POST."""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ...app import App
from ..origins import cross_site_reason
from ..present import root_of
from ..problems import Problem
from .csrf import CSRF_FIELD, csrf_token, csrf_valid

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
#: Where the dashboard is served, below the web tier's mount path.
DASHBOARD_PATH = "/dashboard"
#: Every page's headers: never cached; its own origin's script, styles and streams only
#: (the browser enforces that nothing comes from elsewhere); never framed by another page
#: (a framed page could be clicked through its actions); its type never sniffed; its
#: address not sent to other sites.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # a page's address (a job id, a filter) stays here
}
#: The longest form body a dashboard action reads (bytes): a filter and a token.
MAX_FORM_BYTES = 16 * 1024


def clock(moment: float | datetime | None) -> str:
    """A time (epoch seconds or aware datetime) as the dashboard shows it: UTC, to the
    second."""
    if moment is None:
        return "–"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def age(seconds: float | None) -> str:
    """A duration, short: `12 s`, `4 min`, `3 h`, `2 d`."""
    if seconds is None:
        return "–"
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["clock"] = clock
    env.filters["age"] = age
    # A name as one segment of a path: its `/` too (`urlencode` keeps it, and a queue
    # `eu/../billing` posted to billing's action once the browser resolved the dots)
    env.filters["segment"] = functools.partial(quote, safe="")
    return env


#: One environment per process: templates compile once.
ENVIRONMENT = _environment()


def app_of(request: Request) -> App:
    app: App = request.app.state.offload
    return app


def base_of(request: Request) -> str:
    """The dashboard's path under the web tier's mount path (links start with it)."""
    return root_of(request) + DASHBOARD_PATH


def readonly(request: Request) -> bool:
    return bool(app_of(request).settings.dashboard_readonly)


def operator(request: Request) -> str:
    principal: str = request.app.state.auth.principal(request)
    return principal


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page (or a fragment) with what the layout needs."""
    secret = request.app.state.present.secret
    base = {
        "base": base_of(request),
        "readonly": readonly(request),
        "operator": operator(request),
        "csrf": csrf_token(secret, operator(request), time.time()),
        "csrf_field": CSRF_FIELD,
        "notice": _notice(request),
        "app_name": app_of(request).name,
    }
    html = ENVIRONMENT.get_template(name).render(**base, **context)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _notice_mac(request: Request, notice: str) -> str:
    """What vouches that this operator's action wrote `notice` (not a link someone sent)."""
    secret: bytes = request.app.state.present.secret
    said = f"dashboard-notice\0{operator(request)}\0{notice}".encode()
    return hmac.new(secret, said, hashlib.sha256).hexdigest()[:32]


def _notice(request: Request) -> str:
    """The notice an action left for its page, or "" for one this dashboard did not sign
    (a crafted link shows nothing)."""
    notice = request.query_params.get("notice", "")[:500]
    mac = request.query_params.get("nmac", "")
    if not notice or not hmac.compare_digest(mac.encode(), _notice_mac(request, notice).encode()):
        return ""
    return notice


def back_to(request: Request, path: str, notice: str = "") -> Response:
    """After an action: see the page it was made on (303), with what it did (signed, so
    only the dashboard's own actions put words on its pages)."""
    query = ""
    if notice:
        notice = notice[:500]
        signed = {"notice": notice, "nmac": _notice_mac(request, notice)}
        query = ("&" if "?" in path else "?") + urlencode(signed)
    return RedirectResponse(base_of(request) + path + query, status_code=303)


async def form_of(request: Request) -> dict[str, str]:
    """A dashboard action's form, checked: not in read-only mode, from a page of this
    site, with this operator's CSRF token.

    Raises:
        Problem: 403 in read-only mode, for a cross-site request or a missing, wrong or
            expired token (nothing is changed); 415 for a body that is no form.
    """
    if readonly(request):
        raise Problem(403, "the dashboard is read-only", slug="dashboard-read-only")
    # Whatever the auth mode (bearer tokens too: a proxy may add them), a page of another
    # site never acts here.
    why = cross_site_reason(request.headers, request.url.scheme, request.headers.get("host", ""))
    if why is not None:
        raise Problem(403, f"refused {why}", slug="cross-site-request")
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    body = await request.body()
    if body and media != "application/x-www-form-urlencoded":
        raise Problem(415, "send the dashboard's form", slug="unsupported-media-type")
    if len(body) > MAX_FORM_BYTES:
        raise Problem(413, "the form is too large", slug="body-too-large")
    try:
        form = dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=50))
    except (UnicodeDecodeError, ValueError):
        raise Problem(
            415, "the form is not URL-encoded text", slug="unsupported-media-type"
        ) from None
    token = request.headers.get("x-csrf-token") or form.get(CSRF_FIELD, "")
    keys = request.app.state.present.keys
    if not csrf_valid(keys, operator(request), token, time.time()):
        raise Problem(
            403,
            "the form's CSRF token is missing, wrong or expired: reload the page",
            slug="bad-csrf-token",
        )
    return form
