"""Jobs: what a host's own FastAPI route gets from `Depends(offload_jobs)`: the App, the
caller's principal as the web tier mounted beside it finds it, and 202 answers that point
at that web tier's status API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount

from .._links import Presenter
from ..app import App
from ..contract import JobRow, Message, UnstorableMessage
from ..errors import ConfigurationError
from ..job import Job
from ..notify.targets import refused_delivery_options
from .auth import Auth
from .origins import check_same_site
from .problems import JSONResponse, Problem
from .submit import DEFAULT_RETRY_AFTER_S, check_repeat, options_problem


@dataclass(frozen=True, slots=True)
class Jobs:
    """The offload side of one request to a host's own route.

    Attributes:
        app: the App of the mounted web tier.
        principal: who is calling, by the web tier's own rules (its auth hook, or the
            bearer tokens of OFFLOAD_API_TOKENS, or `local` in development mode).
        root: the path the web tier is mounted at (`/jobs`): its status API is there.
        present: how that web tier shows records there (signed links, no tracebacks).
        kinds: the kinds the caller's token may submit (`token=principal[kind|kind]`);
            None: every kind.
    """

    app: App
    principal: str
    root: str
    present: Presenter
    kinds: frozenset[str] | None = None

    async def enqueue(
        self,
        message: Message,
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        notify_email: str | None = None,
    ) -> Job:
        """`App.enqueue`, owned by the caller (only they see the job in the status API).

        Raises:
            Problem: 403 for a kind the caller's token may not submit; 422 for a
                `callback_url` or `notify_email` the web tier would refuse (not a URL or
                an address, or a private host), as its submit route does.
                422 too for a message no engine stores (`UnstorableMessage`: a NUL, a NaN,
                an integer past 64 bits). 409 (`idempotency-key-reused`) for an
                `idempotency_key` that named another request's job (another kind, or
                another message), as the submit route answers.
            ValueError, TypeError: an option `App.enqueue` refuses.
        """
        kind = self.app.spec_of(type(message)).kind if self.kinds is not None else ""
        if self.kinds is not None and kind not in self.kinds:
            raise Problem(403, f"this token may not submit {kind!r} jobs", slug="kind-not-allowed")
        allow = self.app.settings.webhook_allow_private
        if refused := refused_delivery_options(callback_url, notify_email, allow_private=allow):
            raise options_problem([{"loc": [name], "msg": msg} for name, msg in refused.items()])
        try:
            job = await self.app.enqueue(
                message,
                priority=priority,
                delay=delay,
                run_at=run_at,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                notify_email=notify_email,
                owner=self.principal,
            )
        except UnstorableMessage as exc:  # as the submit route answers it
            raise Problem(422, str(exc), slug="invalid-payload") from None
        if idempotency_key is not None and not (job.created or job.unique_repeat):
            # The key named a job: of this request, or of another one (a 409).
            row = await self._own(job.id)
            await check_repeat(
                self.app, self.app.spec_of(type(message)), row, message, idempotency_key
            )
        return job

    def location(self, job: Job | str) -> str:
        """The job's status route in the mounted API (`/jobs/v1/jobs/{id}`)."""
        job_id = job if isinstance(job, str) else job.id
        return f"{self.root}/v1/jobs/{job_id}"

    async def accepted(self, job: Job) -> JSONResponse:
        """The answer the web tier's own submit route gives: `202 Accepted` with
        `Location` (the status route), `Retry-After` and the status record as the body,
        read from the job's row as that route reads it (without `deliveries`); with
        `Idempotent-Replayed: true` for a job an idempotency key named, and `200` without
        `Retry-After` for the job a unique key named (`Job.unique_repeat`)."""
        headers = {"Location": self.location(job)}
        if not job.unique_repeat:
            headers["Retry-After"] = str(DEFAULT_RETRY_AFTER_S)
            if not job.created:
                headers["Idempotent-Replayed"] = "true"
        return JSONResponse(
            self.present.row(await self._own(job.id)),
            status_code=200 if job.unique_repeat else 202,
            headers=headers,
        )

    async def status(self, job: Job | str) -> dict[str, Any]:
        """The caller's job's status record, as `GET {root}/v1/jobs/{id}` shows it.

        Raises:
            Problem: 404 for a job that is not the caller's (or none).
        """
        job_id = job if isinstance(job, str) else job.id
        await self._own(job_id)
        return self.present.record(await self.app.status(job_id))

    async def _own(self, job_id: str) -> JobRow:
        """The caller's job's row.

        Raises:
            Problem: 404 for a job that is not the caller's (or none).
        """
        row = await self.app.get(job_id, owner=self.principal)
        if row is None:
            raise Problem(404, f"no job {job_id!r}", slug="job-not-found")
        return row


class OffloadJobs:
    """A FastAPI dependency giving a route `Jobs`: `Depends(offload_jobs)`.

    It asks the web tier mounted in the route's app (`api.mount(path, create_app(app))`)
    who is calling, with that tier's auth hook or tokens; a caller it would refuse gets the
    same 401, and in development mode (or behind an auth hook) a cross-site write the
    same 403. Install `problem_details(api)` so those come as problem documents.

    Args:
        web: the web tier to use (what `create_app` returned); None: the one mounted in
            the request's app (it must be the only one).
    """

    def __init__(self, web: FastAPI | None = None) -> None:
        self.web = web

    async def __call__(self, request: Request) -> Jobs:
        web, root = self._mounted(request)
        auth: Auth = web.state.auth
        check_same_site(request, auth)
        await web.state.runtime.ensure()  # opened on first use, as the mounted API is
        await auth.authenticate(request)
        principal = auth.principal(request)
        kinds = auth.token_auth.kinds_of(request) if auth.hook is None else None
        return Jobs(web.state.offload, principal, root, web.state.present.at(root), kinds)

    def _mounted(self, request: Request) -> tuple[FastAPI, str]:
        """The web tier and the path clients reach it at: one mounted in the request's app,
        or else one mounted anywhere in the outermost app (inside an app mounted in it, or
        beside the route's own: `api.mount("/v2", v2)`).

        Raises:
            ConfigurationError: none is mounted there (or several, with no `web` given).
        """
        here = request.scope.get("root_path", "").rstrip("/")
        found = [(web, here + path) for web, path in self._tiers(request.app.routes, deep=False)]
        top = request.scope.get("router")  # the outermost app's router, as Starlette sets it
        if not found and top is not None:  # (in an app mounted in this one, or beside it)
            base = request.scope.get("app_root_path", "").rstrip("/")
            found = [(web, base + path) for web, path in self._tiers(top.routes, deep=True)]
        if len(found) != 1:
            raise ConfigurationError(
                "offload_jobs needs one offload web tier mounted in this app: "
                "api.mount('/jobs', create_app(app)) (several: OffloadJobs(that_one))"
            )
        return found[0]

    def _tiers(
        self, routes: list[BaseRoute], *, deep: bool, at: str = ""
    ) -> list[tuple[FastAPI, str]]:
        """The web tiers mounted among `routes` (and, `deep`, in the apps mounted there) that
        this dependency may use, each with its path under `at`."""
        found = []
        for route in routes:
            if not isinstance(route, Mount):
                continue
            path = at + route.path
            if isinstance(route.app, FastAPI) and hasattr(route.app.state, "offload"):
                if self.web is None or route.app is self.web:
                    found.append((route.app, path))
            elif deep:
                found += self._tiers(route.routes, deep=True, at=path)
        return found


#: The dependency for the one web tier mounted in the route's app.
offload_jobs = OffloadJobs()
