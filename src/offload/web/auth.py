"""Who is calling: bearer tokens mapped to principals, or `local` in development mode."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from ..settings import Settings
from .problems import Problem

#: The principal of every caller when no API tokens are configured.
LOCAL_PRINCIPAL = "local"


class TokenAuth:
    """Bearer-token authentication from OFFLOAD_API_TOKENS (`token=principal,…`)."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = dict(settings.api_tokens)

    def principal(self, conn: HTTPConnection) -> str:
        """The caller's principal.

        Raises:
            Problem: 401 when tokens are configured and none (or a wrong one) was sent.
        """
        if not self.tokens:
            return LOCAL_PRINCIPAL
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            token = token.strip()
            for known, principal in self.tokens.items():
                if hmac.compare_digest(known.encode(), token.encode()):
                    return principal
        raise Problem(
            401,
            "a valid bearer token is required",
            slug="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="offload"'},
        )
