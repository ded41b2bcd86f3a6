"""The scale-out benchmark's worker hosts (bench/netns.py): a namespace reaches this machine
only through its veth pair, and closing (or cleaning up after a run that died) leaves no
namespace, veth or process behind. Needs root; a few hundred milliseconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench import netns
from bench.chaos.engines import PrivateRedis

from ..chaos.engine_support import require_engine

pytestmark = pytest.mark.skipif(
    netns.available() is not None, reason=f"worker hosts: {netns.available()}"
)


def prefix() -> str:
    """A prefix of this test process's own, so a benchmark running meanwhile is not touched."""
    return f"ot{os.getpid() % 100_000}"


def connect_from(host: netns.Host, address: str, port: int) -> int:
    """Exit status of a TCP connect to address:port from inside `host` (0: connected)."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {port}), timeout=3).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run(host.argv([sys.executable, "-c", code]), timeout=30).returncode


def test_hosts_reach_their_gateway_only_and_leave_nothing_behind() -> None:
    name = prefix()
    with socket.socket() as loopback, socket.socket() as gateway:
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        # Given two hosts,
        with netns.Hosts(2, prefix=name) as hosts:
            gateway.bind((hosts[1].gateway, 0))
            gateway.listen()
            assert sorted(netns.namespaces(name)) == [h.name for h in hosts]
            assert sorted(netns.links(name)) == sorted(h.veth for h in hosts)
            # then a host reaches a listener on its gateway, and not this machine's
            # loopback (its own loopback is its own) nor another host's gateway.
            assert connect_from(hosts[1], hosts[1].gateway, gateway.getsockname()[1]) == 0
            assert connect_from(hosts[1], "127.0.0.1", loopback.getsockname()[1]) != 0
            assert connect_from(hosts[0], hosts[1].gateway, gateway.getsockname()[1]) != 0
    # When closed, nothing of theirs is left.
    assert netns.namespaces(name) == [] and netns.links(name) == []


def test_a_failure_inside_still_removes_the_hosts() -> None:
    name = prefix()
    with pytest.raises(RuntimeError, match="boom"), netns.Hosts(1, prefix=name):
        raise RuntimeError("boom")
    assert netns.namespaces(name) == [] and netns.links(name) == []


def test_leftovers_of_a_run_that_died_are_cleaned_up_with_their_processes() -> None:
    name = prefix()
    # Given hosts never closed (their run was killed) with a process still inside one,
    hosts = netns.Hosts(2, prefix=name).open()
    sleeper = subprocess.Popen(hosts[0].argv(["sleep", "600"]))
    try:
        # (inside it: a clean-up before `ip netns exec` entered would miss it, and the
        # namespace would outlive its name with the process in it)
        deadline = time.monotonic() + 30
        while not netns.pids(hosts[0].name) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert netns.pids(hosts[0].name), "the process never entered the namespace"
        # when a later run cleans up by prefix,
        removed = netns.clean_leftovers(name)
        # then the namespaces, their veths and the process are gone. (The kernel removes a
        # namespace's veth pair after the namespace, in the background: the clean-up may
        # find a veth end still there and remove it itself.)
        spaces, veths = {h.name for h in hosts}, {h.veth for h in hosts}
        assert spaces <= set(removed) <= spaces | veths
        assert sleeper.wait(timeout=30) != 0
        deadline = time.monotonic() + 30
        while netns.links(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert netns.namespaces(name) == [] and netns.links(name) == []
    finally:
        sleeper.kill()
        sleeper.wait()  # reaped here: not a ResourceWarning in whichever test runs next
        netns.remove([h.name for h in hosts], [h.veth for h in hosts])


def test_private_redis_answers_a_host_through_its_gateway(tmp_path: Path) -> None:
    require_engine("redis")
    with netns.Hosts(1, prefix=prefix()) as hosts:
        host = hosts[0]
        with PrivateRedis(tmp_path, listen=[host.gateway]) as engine:
            assert engine.url_via(host.gateway) == f"redis://{host.gateway}:{engine.port}/0"
            code = (
                "import redis\n"
                f"assert redis.Redis.from_url({engine.url_via(host.gateway)!r}).ping()\n"
            )
            ping = subprocess.run(host.argv([sys.executable, "-c", code]), timeout=60)
            assert ping.returncode == 0
