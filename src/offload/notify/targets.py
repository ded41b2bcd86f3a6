"""A job's notification targets: the one rule for what a callback URL and a notify_email
must look like, which addresses a webhook may never reach, which targets a job names, and
the delivery jobs they call for when it ends.

Pure functions without I/O. The App checks a kind's default `callback_url` and a job's
delivery options with them, the web tier answers 422 with them, and the webhook notifier
applies the same rules when it sends (`webhook.check_target`): there the host name is
resolved and `refusal` is applied to every address it resolves to. The follow-ups of a
final state are enqueued with that transition (by the worker on settle and rescue, by the
App on cancel).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from .._hosts import localhost_name
from ..contract import Envelope, JobRow, JobState, Message
from .base import (
    EMAIL_KIND,
    NOTIFY_OWNER,
    WEBHOOK_KIND,
    EmailDelivery,
    WebhookDelivery,
    notification_id,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Longest callback URL accepted (characters): the web tier's query limit too.
MAX_CALLBACK_URL_LENGTH = 2048
#: Cloud metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba, Azure wireserver):
#: refused even when private targets are allowed, for no webhook receiver lives there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
#: Kinds that never call for notifications of their own (no webhook about a webhook).
DELIVERY_KINDS = frozenset({WEBHOOK_KIND, EMAIL_KIND})
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
#: One address, `local@domain.tld`: a dot-atom local part (none of the characters that
#: make a header field a list or a group, `,;:<>()[]\"`, nor a leading, trailing or doubled
#: dot, nor an encoded word: `notify_email_error`) and a domain of dot-separated labels
#: (letters, digits, `-`; non-ASCII for IDNs).
_EMAIL = re.compile(
    r"(?=[^@]{1,64}@)(?!\.)(?:\.?[^\s\x00-\x1f\x7f@,;:<>()\[\]\\\".])+"
    r"@(?:(?!-)[^\W_](?:[^\W_]|-)*(?<!-)\.)+[^\W\d_](?:[^\W_]|-)*(?<!-)"
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: The local-use NAT64 prefix (RFC 8215): a translator of this network's own.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
#: IPv4-translated addresses (`::ffff:0:a.b.c.d`, RFC 2765).
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
#: Where every public IPv6 address is (global unicast, RFC 4291), and the part of it kept
#: for documentation (RFC 9637) that older Pythons call global: outside, `fec0::/10` (the
#: old site-local), `5f00::/16` (segment routing) and the rest that is no one's to reach.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_DOCUMENTATION = ipaddress.IPv6Network("3fff::/20")
#: The characters of an IPv4 address in the forms the resolver reads (`0x7f.1`).
_IPV4_NUMBER = frozenset("0123456789abcdefx.")


def callback_url_error(url: str) -> str | None:
    """Why `url` is not a callback URL, or None when it is one.

    A callback URL is an absolute http:// or https:// URL with a host, at most
    `MAX_CALLBACK_URL_LENGTH` characters, without spaces or control characters.
    Whether its host may be reached is `callback_url_refusal`'s question.
    """
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        return f"callback_url is longer than {MAX_CALLBACK_URL_LENGTH} characters"
    if _SPACE_OR_CONTROL.search(url):
        return "callback_url must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"callback_url is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "callback_url must be an http:// or https:// URL"
    if not parts.hostname:
        return "callback_url must name a host"
    import httpx  # (here: a tenth of a second of every `import offload` otherwise)

    try:  # the parser the webhook is sent with: what it refuses (0177.0.0.1) is no URL,
        httpx.URL(url).host  # noqa: B018 - nor is a host it cannot decode (`xn--a-`: IDNA)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        return f"callback_url is not a valid URL: {exc}"
    return None


def notify_email_error(address: str) -> str | None:
    """Why `address` is not an email address to notify, or None when it is one."""
    # `=?…?=` is an encoded word, which a To field decodes: into a list, or a line break.
    if len(address) <= 254 and _EMAIL.fullmatch(address) and "=?" not in address:
        return None
    return "notify_email is not an email address (one address, local@domain)"


def delivery_option_errors(callback_url: str | None, notify_email: str | None) -> dict[str, str]:
    """What is wrong with a job's delivery options, by option name (empty when nothing).

    An empty option is no option.
    """
    found = {
        "callback_url": callback_url_error(callback_url) if callback_url else None,
        "notify_email": notify_email_error(notify_email) if notify_email else None,
    }
    return {name: why for name, why in found.items() if why}


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries on to, or None: IPv4-mapped
    (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), 6to4 (`2002::/16`), the NAT64
    well-known prefix (`64:ff9b::/96`) and the deprecated IPv4-compatible form
    (`::a.b.c.d`). (The local-use NAT64 prefix: `local_nat64_ipv4s`.)"""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    number = int(ip)
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and number > 1):
        return ipaddress.IPv4Address(number & 0xFFFFFFFF)  # :: and ::1 are their own
    return None


def local_nat64_ipv4s(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an address of the local-use NAT64 prefix `64:ff9b:1::/48` may
    carry, one per way RFC 6052 lays one out under a prefix of it (a /48, /56, /64 or /96:
    which one, only the network's translator knows); none for another address."""
    if ip not in _LOCAL_NAT64:
        return []
    n = int(ip)  # the u octet, bits 64 to 71, is skipped
    return [
        ipaddress.IPv4Address(value)
        for value in (
            ((n >> 64) & 0xFFFF) << 16 | (n >> 40) & 0xFFFF,  # /48: bits 48-63, 72-87
            ((n >> 64) & 0xFF) << 24 | (n >> 32) & 0xFFFFFF,  # /56: bits 56-63, 72-95
            (n >> 24) & 0xFFFFFFFF,  # /64: bits 72-103
            n & 0xFFFFFFFF,  # /96: bits 96-127
        )
    ]


def refusal(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why a webhook may not go to `ip`, or None when it may (an IPv6 address that
    carries an IPv4 one is judged as that one: `embedded_ipv4`; one of the local-use NAT64
    prefix is a private address, refused as a metadata address when any IPv4 address it
    may carry is one)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:  # `fe80::1%eth0`: the address, whatever its zone
            ip = ipaddress.IPv6Address(int(ip))
        if any(v4 in METADATA_ADDRESSES for v4 in local_nat64_ipv4s(ip)):
            return "a cloud metadata address"
        if ip in _LOCAL_NAT64:
            return None if allow_private else "a private address (a local NAT64 translator's)"
        ip = embedded_ipv4(ip) or ip
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified or ip.is_multicast:
        return "not a unicast address"
    if allow_private:
        return None
    for test, what in (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_private, "a private address"),
        (not ip.is_global or not _public_ipv6_space(ip), "not a public address"),
    ):
        if test:
            return what
    return None


def _public_ipv6_space(ip: IPAddress) -> bool:
    """Whether an IPv6 address is where public ones are (an IPv4 address: yes), which
    Pythons before 3.12.4 do not all judge as the IANA registries do."""
    if isinstance(ip, ipaddress.IPv4Address):
        return True
    return ip in _GLOBAL_UNICAST and ip not in _DOCUMENTATION


def address_of(host: str) -> IPAddress | None:
    """The address a host stands for without a lookup, or None for a name to resolve: an
    address literal, a number the resolver reads as an IPv4 address (`127.1`, `0x7f.1`,
    `2130706433`), or `localhost` (and names under it, RFC 6761: always loopback); a
    final dot (`localhost.`, `127.0.0.1.`) names the same."""
    host = host[:-1] if host.endswith(".") and not host.endswith("..") else host
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if localhost_name(host):
        return ipaddress.ip_address("127.0.0.1")
    if host and set(host) <= _IPV4_NUMBER:
        try:  # inet_aton parses as the resolver does; no lookup
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def callback_url_refusal(url: str, *, allow_private: bool = False) -> str | None:
    """Why a valid callback URL is refused now, or None: a host that stands for an address
    without a lookup (`address_of`) is judged on submission, as the sender would judge it;
    a name is resolved and judged when the webhook is sent, for it may resolve differently
    by then."""
    import httpx

    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, TypeError, ValueError):  # (an IDNA error is a ValueError)
        return None  # no URL at all: callback_url_error's answer
    ip = address_of(host)
    if ip is None:
        return None
    why = refusal(ip, allow_private=allow_private)
    shown = host if str(ip) == host else f"{host} ({ip})"
    return None if why is None else f"{shown} is {why}; webhooks go to public hosts"


def refused_delivery_options(
    callback_url: str | None, notify_email: str | None, *, allow_private: bool
) -> dict[str, str]:
    """What a web tier refuses of a job's delivery options, by option name (empty when
    nothing): `delivery_option_errors`, and a valid callback URL whose host is refused
    (`callback_url_refusal`)."""
    found = delivery_option_errors(callback_url, notify_email)
    if callback_url and "callback_url" not in found:
        why = callback_url_refusal(callback_url, allow_private=allow_private)
        if why:
            found["callback_url"] = why
    return found


# -- which targets a job names, and the delivery jobs its end calls for ----------------------


class _KindSpec(Protocol):
    @property
    def callback_url(self) -> str | None: ...


class Registry(Protocol):
    """What planning needs of the App: its kinds (their default callback) and its stamp."""

    @property
    def kinds(self) -> Mapping[str, _KindSpec]: ...

    def envelope(
        self,
        message: Message,
        *,
        owner: str,
        idempotency_key: str,
        trace: dict[str, str] | None = None,
    ) -> Envelope: ...


def targets(app: Registry, kind: str, options: Mapping[str, Any] | None) -> dict[str, str]:
    """The channels a job of `kind` with these options asks for: {channel: target}.

    The job's own `callback_url` wins over its kind's default; `notify_email` is per job.
    A job silenced (its owner erased) asks for none.
    """
    options = options or {}
    if kind in DELIVERY_KINDS or options.get("silenced"):  # (an erased owner's: `silence_many`)
        return {}
    spec = app.kinds.get(kind)
    callback = options.get("callback_url") or (spec.callback_url if spec else None)
    found = {"webhook": callback, "email": options.get("notify_email")}
    return {channel: str(target) for channel, target in found.items() if target}


def follow_ups(
    app: Registry,
    *,
    job_id: str,
    kind: str,
    options: Mapping[str, Any] | None,
    state: JobState | str,
    marker: str,
    trace: dict[str, str] | None = None,
) -> tuple[Envelope, ...]:
    """The delivery jobs for one final state of a job, to enqueue with that transition.

    Each carries an idempotency key per (notification, channel), so a repeat collapses.

    Args:
        marker: tells this final state apart from an earlier one of the same job (the
            settling lease's token, or a timestamp of the transition).
        trace: the tracing context the deliveries continue (the job's last attempt's span,
            else its producer's): their spans join the job's trace.
    """
    state = JobState(state)
    if not state.final:
        return ()
    wanted = targets(app, kind, options)
    if not wanted:
        return ()
    nid = notification_id(job_id, state.value, marker)
    messages: list[tuple[str, WebhookDelivery | EmailDelivery]] = []
    if "webhook" in wanted:
        messages.append(
            (
                "webhook",
                WebhookDelivery(
                    job_id=job_id, url=wanted["webhook"], state=state.value, notification_id=nid
                ),
            )
        )
    if "email" in wanted:
        messages.append(
            (
                "email",
                EmailDelivery(
                    job_id=job_id, to=wanted["email"], state=state.value, notification_id=nid
                ),
            )
        )
    return tuple(
        app.envelope(message, owner=NOTIFY_OWNER, idempotency_key=f"{nid}:{channel}", trace=trace)
        for channel, message in messages
    )


def follow_ups_of_row(app: Registry, row: JobRow, marker: str) -> tuple[Envelope, ...]:
    """`follow_ups` for a stored row that has just reached a final state (its deliveries
    continue the job's trace)."""
    return follow_ups(
        app,
        job_id=row.id,
        kind=row.kind,
        options=row.options,
        state=row.state,
        marker=marker,
        trace=row.trace,
    )
