"""Settings from environment variables (and CLI flags, which override them)."""

from __future__ import annotations

import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._options import owner_fault
from ._signing import key_bytes, short_secret, whsec_key
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
#: Longest wait for a webhook receiver to answer (seconds): short, a delivery is retried.
DEFAULT_WEBHOOK_TIMEOUT_S = 10.0
#: How long opening a backend waits for its server (PostgreSQL, Redis) to answer (seconds).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: How long a call to PostgreSQL or Redis keeps trying again after a lost connection
#: (seconds): a killed connection or a fast restart of the server costs latency, not an error.
DEFAULT_RETRY_DEADLINE_S = 10.0
#: Sender address of notification emails.
DEFAULT_EMAIL_FROM = "offload@localhost"
#: Base URL of the web tier as users reach it, for links in webhooks and emails.
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
#: Payloads larger than this (bytes, as JSON) travel as a blob reference: the claim check
#: (OFFLOAD_CLAIM_CHECK_BYTES; 0 turns it off).
DEFAULT_CLAIM_CHECK_BYTES = 256 * 1024
#: Delay before the first retry of a failed webhook or email delivery (seconds); it doubles.
DEFAULT_NOTIFY_BACKOFF_S = 5.0


#: The owners of offload's own jobs begin so (`offload.notify`, the deliveries';
#: `offload.periodic`, the schedules' ticks): no caller of the API may be one.
RESERVED_PRINCIPAL_PREFIX = "offload."


def principal_fault(principal: str) -> str | None:
    """Why no caller of the API may be `principal`, or None: a name offload keeps for its
    own jobs, or one no owner may have (`owner_fault`)."""
    if fault := owner_fault(principal, "a principal"):
        return fault
    if principal.startswith(RESERVED_PRINCIPAL_PREFIX):
        return (
            f"the principal {principal!r} is reserved: names that begin "
            f"{RESERVED_PRINCIPAL_PREFIX!r} own offload's own jobs (deliveries, schedules' ticks)"
        )
    return None


_TOKENS_FORMAT = (
    "OFFLOAD_API_TOKENS must be comma-separated token=principal pairs, each optionally "
    "limited to kinds: token=principal[kind|kind]"
)
#: `principal[kind|kind]`: a principal whose token may submit the listed kinds only.
_LIMITED = re.compile(r"(?P<principal>[^\[\]]+)\[(?P<kinds>[^\[\]]*)\]")


def _token_entries(raw: str | None) -> list[tuple[str, str, frozenset[str] | None]]:
    """`token=principal,token2=principal2[kind|kind]` → (token, principal, kinds or None)."""
    entries = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, principal = item.partition("=")
        token, principal = token.strip(), principal.strip()
        kinds = None
        limited = _LIMITED.fullmatch(principal)
        if limited:
            principal = limited["principal"].strip()
            kinds = frozenset(k.strip() for k in limited["kinds"].split("|") if k.strip())
        elif "[" in principal or "]" in principal:
            principal = ""  # brackets only around the kinds
        if not sep or not token or not principal or kinds == frozenset():
            raise ConfigurationError(_TOKENS_FORMAT)
        if fault := principal_fault(principal):
            raise ConfigurationError(f"OFFLOAD_API_TOKENS: {fault}")
        entries.append((token, principal, kinds))
    return entries


def parse_tokens(raw: str | None) -> dict[str, str]:
    """`token=principal,token2=principal2[kind|kind]` → {token: principal}."""
    return {token: principal for token, principal, _ in _token_entries(raw)}


def parse_token_kinds(raw: str | None) -> dict[str, frozenset[str]]:
    """`token=principal,token2=principal2[kind|kind]` → {token2: {kind, kind}}: the tokens
    limited to some kinds, and their kinds."""
    return {token: kinds for token, _, kinds in _token_entries(raw) if kinds is not None}


def parse_key_fallbacks(raw: str | None) -> tuple[bytes, ...]:
    """`old-key,older-key` → the keys, each read as OFFLOAD_SECRET_KEY is (`key_bytes`).
    An item with white space around it gives two keys, as written and without it: a key
    that signed with a line end kept from its file (OFFLOAD_SECRET_KEY is taken as written)
    and a list written with spaces after its commas are both taken."""
    keys: dict[bytes, None] = {}
    name = "a key in OFFLOAD_SECRET_KEY_FALLBACKS"
    for item in (raw or "").split(","):
        if item.strip():
            keys.update(dict.fromkeys((key_bytes(item, name), key_bytes(item.strip(), name))))
    return tuple(keys)


def fallbacks_fault(keys: object) -> str | None:
    """Why `keys` cannot be Settings.secret_key_fallbacks, or None: they must be a tuple of
    keys (bytes) of `MIN_SECRET_KEY_BYTES` at least, as OFFLOAD_SECRET_KEY."""
    if not isinstance(keys, tuple) or not all(isinstance(k, bytes) for k in keys):
        return f"secret_key_fallbacks must be a tuple of bytes, not {reprlib.repr(keys)}"
    for key in keys:
        if fault := short_secret(key, "a key in OFFLOAD_SECRET_KEY_FALLBACKS"):
            return fault
    return None


def parse_webhook_secrets(raw: str | None) -> tuple[str, ...]:
    """`whsec_…,whsec_…` → the secrets, each checked to be `whsec_` + base64 of a key."""
    secrets = tuple(s.strip() for s in (raw or "").split(",") if s.strip())
    for secret in secrets:
        try:
            if not secret.startswith("whsec_"):  # (a receiver may leave it out; not here)
                raise ValueError(secret)
            whsec_key(secret)
        except ValueError:
            raise ConfigurationError(
                "OFFLOAD_WEBHOOK_SECRETS must be comma-separated whsec_<base64 key of 24 to 64 "
                "bytes> secrets (Standard Webhooks)"
            ) from None
    return secrets


def _flag(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything configurable, read once from the environment by `Settings.from_env()`."""

    url: str = DEFAULT_URL
    blobs_url: str = DEFAULT_BLOBS_URL
    api_tokens: dict[str, str] = field(default_factory=dict)
    #: The tokens that may submit only some kinds (`token=principal[kind|kind]`): their kinds.
    token_kinds: dict[str, frozenset[str]] = field(default_factory=dict)
    secret_key: bytes | None = None
    #: Keys that signed before OFFLOAD_SECRET_KEY (a rotation): what they signed (download
    #: links, stream tickets, dashboard forms) is still accepted; nothing new is signed.
    secret_key_fallbacks: tuple[bytes, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Larger payloads are stored in the blob store and their envelopes carry a reference.
    claim_check_bytes: int = DEFAULT_CLAIM_CHECK_BYTES
    link_ttl_s: float = DEFAULT_LINK_TTL_S
    lease_s: float = DEFAULT_LEASE_S
    retention_s: float = DEFAULT_RETENTION_S
    #: Standard Webhooks secrets; each one signs every delivery (rotation).
    webhook_secrets: tuple[str, ...] = ()
    #: Deliver webhooks to loopback and private addresses too (development, tests).
    webhook_allow_private: bool = False
    webhook_timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    smtp_url: str | None = None
    email_from: str = DEFAULT_EMAIL_FROM
    public_url: str = DEFAULT_PUBLIC_URL
    notify_backoff_s: float = DEFAULT_NOTIFY_BACKOFF_S
    #: Put failed jobs' tracebacks in API answers, events, webhooks and emails (local
    #: development only: they show server paths and source lines).
    expose_tracebacks: bool = False
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S
    #: The web tier refuses (503) a submission of a kind whose current version no live
    #: worker runs (OFFLOAD_REQUIRE_WORKER_VERSION=1): off by default.
    require_worker_version: bool = False
    #: The principals that are operators (OFFLOAD_ADMIN_PRINCIPALS, comma-separated): they
    #: see the dashboard, the worker registry and every job. In development mode the
    #: principal `local` is one.
    admin_principals: frozenset[str] = frozenset()
    #: The dashboard shows and changes nothing but what it shows (OFFLOAD_DASHBOARD_READONLY=1).
    dashboard_readonly: bool = False
    #: A bearer token that may read GET /metrics and nothing else (OFFLOAD_METRICS_TOKEN):
    #: for a Prometheus scraper, which need not be an admin principal.
    metrics_token: str | None = None
    #: Origins of pages on other sites that may call the API from a browser
    #: (OFFLOAD_CORS_ORIGINS, comma-separated, each `scheme://host[:port]`): a single-page
    #: app served elsewhere. None by default: no page of another origin may.
    cors_origins: frozenset[str] = frozenset()

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
                blobs_url=e.get("OFFLOAD_BLOBS_URL") or DEFAULT_BLOBS_URL,
                api_tokens=parse_tokens(e.get("OFFLOAD_API_TOKENS")),
                token_kinds=parse_token_kinds(e.get("OFFLOAD_API_TOKENS")),
                secret_key=key_bytes(secret) if secret else None,
                secret_key_fallbacks=parse_key_fallbacks(e.get("OFFLOAD_SECRET_KEY_FALLBACKS")),
                max_body_bytes=_num(
                    e, "OFFLOAD_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int, positive=True
                ),
                claim_check_bytes=_num(
                    e, "OFFLOAD_CLAIM_CHECK_BYTES", DEFAULT_CLAIM_CHECK_BYTES, int
                ),
                link_ttl_s=_num(e, "OFFLOAD_LINK_TTL", DEFAULT_LINK_TTL_S, positive=True),
                lease_s=_num(e, "OFFLOAD_LEASE", DEFAULT_LEASE_S, positive=True),
                retention_s=_num(e, "OFFLOAD_RETENTION", DEFAULT_RETENTION_S, infinite=True),
                webhook_secrets=parse_webhook_secrets(e.get("OFFLOAD_WEBHOOK_SECRETS")),
                webhook_allow_private=_flag(e.get("OFFLOAD_WEBHOOK_ALLOW_PRIVATE")),
                webhook_timeout_s=_num(
                    e, "OFFLOAD_WEBHOOK_TIMEOUT", DEFAULT_WEBHOOK_TIMEOUT_S, positive=True
                ),
                smtp_url=e.get("OFFLOAD_SMTP_URL") or None,
                email_from=e.get("OFFLOAD_EMAIL_FROM") or DEFAULT_EMAIL_FROM,
                public_url=(e.get("OFFLOAD_PUBLIC_URL") or DEFAULT_PUBLIC_URL).rstrip("/"),
                notify_backoff_s=_num(e, "OFFLOAD_NOTIFY_BACKOFF", DEFAULT_NOTIFY_BACKOFF_S),
                expose_tracebacks=_flag(e.get("OFFLOAD_EXPOSE_TRACEBACKS")),
                connect_timeout_s=_num(e, "OFFLOAD_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S),
                retry_deadline_s=_num(e, "OFFLOAD_RETRY_DEADLINE", DEFAULT_RETRY_DEADLINE_S),
                require_worker_version=_flag(e.get("OFFLOAD_REQUIRE_WORKER_VERSION")),
                admin_principals=frozenset(
                    name.strip()
                    for name in (e.get("OFFLOAD_ADMIN_PRINCIPALS") or "").split(",")
                    if name.strip()
                ),
                dashboard_readonly=_flag(e.get("OFFLOAD_DASHBOARD_READONLY")),
                metrics_token=(e.get("OFFLOAD_METRICS_TOKEN") or "").strip() or None,
                cors_origins=frozenset(
                    origin.strip()
                    for origin in (e.get("OFFLOAD_CORS_ORIGINS") or "").split(",")
                    if origin.strip()
                ),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad offload setting: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["connect_timeout_s"] <= 0:
            raise ConfigurationError("OFFLOAD_CONNECT_TIMEOUT must be a positive number of seconds")
        if values["claim_check_bytes"] < 0:
            raise ConfigurationError("OFFLOAD_CLAIM_CHECK_BYTES must be 0 (off) or more bytes")
        if values["retry_deadline_s"] < 0:
            raise ConfigurationError("OFFLOAD_RETRY_DEADLINE must be 0 (no retry) or more seconds")
        if values["secret_key"] and (fault := short_secret(values["secret_key"])):
            raise ConfigurationError(fault)
        if fault := fallbacks_fault(values["secret_key_fallbacks"]):
            raise ConfigurationError(fault)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _num(
    env: Mapping[str, str],
    name: str,
    default: float,
    cast: Callable[[str], float] = float,
    *,
    positive: bool = False,
    infinite: bool = False,
) -> Any:
    """The number setting `name` (`default` when unset): finite (or `inf`, where `infinite`
    says so: `OFFLOAD_RETENTION=inf` keeps every job), never below 0 (never 0 either, where
    `positive`) nor above `_MOST_SECONDS` (`_MOST_BYTES`), else a ConfigurationError that
    names it."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        what = "a whole number" if cast is int else "a number"
        raise ConfigurationError(f"{name} must be {what}, not {raw[:40]!r}") from None
    if math.isnan(value) or (math.isinf(value) and not (infinite and value > 0)):
        what = "a finite number or inf" if infinite else "a finite number"
        raise ConfigurationError(f"{name} must be {what}, not {raw[:40]!r}")
    if value < 0 or (positive and value == 0):
        least = "more than 0" if positive else "0 or more"
        raise ConfigurationError(f"{name} must be {least}, not {raw[:40]!r}")
    most = _MOST_BYTES if cast is int else _MOST_SECONDS
    if value > most and not math.isinf(value):
        shown = f"{most:,}" if cast is int else f"{most:g}"
        raise ConfigurationError(f"{name} must be at most {shown}, not {raw[:40]!r}")
    return value


#: The largest number of seconds a setting takes (about 31 years: a lease or a retention
#: past it is out of the backends' time range) and of bytes (1 TiB).
_MOST_SECONDS = 1e9
_MOST_BYTES = 2**40
