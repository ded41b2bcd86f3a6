"""Worker "hosts" as Linux network namespaces, each joined to this machine by a veth pair.

Host i is the namespace `{prefix}-{i}`; its veth pair is `{prefix}{i}h` (this machine's end)
and `{prefix}{i}n` (the namespace's end), on the /30 network `10.213.{i}.0/30`: this
machine's end is `.1` (the gateway, where the engines listen), the namespace's `.2`. A
namespace has its loopback and that one link route, and no default route: what runs in it
reaches only the gateway, so its traffic never leaves this machine.

Making and removing them needs root (CAP_NET_ADMIN) and `ip` from iproute2. `Hosts` removes
every namespace and veth it made on close, and `clean_leftovers` removes those of an earlier
run that died before its close (found by name prefix), with any process left inside them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

#: The names of everything made here start with it (namespaces, veth ends).
DEFAULT_PREFIX = "offso"
#: The first two octets of the hosts' networks: host i is on {base}.{i}.0/30.
DEFAULT_BASE = "10.213"
#: Most hosts one plan holds (one /30 per host in the third octet, 1..254).
MAX_HOSTS = 254
#: The longest interface name Linux takes (IFNAMSIZ - 1).
MAX_IFNAME = 15


@dataclass(frozen=True)
class Host:
    """One worker host: its namespace, veth ends and addresses."""

    index: int
    #: The network namespace (`ip netns exec NAME ...` runs a command on the host).
    name: str
    #: This machine's end of the veth pair, and the namespace's end.
    veth: str
    peer: str
    #: This machine's address on the pair (the engines listen on it), and the host's.
    gateway: str
    address: str

    @property
    def network(self) -> str:
        """The pair's /30 network in CIDR form."""
        return str(ipaddress.ip_interface(f"{self.gateway}/30").network)

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *command]


def plan(count: int, *, prefix: str = DEFAULT_PREFIX, base: str = DEFAULT_BASE) -> list[Host]:
    """The hosts 1..`count`: names and addresses, no side effect.

    Raises:
        ValueError: `count` outside 1..MAX_HOSTS, a prefix that makes an interface name too
            long or holds characters other than letters, digits and dashes, or a `base`
            that is not two octets of a private (RFC 1918) network.
    """
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"hosts must be 1..{MAX_HOSTS}, not {count}")
    if not prefix or not all(c.isascii() and (c.isalnum() or c == "-") for c in prefix):
        raise ValueError(f"prefix must be letters, digits and dashes, not {prefix!r}")
    if len(f"{prefix}{count}h") > MAX_IFNAME:
        raise ValueError(f"prefix {prefix!r} makes interface names over {MAX_IFNAME} chars")
    if not ipaddress.ip_network(f"{base}.0.0/16").is_private:
        raise ValueError(f"base {base!r} is not a private network")
    return [
        Host(
            index=i,
            name=f"{prefix}-{i}",
            veth=f"{prefix}{i}h",
            peer=f"{prefix}{i}n",
            gateway=f"{base}.{i}.1",
            address=f"{base}.{i}.2",
        )
        for i in range(1, count + 1)
    ]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def namespaces(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The network namespaces whose name is `{prefix}-...`."""
    out = _ip("netns", "list").stdout
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return [n for n in names if n.startswith(f"{prefix}-")]


def links(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The interfaces of this namespace whose name starts with `prefix` and a digit."""
    out = _ip("-o", "link", "show").stdout
    found = []
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        rest = name.removeprefix(prefix)
        if rest != name and rest[:1].isdigit():
            found.append(name)
    return found


def pids(name: str) -> list[int]:
    """The processes in namespace `name` (none if it is gone)."""
    out = _ip("netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_inside(name: str) -> None:
    """SIGKILL every process still in namespace `name` (a namespace with processes in it
    outlives its name, and keeps its veth pair)."""
    for pid in pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove(names: Sequence[str], veths: Sequence[str]) -> None:
    """Remove the namespaces `names` (their processes killed) and the veth ends `veths`;
    what is gone already is skipped."""
    for name in names:
        _kill_inside(name)
        _ip("netns", "delete", name, check=False)
    for veth in veths:  # gone with its peer's namespace, unless that failed half-way
        _ip("link", "delete", veth, check=False)


def clean_leftovers(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove the namespaces and veth ends an earlier run with `prefix` left; their names."""
    found = namespaces(prefix)
    remove(found, [])
    veths = links(prefix)
    remove([], veths)
    return found + veths


#: The capabilities making hosts takes: CAP_NET_ADMIN (links, addresses) and CAP_SYS_ADMIN
#: (`ip netns add` mounts the namespace under /run/netns).
NEEDED_CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def available() -> str | None:
    """None when hosts can be made here, else why not (not root, a container without the
    capabilities, no `ip`)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth pairs)"
    caps = _effective_caps()
    missing = [name for name, bit in NEEDED_CAPS.items() if not caps >> bit & 1]
    if missing:
        return f"needs {' and '.join(missing)}"
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2)"
    return None


class Hosts:
    """`count` worker hosts, made on enter (or `open`) and removed on exit (or `close`),
    also when making them failed half-way."""

    def __init__(self, count: int, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self.hosts = plan(count, prefix=prefix)
        self._made: list[Host] = []

    def open(self) -> list[Host]:
        for host in self.hosts:
            self._made.append(host)  # before making it: close removes a half-made one
            self._make(host)
        return self.hosts

    def close(self) -> None:
        made, self._made = self._made, []
        remove([h.name for h in made], [h.veth for h in made])

    def _make(self, host: Host) -> None:
        _ip("netns", "add", host.name)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.peer)
        _ip("link", "set", host.peer, "netns", host.name)
        _ip("addr", "add", f"{host.gateway}/30", "dev", host.veth)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.name, "addr", "add", f"{host.address}/30", "dev", host.peer)
        _ip("-n", host.name, "link", "set", host.peer, "up")
        _ip("-n", host.name, "link", "set", "lo", "up")

    def __enter__(self) -> list[Host]:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Hosts({len(self.hosts)}, prefix={self.prefix!r})"


__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_PREFIX",
    "Host",
    "Hosts",
    "available",
    "clean_leftovers",
    "links",
    "namespaces",
    "plan",
    "remove",
]
