"""Which host names and addresses are this machine's loopback: one rule for the web tier's
development mode (the `Host` of each request) and a worker's metrics endpoint."""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit


def localhost_name(name: str) -> bool:
    """Whether a host name is `localhost` or a name under it: loopback by definition
    (RFC 6761), whatever a resolver says."""
    return name == "localhost" or name.endswith(".localhost")


@functools.lru_cache(maxsize=64)  # every request asks it: the same few Hosts, parsed once
def loopback_host(host: str) -> bool:
    """Whether a `Host` header names this machine's loopback, with any port: `localhost`
    (or a name under it, RFC 6761) or a loopback address (`127.0.0.1`, `[::1]`)."""
    try:
        parts = urlsplit(f"//{host}")  # an unclosed `[::1` raises here
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        return False
    name = (parts.hostname or "").rstrip(".")  # `localhost.`: the same name, fully qualified
    if not name or "@" in host:  # no browser sends user info in Host
        return False
    if localhost_name(name):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def loopback_bind(host: str) -> bool:
    """Whether a server bound to `host` (an address or name, no port) listens on loopback
    only: `127.0.0.1`, `::1`, `localhost`."""
    return loopback_host(f"[{host}]" if ":" in host else host)
