"""Who is calling: the host's auth hook, or else bearer tokens mapped to principals (and
limited to kinds), or `local` in development mode."""

from __future__ import annotations

import hmac
import inspect
import logging
import reprlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request

from .._loop import is_async_callable
from ..settings import Settings, principal_fault
from .origins import allowed_origin
from .problems import Problem

if TYPE_CHECKING:
    from ..app import MessageSpec

#: The principal of every caller when no API tokens are configured.
LOCAL_PRINCIPAL = "local"
#: The challenge of a 401 answer (RFC 9110 requires one).
DEFAULT_CHALLENGE = 'Bearer realm="offload"'

#: `(request) -> principal | None`, sync or async: the caller's principal (every job belongs
#: to one), or None for a caller who is not signed in (401). A plain function runs in the
#: thread pool, as FastAPI runs plain dependencies, so it may block. Answering `Admin(name)`
#: makes the caller an operator besides (the dashboard, the worker registry).
AuthHook = Callable[[Request], str | Awaitable[str | None] | None]


class Admin(str):
    """A principal who is an operator: what an auth hook answers for one, e.g.
    `return Admin(user.email) if user.is_staff else user.email`. It is a `str`, so it is
    the principal's name everywhere else."""

    __slots__ = ()


_PRINCIPAL = "offload_principal"
#: Where a stream opened with a ticket keeps whom the ticket names (shown by the access
#: log: the request's own principal is no one, the ticket's holder alone being served).
TICKET_PRINCIPAL = "offload_ticket_principal"
_KINDS = "offload_kinds"
_UNASKED = object()
log = logging.getLogger("offload.web")


class _Refused(str):
    """What the hook answered when it named a principal no caller may be: one offload keeps
    for its own jobs, or one with a control character or white space around it (a 401
    naming why, `detail`)."""

    detail: str


def _refused(principal: str) -> _Refused | None:
    """`principal` refused, with a warning to the log, if no caller may be it; else None."""
    if (fault := principal_fault(principal)) is None:
        return None
    detail = f"the auth hook named no valid principal: {fault}"
    shown = reprlib.repr(principal)  # (at most a few dozen characters of a long one)
    log.warning("the auth hook named %s, a principal no caller may be: %s", shown, detail)
    refused = _Refused(principal)
    refused.detail = detail
    return refused


class TokenAuth:
    """Bearer-token authentication from OFFLOAD_API_TOKENS (`token=principal,…`; a token
    written `token=principal[kind|kind]` may submit those kinds only): the auth hook of a
    web tier given none, and one a host's own hook may fall back on."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = dict(settings.api_tokens)
        self.kinds = dict(settings.token_kinds)

    def _token(self, conn: HTTPConnection) -> str | None:
        """The configured token the caller sent, or None."""
        scheme, _, sent = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sent.strip():
            return None
        sent = sent.strip()
        found = None
        for known in self.tokens:  # compare with every token: the time tells nothing
            if hmac.compare_digest(known.encode(), sent.encode()):
                found = known
        return found

    def __call__(self, conn: HTTPConnection) -> str | None:
        """The caller's principal: `local` without tokens configured, else the principal of
        the bearer token sent, or None (none sent, or a wrong one)."""
        if not self.tokens:
            return LOCAL_PRINCIPAL
        token = self._token(conn)
        return None if token is None else self.tokens[token]

    def kinds_of(self, conn: HTTPConnection) -> frozenset[str] | None:
        """The kinds the caller's token may submit; None: every kind."""
        token = self._token(conn) if self.kinds else None
        return None if token is None else self.kinds.get(token)

    def principal(self, conn: HTTPConnection) -> str:
        """The caller's principal.

        Raises:
            Problem: 401 when tokens are configured and none (or a wrong one) was sent.
        """
        principal = self(conn)
        if principal is None:
            raise unauthorized("a valid bearer token is required")
        return principal


def unauthorized(detail: str) -> Problem:
    return Problem(
        401, detail, slug="unauthorized", headers={"WWW-Authenticate": DEFAULT_CHALLENGE}
    )


def handshake_request(conn: HTTPConnection) -> Request:
    """A WebSocket's handshake as the `Request` an auth hook reads (a GET of its path, with
    its headers, cookies and query): Starlette builds no `Request` of a WebSocket scope."""
    return Request({**conn.scope, "type": "http", "method": "GET"})


class Auth:
    """The authentication of one web tier: asks the hook once per request (`authenticate`,
    a route dependency), then answers `principal` from what it said.

    Args:
        hook: the host's `AuthHook`; None: OFFLOAD_API_TOKENS (`TokenAuth`).
        settings: where the tokens come from.
    """

    def __init__(self, hook: AuthHook | None, settings: Settings) -> None:
        self.token_auth = TokenAuth(settings)
        self.hook: AuthHook | None = hook
        self.admins = settings.admin_principals
        self.dev_mode = hook is None and settings.dev_mode
        #: Whether anyone may be refused: a hook, or tokens (else development mode).
        self.required = hook is not None or bool(self.token_auth.tokens)
        #: The origins of other sites' pages that may call the API (OFFLOAD_CORS_ORIGINS).
        self.cors_origins = frozenset(allowed_origin(o) for o in settings.cors_origins)

    async def authenticate(self, conn: HTTPConnection) -> str | None:
        """Ask who is calling and remember the answer on the request (None: nobody)."""
        kinds = None
        if self.hook is None:
            principal = self.token_auth(conn)
            kinds = self.token_auth.kinds_of(conn) if principal is not None else None
        else:
            request = conn if isinstance(conn, Request) else handshake_request(conn)
            if is_async_callable(self.hook):
                answer = self.hook(request)
            else:
                answer = await run_in_threadpool(self.hook, request)
            principal = await answer if inspect.isawaitable(answer) else answer
            if isinstance(principal, str) and not principal.strip():
                principal = None  # a hook's fallback for no one: `cookies.get("user", "")`
            elif isinstance(principal, str):
                principal = _refused(principal) or principal
        setattr(conn.state, _PRINCIPAL, principal)
        setattr(conn.state, _KINDS, kinds)
        return principal

    def principal(self, conn: HTTPConnection) -> str:
        """The caller's principal, as `authenticate` found it.

        Raises:
            Problem: 401 for a caller who is not signed in.
            RuntimeError: `authenticate` did not run for this request.
        """
        principal = getattr(conn.state, _PRINCIPAL, _UNASKED)
        if principal is _UNASKED:
            raise RuntimeError("authenticate the request first (the routers' dependency)")
        if principal is None:
            detail = "authentication is required"
            raise unauthorized(detail if self.hook else "a valid bearer token is required")
        if not isinstance(principal, str):
            raise TypeError(f"an auth hook returns a str principal or None, not {principal!r}")
        if isinstance(principal, _Refused):
            raise unauthorized(principal.detail)
        return principal

    def is_admin(self, conn: HTTPConnection) -> bool:
        """Whether the caller is an operator: the auth hook answered `Admin(name)`, or the
        principal is in OFFLOAD_ADMIN_PRINCIPALS, or this is development mode (`local`)."""
        principal = getattr(conn.state, _PRINCIPAL, None)
        if not isinstance(principal, str) or isinstance(principal, _Refused):
            return False
        return (
            isinstance(principal, Admin)
            or principal in self.admins
            or (self.dev_mode and principal == LOCAL_PRINCIPAL)
        )

    def offers(self, conn: HTTPConnection, spec: MessageSpec) -> bool:
        """Whether the caller is offered `spec`'s kind over HTTP (listed, documented): a
        kind on the API (not `http=False`) that its token may submit."""
        return spec.http and self.may_submit(conn, spec.kind)

    def may_submit(self, conn: HTTPConnection, kind: str) -> bool:
        """Whether the caller's token may submit jobs of `kind` (tokens limited to kinds)."""
        kinds: frozenset[str] | None = getattr(conn.state, _KINDS, None)
        return kinds is None or kind in kinds


async def authenticated(conn: HTTPConnection) -> None:
    """A route dependency: ask who is calling (routes then read `auth.principal`). It
    refuses no one itself: an event stream may come with a ticket instead."""
    if conn.scope["type"] == "http":  # a WebSocket route asks itself, to refuse in kind
        await conn.app.state.auth.authenticate(conn)


async def authenticate_unless_ticket(conn: HTTPConnection) -> None:
    """Ask who is calling an event stream (HTTP or WebSocket): a caller with `?ticket=` is
    who the ticket names (`feeds.principal_of`), and the hook is not asked, so that one
    which raises for a caller without credentials of its own does not refuse the ticket's."""
    if "ticket" in conn.query_params:
        setattr(conn.state, _PRINCIPAL, None)  # no one but the ticket's holder
        setattr(conn.state, _KINDS, None)
    else:
        await conn.app.state.auth.authenticate(conn)


async def authenticated_unless_ticket(conn: HTTPConnection) -> None:
    """`authenticated`, for the event streams' routes (`authenticate_unless_ticket`)."""
    if conn.scope["type"] == "http":  # a WebSocket route asks itself, to refuse in kind
        await authenticate_unless_ticket(conn)


async def caller_is_admin(request: Request) -> bool:
    """Whether the caller is an admin (`Auth.is_admin`), asking who calls first where
    nothing has asked yet."""
    auth: Auth = request.app.state.auth
    if getattr(request.state, _PRINCIPAL, _UNASKED) is _UNASKED:
        await auth.authenticate(request)
    return auth.is_admin(request)


async def admin_only(request: Request) -> None:
    """A dependency of the operators' routes: anyone else, signed in or not, finds nothing
    there (404), so the routes tell no one that they exist."""
    if not await caller_is_admin(request):
        raise Problem(404, "Not Found")  # as for a path that does not exist


async def kind_allowed(request: Request, kind: str) -> None:
    """A dependency of the submit route: a token limited to kinds submits only those; any
    other kind does not exist for it (404, as an unknown kind)."""
    if not request.app.state.auth.may_submit(request, kind):
        raise Problem(404, f"no job kind {kind!r}", slug="unknown-kind")
