"""The one rule for notification targets: what a callback URL and a notify_email must look
like, and which addresses a webhook may never reach.

Pure functions without I/O. The App checks a kind's default `callback_url` and a job's
delivery options with them, the web tier answers 422 with them, and the webhook notifier
applies the same rules when it sends (`webhook.check_target`): there the host name is
resolved and `refusal` is applied to every address it resolves to.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Longest callback URL accepted (characters): the web tier's query limit too.
MAX_CALLBACK_URL_LENGTH = 2048
#: Cloud metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba, Azure wireserver):
#: refused even when private targets are allowed, for no webhook receiver lives there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


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
    return None


def notify_email_error(address: str) -> str | None:
    """Why `address` is not an email address to notify, or None when it is one."""
    return None if _EMAIL.match(address) else "notify_email is not an email address"


def delivery_option_errors(callback_url: str | None, notify_email: str | None) -> dict[str, str]:
    """What is wrong with a job's delivery options, by option name (empty when nothing).

    An empty option is no option.
    """
    found = {
        "callback_url": callback_url_error(callback_url) if callback_url else None,
        "notify_email": notify_email_error(notify_email) if notify_email else None,
    }
    return {name: why for name, why in found.items() if why}


def refusal(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why a webhook may not go to `ip`, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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
        (not ip.is_global, "not a public address"),
    ):
        if test:
            return what
    return None


def callback_url_refusal(url: str, *, allow_private: bool = False) -> str | None:
    """Why a valid callback URL is refused now, or None: only a host that is an address
    literal is judged on submission; a name is resolved and judged when the webhook is
    sent, for it may resolve differently by then."""
    host = urlsplit(url).hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    why = refusal(ip, allow_private=allow_private)
    return None if why is None else f"{host} is {why}; webhooks go to public hosts"
