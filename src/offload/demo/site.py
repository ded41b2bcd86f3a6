"""What every demo page needs: the site's parts, the signed-in user, and rendering helpers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from ..app import App
from ..web.problems import problem
from .config import DemoConfig
from .data import USERS, DemoUser, dataset_year, money, period_label
from .exports import Exports, JobView
from .mailbox import MailboxStore
from .session import Sessions

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _clock(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%d %b, %H:%M:%S} UTC"


def _templates() -> Jinja2Templates:
    """The pages' templates, compiled once at start-up: they ship with the package, so none
    is checked for changes on each use, and the first click after a start does not pay for
    compiling its row (about 10 ms)."""
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.auto_reload = False
    env.filters["money"] = money
    env.filters["kb"] = lambda n: f"{(n or 0) / 1024:,.0f} KB"
    env.filters["clock"] = _clock
    env.filters["mb"] = lambda n: f"{n / (1 << 20):.3g} MB"
    for name in env.list_templates():
        env.get_template(name)
    return templates


@dataclass(frozen=True, kw_only=True)
class Site:
    """The web half's parts, kept in the Starlette app's state."""

    config: DemoConfig
    app: App
    sessions: Sessions
    exports: Exports
    mailbox: MailboxStore
    catching_mail: bool
    templates: Jinja2Templates

    @classmethod
    def build(cls, **parts: Any) -> Site:
        return cls(templates=_templates(), **parts)

    @functools.cached_property
    def periods(self) -> dict[str, str]:
        """The report periods offered, with their labels: the data set's year, whole and by
        quarter (read once: every page and every export click shows or checks them)."""
        year = dataset_year(self.config.data_path)
        return {p: period_label(p) for p in [str(year), *(f"{year}-Q{q}" for q in range(1, 5))]}


def site_of(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


def current_user(request: Request) -> DemoUser | None:
    return site_of(request).sessions.user(request)


def wants_json(request: Request) -> bool:
    """A fetch from the page's script (it asks for JSON); a plain form post otherwise."""
    return "application/json" in request.headers.get("accept", "")


def to_login(request: Request) -> Response:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def render(
    request: Request,
    name: str,
    user: DemoUser | None,
    status: int = 200,
    **context: Any,
) -> Response:
    """A full page, with what the layout needs (user, CSRF token, mail count, mode)."""
    site = site_of(request)
    base = {
        "user": user,
        "users": list(USERS.values()),
        "csrf": site.sessions.csrf(request) if user else "",
        "inline": site.config.inline,
        "mail_count": site.mailbox.count_for(user.email) if user else 0,
        "catching_mail": site.catching_mail,
        "max_upload_bytes": site.config.max_upload_bytes,
    }
    return site.templates.TemplateResponse(request, name, {**base, **context}, status_code=status)


def fragment(request: Request, job: JobView) -> str:
    """The HTML of one export's row (reports list or thumbnails grid)."""
    template = site_of(request).templates.get_template("_job.html")
    return template.render(job=job)


def failure(
    request: Request,
    status: int,
    detail: str,
    slug: str,
    *,
    page: str,
    user: DemoUser | None,
    **context: Any,
) -> Response:
    """A problem document for the page's script, or the page again with the error shown."""
    if wants_json(request):
        return problem(status, detail, slug=slug, instance=request.url.path)
    return render(request, page, user, status=status, error=detail, **context)


def created(request: Request, job: JobView) -> Response:
    """The answer to starting an export: the new row (202, or 200 when done inline) for the
    page's script; a redirect back to the page for a plain form post."""
    if not wants_json(request):
        return RedirectResponse(request.url.path, status_code=303)
    body = {"id": job.id, "state": job.state, "html": fragment(request, job)}
    headers = {} if job.inline else {"Location": f"/v1/jobs/{job.id}"}
    return JSONResponse(body, status_code=200 if job.final else 202, headers=headers)
