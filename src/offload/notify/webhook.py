"""Webhooks: Standard Webhooks signatures, the target address check, and WebhookNotifier.

Signing follows the Standard Webhooks specification: the headers `webhook-id` (stable per
notification), `webhook-timestamp` (epoch seconds of the attempt) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret, space-separated).

A target is resolved once, every address it resolves to is checked, and the request goes
to the checked address (with the original Host header and TLS server name), so a DNS answer
that changes between check and connect (rebinding) cannot reach an address that was
refused. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import orjson

from .. import tracing
from .._signing import whsec_key
from ..errors import DeliveryError, TargetRefused
from .base import Notification, Receipt
from .targets import METADATA_ADDRESSES as METADATA_ADDRESSES  # re-exported (older home)
from .targets import IPAddress, address_of, callback_url_error, refusal

log = logging.getLogger("offload.notify")

#: Resolves a host name to IP address strings (`socket.getaddrinfo` by default).
Resolver = Callable[[str, int], Sequence[str]]
#: Longest wait for the receiver (seconds) when the notifier is built without a timeout.
DEFAULT_TIMEOUT_S = 10.0
#: How far a receiver should accept a webhook-timestamp from its own clock (seconds).
DEFAULT_TOLERANCE_S = 300.0
_USER_AGENT = "offload-webhooks/1"


# -- signing (pure) -------------------------------------------------------------------------


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with `key`."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<signature>` for each secret, space-separated.

    Raises:
        ValueError: a secret is no `whsec_` secret of a 24 to 64 byte key (`whsec_key`).
    """
    return " ".join(_signature(whsec_key(s), msg_id, str(timestamp), body) for s in secrets)


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Receiver side: True when one `v1` signature in `headers` is valid for `body` and the
    timestamp is within `tolerance_s` of `now` (replays of old requests fail); False for
    any other headers.

    Raises:
        ValueError: `secret` is no webhook secret (`whsec_` and the base64 of a 24 to 64
            byte key): an unset one (`""`) would otherwise check against an empty key.
    """
    key = whsec_key(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp = lower.get("webhook-id", ""), lower.get("webhook-timestamp", "")
    if not msg_id or not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return False
    expected = _signature(key, msg_id, stamp, body).encode()
    return any(
        hmac.compare_digest(expected, given.encode())
        for given in lower.get("webhook-signature", "").split()
        if given.startswith("v1,") and given.isascii()
    )


# -- the target check (pure, given a resolver; the rules are in targets.py) -----------------


@dataclass(frozen=True, slots=True)
class Target:
    """A checked webhook target: where to connect (`address`) and what to call it."""

    url: httpx.URL
    address: str

    @property
    def connect_url(self) -> httpx.URL:
        return self.url.copy_with(host=self.address)

    @property
    def host_header(self) -> str:
        host = self.url.host
        host = f"[{host}]" if ":" in host else host
        return host if self.url.port is None else f"{host}:{self.url.port}"

    @property
    def extensions(self) -> dict[str, Any]:
        """TLS server name (and so certificate check) of the host name, not the address."""
        if self.url.scheme == "https" and _literal(self.url.host) is None:
            return {"sni_hostname": self.url.host}
        return {}


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_target(url: str, *, resolve: Resolver, allow_private: bool = False) -> Target:
    """Parse and check a webhook URL; resolve its host once and check every address.

    Returns:
        The target, with the first address to connect to.

    Raises:
        TargetRefused: not a callback URL (`targets.callback_url_error`), or an address
            that is not allowed (`targets.refusal`).
        DeliveryError: the host name does not resolve (perhaps for now: retried).
    """
    why = callback_url_error(url)
    if why is not None:
        raise TargetRefused(why)
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoded here: a malformed IDNA label raises
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    literal = address_of(host)  # as the web tier judged it: no lookup needed
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = resolve(host, port)
        except OSError as exc:
            raise DeliveryError(f"cannot resolve {host}: {exc}") from None
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        if not addresses:
            raise DeliveryError(f"{host} resolves to no address")
    for ip in addresses:
        why = refusal(ip, allow_private=allow_private)
        if why is not None:
            if literal is not None:
                raise TargetRefused(f"{host} is {why}; webhooks go to public hosts")
            # Neither the address it resolved to nor its kind: the reason is shown to the
            # job's owner (its delivery record), who would map the internal network by it.
            # The operators' log says both.
            log.warning(
                "webhook target refused: %s resolves to %s (%s)",
                host,
                why,
                ip,
                extra={"action": "webhook_refused", "host": host},
            )
            raise TargetRefused(
                f"{host} resolves to no public address; webhooks go to public hosts"
            )
    return Target(url=parsed, address=str(addresses[0]))


#: Threads that resolve webhook targets at once, per process: a resolver that stalls (its
#: name server silent) holds a thread past its attempt's timeout, and holds one of these,
#: not one of the event loop's shared pool (local blob storage, SQLite's hops).
RESOLVER_THREADS = 8
_resolvers: ThreadPoolExecutor | None = None


def _resolver_pool() -> ThreadPoolExecutor:
    global _resolvers
    if _resolvers is None:
        _resolvers = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="offload-resolve")
    return _resolvers


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (blocking: run it in a thread)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def redact(url: str, *, query: str = "…") -> str:
    """A URL fit to show: without credentials, and its query string as `query` says: `…`
    for a person (the delivery record, a log line), `REDACTED` for a valid URL whose keys
    stay and whose values are each `REDACTED` (a span's `url.full`)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    shown = parts.query and query
    if shown == "REDACTED" and all(
        _PLAIN_KEY.fullmatch(item.partition("=")[0]) and "=" in item
        for item in parts.query.split("&")
    ):  # (a key that is not a plain name, `?t0k3n` or `?a%3Db`, may be the secret: hidden)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        shown = urlencode([(key, "REDACTED") for key, _ in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, shown, ""))


#: A query key shown as it is in a span's `url.full` (its value hidden).
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


# -- the notifier ---------------------------------------------------------------------------


def new_client(timeout_s: float = DEFAULT_TIMEOUT_S) -> httpx.AsyncClient:
    """The HTTP client a WebhookNotifier uses by default: no redirects, no proxies from the
    environment (they would connect on our behalf to addresses we did not check)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_s),
        headers={"user-agent": _USER_AGENT},
    )


class WebhookNotifier:
    """POSTs signed notifications to webhook targets.

    Args:
        client: the HTTP client (tests inject transports); redirects are never followed.
        secrets: `whsec_…` secrets; every one signs each request. None: unsigned.
        allow_private: allow loopback, private and link-local targets.
        timeout_s: longest wait for connect and answer.
        resolve: host name resolver (blocking; it runs in a thread).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        secrets: Sequence[str] = (),
        allow_private: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        resolve: Resolver = system_resolver,
    ) -> None:
        self.client = client
        self.secrets = tuple(secrets)
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.resolve = resolve
        self._warned = False

    def request(self, n: Notification, target: Target) -> httpx.Request:
        body = orjson.dumps(
            {"type": n.event, "timestamp": n.record.get("finished_at"), "data": n.record}
        )
        stamp = int(n.sent_at)
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            "webhook-id": n.id,
            "webhook-timestamp": str(stamp),
        }
        tracing.inject(headers)  # the receiver may continue the job's trace
        if self.secrets:
            headers["webhook-signature"] = sign(self.secrets, n.id, stamp, body)
        elif not self._warned:
            self._warned = True
            log.warning(
                "OFFLOAD_WEBHOOK_SECRETS is not set: webhooks go out unsigned",
                extra={"action": "webhook_unsigned"},
            )
        return self.client.build_request(
            "POST",
            target.connect_url,
            content=body,
            headers=headers,
            extensions={**target.extensions, "timeout": httpx.Timeout(self.timeout_s).as_dict()},
        )

    async def deliver(self, notification: Notification) -> Receipt:
        """POST `notification` to its target: its name resolved and checked, the connection
        and the answer's head all within `timeout_s` (httpx's own timeout bounds each read
        alone, and a receiver that sends its answer a line at a time would hold the attempt
        on)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                check = functools.partial(
                    check_target,
                    notification.target,
                    resolve=self.resolve,
                    allow_private=self.allow_private,
                )
                target = await asyncio.get_running_loop().run_in_executor(_resolver_pool(), check)
                request = self.request(notification, target)
                response = await self.client.send(request, stream=True, follow_redirects=False)
                await response.aclose()  # the answer's body is not ours to read
        except (httpx.TimeoutException, TimeoutError):
            raise DeliveryError(f"no answer within {self.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        code = response.status_code
        if 200 <= code < 300:
            return Receipt(code=code, detail=response.reason_phrase)
        raise DeliveryError(f"the receiver answered {code} {response.reason_phrase}", code=code)
