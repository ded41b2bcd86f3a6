"""Demo sign-in: a signed session cookie naming a demo user, CSRF tokens, and the API's auth.

There are no passwords: the login page is a user picker. The cookie is signed with the
app's key, so it cannot be forged to name another user.
"""

from __future__ import annotations

import time

from starlette.requests import HTTPConnection
from starlette.responses import Response

from .._signing import sign, verify
from ..web.auth import TokenAuth
from .data import USERS, DemoUser

#: Name of the session cookie.
SESSION_COOKIE = "offload_demo_session"
#: How long a sign-in lasts (seconds).
DEFAULT_SESSION_TTL_S = 7 * 86400.0


class Sessions:
    """Issues and checks session cookies and the CSRF tokens bound to them."""

    def __init__(self, key: bytes, ttl_s: float = DEFAULT_SESSION_TTL_S) -> None:
        self.key = key
        self.ttl_s = ttl_s

    def issue(self, user_id: str, now: float | None = None) -> str:
        expires = str(int((now or time.time()) + self.ttl_s))
        return f"{user_id}.{expires}.{sign(self.key, 'session', user_id, expires)}"

    def user(self, conn: HTTPConnection, now: float | None = None) -> DemoUser | None:
        """The signed-in demo user, or None (no cookie, a forged or an expired one)."""
        value = conn.cookies.get(SESSION_COOKIE, "")
        user_id, _, rest = value.partition(".")
        expires, _, signature = rest.partition(".")
        if not (user_id in USERS and expires.isdigit() and signature):
            return None
        if int(expires) < (now or time.time()):
            return None
        if not verify(self.key, signature, "session", user_id, expires):
            return None
        return USERS[user_id]

    def csrf(self, conn: HTTPConnection) -> str:
        """The CSRF token of this session: forms and fetches send it back."""
        return sign(self.key, "csrf", conn.cookies.get(SESSION_COOKIE, ""))

    def check_csrf(self, conn: HTTPConnection, token: str | None) -> bool:
        return bool(token) and verify(
            self.key, token or "", "csrf", conn.cookies.get(SESSION_COOKIE, "")
        )

    def sign_in(self, response: Response, user_id: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.issue(user_id),
            max_age=int(self.ttl_s),
            httponly=True,
            samesite="lax",
            path="/",
        )

    @staticmethod
    def sign_out(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


class SessionAuth:
    """The offload API's auth hook inside the demo (`create_app(app, auth=...)`).

    A bearer token wins as usual. Without one, a read (GET/HEAD) carrying a valid session
    cookie is made as that demo user, so the browser can follow its own jobs' events and
    fetch their results; nobody else's. Writes still need a token (or development mode's
    `local`), so the cookie cannot be used to forge a job through the API (CSRF).
    """

    def __init__(self, sessions: Sessions, fallback: TokenAuth) -> None:
        self.sessions = sessions
        self.fallback = fallback

    def __call__(self, conn: HTTPConnection) -> str | None:
        """The caller's principal, or None (no session and no valid token)."""
        if "authorization" not in conn.headers and conn.scope.get("method") in ("GET", "HEAD"):
            user = self.sessions.user(conn)
            if user is not None:
                return user.id
        return self.fallback(conn)

    def principal(self, conn: HTTPConnection) -> str:
        """The caller's principal.

        Raises:
            Problem: 401 without a session or a valid token.
        """
        return self(conn) or self.fallback.principal(conn)
