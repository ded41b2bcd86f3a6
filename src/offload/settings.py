"""Settings from environment variables (and CLI flags, which override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigurationError

#: Where jobs live when OFFLOAD_URL is unset: an SQLite file in the working directory.
DEFAULT_URL = "sqlite:///offload.db"
#: Where blobs live when OFFLOAD_BLOBS_URL is unset.
DEFAULT_BLOBS_URL = "blobs"
#: Largest request body the web tier reads (bytes).
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: How long a signed download link stays valid (seconds).
DEFAULT_LINK_TTL_S = 3600.0
#: How long a claimed job stays leased without a heartbeat (seconds).
DEFAULT_LEASE_S = 30.0
#: How long succeeded, failed and cancelled jobs are kept before workers prune them (seconds).
DEFAULT_RETENTION_S = 7 * 86400.0


def parse_tokens(raw: str | None) -> dict[str, str]:
    """`token=principal,token2=principal2` → {token: principal}."""
    tokens: dict[str, str] = {}
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, principal = item.partition("=")
        if not sep or not token.strip() or not principal.strip():
            raise ConfigurationError(
                "OFFLOAD_API_TOKENS must be comma-separated token=principal pairs"
            )
        tokens[token.strip()] = principal.strip()
    return tokens


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything configurable, read once from the environment by `Settings.from_env()`."""

    url: str = DEFAULT_URL
    store_url: str | None = None
    blobs_url: str = DEFAULT_BLOBS_URL
    api_tokens: dict[str, str] = field(default_factory=dict)
    secret_key: bytes | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    link_ttl_s: float = DEFAULT_LINK_TTL_S
    lease_s: float = DEFAULT_LEASE_S
    retention_s: float = DEFAULT_RETENTION_S

    @property
    def dev_mode(self) -> bool:
        """No API tokens: loopback only, every caller is the principal `local`."""
        return not self.api_tokens

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        e = os.environ if env is None else env
        secret = e.get("OFFLOAD_SECRET_KEY")
        try:
            values: dict[str, Any] = dict(
                url=e.get("OFFLOAD_URL") or DEFAULT_URL,
                store_url=e.get("OFFLOAD_STORE_URL") or None,
                blobs_url=e.get("OFFLOAD_BLOBS_URL") or DEFAULT_BLOBS_URL,
                api_tokens=parse_tokens(e.get("OFFLOAD_API_TOKENS")),
                secret_key=secret.encode() if secret else None,
                max_body_bytes=int(e.get("OFFLOAD_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES),
                link_ttl_s=float(e.get("OFFLOAD_LINK_TTL") or DEFAULT_LINK_TTL_S),
                lease_s=float(e.get("OFFLOAD_LEASE") or DEFAULT_LEASE_S),
                retention_s=float(e.get("OFFLOAD_RETENTION") or DEFAULT_RETENTION_S),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad offload setting: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)
