"""The dashboard's CSRF tokens: synchronizer tokens signed with the app's key, bound to the
operator they were rendered for and valid for a while.

A page of another site can make the browser send a form, with the operator's cookies (an
auth hook's session) or through a proxy that adds credentials, but it cannot read a
dashboard page, so it never learns a token: a token is the HMAC of the principal and an
expiry under the signing key, which only the server holds. Nothing is stored server-side.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..._signing import sign, verify

#: How long a rendered form's token stays valid (seconds).
DEFAULT_CSRF_TTL_S = 12 * 3600.0
#: The form field (or `X-CSRF-Token` header) that carries it.
CSRF_FIELD = "csrf"
_PURPOSE = "dashboard-csrf"


def csrf_token(secret: bytes, principal: str, now: float, ttl_s: float = DEFAULT_CSRF_TTL_S) -> str:
    """A token for `principal`'s forms, valid until `now + ttl_s`."""
    expires = str(int(now + ttl_s))
    return f"{expires}.{sign(secret, _PURPOSE, principal, expires)}"


def csrf_valid(keys: bytes | Sequence[bytes], principal: str, token: str, now: float) -> bool:
    """Whether `token` was made for `principal` with one of `keys` and has not expired."""
    expires, _, signature = token.partition(".")
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and signature):
        return False
    if int(expires) < now:
        return False
    return verify(keys, signature, _PURPOSE, principal, expires)
