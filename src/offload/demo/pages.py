"""The web half of the demo: server-rendered pages, with offload's API mounted beside them.

This module never imports `handlers`: the web process only enqueues (a test proves it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..settings import Settings
from ..web import create_app
from ..web.app import signing_key
from ..web.auth import TokenAuth
from ..web.origins import LoopbackHostMiddleware, cross_site_reason
from ..web.problems import problem
from . import uploads
from .config import DemoConfig
from .contracts import app as demo_app
from .data import USERS, DemoUser, order_count
from .exports import REPORT_KIND, Exports, QueuedExports
from .mailbox import MailboxStore
from .session import SessionAuth, Sessions
from .site import (
    STATIC,
    Site,
    created,
    current_user,
    failure,
    fragment,
    render,
    site_of,
    to_login,
    wants_json,
)


async def home(request: Request) -> Response:
    target = "/reports" if current_user(request) else "/login"
    return RedirectResponse(target, status_code=303)


async def login_page(request: Request) -> Response:
    return render(request, "login.html", current_user(request), next=_next(request))


def _next(request: Request) -> str:
    target = request.query_params.get("next", "/reports")
    # Only paths on this site: never an open redirect.
    return target if target.startswith("/") and not target.startswith("//") else "/reports"


def _from_another_site(request: Request) -> Response | None:
    """A 403 for a sign-in or sign-out another site's page posted (no CSRF token exists
    before one signs in: its origin is what tells), else None."""
    why = cross_site_reason(request.headers, request.url.scheme, request.headers.get("host", ""))
    if why is None:
        return None
    return problem(403, f"refused {why}: sign in here", slug="cross-site-request")


async def login(request: Request) -> Response:
    if refused := _from_another_site(request):
        return refused
    form = await request.form()
    user_id = str(form.get("user", ""))
    if user_id not in USERS:
        return render(request, "login.html", None, status=400, error="Pick one of the demo users.")
    target = str(form.get("next") or "/reports")
    if not target.startswith("/") or target.startswith("//"):
        target = "/reports"
    response = RedirectResponse(target, status_code=303)
    site_of(request).sessions.sign_in(response, user_id)
    return response


async def logout(request: Request) -> Response:
    if refused := _from_another_site(request):
        return refused
    response = RedirectResponse("/login", status_code=303)
    Sessions.sign_out(response)
    return response


async def _reports(site: Site, user: DemoUser) -> dict[str, Any]:
    """What the reports page shows besides the layout."""
    return {
        "active": "reports",
        "jobs": await site.exports.list(user.id, REPORT_KIND),
        "periods": list(site.periods.items()),
        "orders": order_count(site.config.data_path, user.id),
    }


async def reports_page(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        return to_login(request)
    return render(request, "reports.html", user, **await _reports(site_of(request), user))


async def export_report(request: Request) -> Response:
    """ "Export my report": enqueue the job and answer at once (inline mode: do the work)."""
    site = site_of(request)
    user = current_user(request)
    if user is None:
        return problem(401, "sign in first", slug="signed-out", instance=request.url.path)
    form = await request.form()
    token = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
    if not site.sessions.check_csrf(request, token):
        return problem(403, "the form expired; reload the page", slug="bad-csrf-token")
    period = str(form.get("period") or next(iter(site.periods)))
    if period not in site.periods:
        context = {} if wants_json(request) else await _reports(site, user)
        detail = f"no report period {period!r}"
        return failure(
            request, 422, detail, "invalid-period", page="reports.html", user=user, **context
        )
    job = await site.exports.export_report(user, period)
    return created(request, job)


async def job_row(request: Request) -> Response:
    """One export's row, re-rendered when its events say it has finished."""
    user = current_user(request)
    if user is None:
        return problem(401, "sign in first", slug="signed-out", instance=request.url.path)
    job = await site_of(request).exports.get(user.id, request.path_params["job_id"])
    if job is None:
        return problem(404, "no such export", slug="job-not-found", instance=request.url.path)
    return HTMLResponse(fragment(request, job))


async def mailbox_page(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        return to_login(request)
    site = site_of(request)
    messages = site.mailbox.for_recipient(user.email)
    if request.query_params.get("fragment"):
        template = site.templates.get_template("_mail.html")
        return HTMLResponse(template.render(messages=messages))
    smtp = urlsplit(site.config.smtp_url or "")
    return render(
        request,
        "mailbox.html",
        user,
        active="mailbox",
        messages=messages,
        smtp_host=f"{smtp.hostname}:{smtp.port or 25}",
    )


def _exports(config: DemoConfig, api: Any) -> Exports:
    if not config.inline:
        return QueuedExports(demo_app, api.state.present)
    from .inline import InlineExports  # rendering code loads only in inline mode

    return InlineExports(config, demo_app.blobs, api.state.present)


#: Why the demo answers loopback names only (the 421's detail), without API tokens.
DEMO_HOSTS = "the demo serves this machine alone (its users have no passwords)"


def create_demo_app(config: DemoConfig, *, catching_mail: bool = True) -> Starlette:
    """The demo's web tier: its pages, static files, and offload's API (`create_app`).

    Args:
        config: the demo's settings (its folder holds the jobs database and blobs).
        catching_mail: the local SMTP catcher fills the mailbox (not so with real SMTP).
    """
    settings = Settings.from_env(url=config.jobs_url, blobs_url=config.blobs_url)
    demo_app.configure(settings)
    sessions = Sessions(signing_key(settings))
    # The browser follows its own jobs through the API with its session cookie.
    api = create_app(demo_app, auth=SessionAuth(sessions, TokenAuth(settings)))
    site = Site.build(
        config=config,
        app=demo_app,
        sessions=sessions,
        exports=_exports(config, api),
        mailbox=MailboxStore(config.mailbox_path),
        catching_mail=catching_mail,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_web: Starlette) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api):  # opens the backend, starts the hub
            yield

    web = Starlette(
        routes=[
            Route("/", home),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/reports", reports_page, methods=["GET"]),
            Route("/reports", export_report, methods=["POST"]),
            Route("/thumbnails", uploads.thumbnails_page, methods=["GET"]),
            Route("/thumbnails", uploads.upload, methods=["POST"]),
            Route("/rows/{job_id}", job_row),
            Route("/mailbox", mailbox_page),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Mount("", app=api),
        ],
        lifespan=lifespan,
        # Without API tokens its users have no passwords: this machine's browser alone may
        # reach it, not a page whose name was rebound to 127.0.0.1 (its Host gives it away).
        middleware=[Middleware(LoopbackHostMiddleware, why=DEMO_HOSTS)]
        if settings.dev_mode
        else [],
    )
    web.state.site = site
    return web
