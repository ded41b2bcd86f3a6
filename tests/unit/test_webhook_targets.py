"""The webhook target check as a pure function with a stub resolver: no packet ever leaves
127.0.0.0/8 (the one request here goes to a receiver on 127.0.0.1)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import pytest

from offload.errors import DeliveryError, TargetRefused
from offload.notify.base import Notification
from offload.notify.webhook import WebhookNotifier, check_target, new_client, redact

from ..receivers import Receiver

PRIVATE = [
    ("10.0.0.1", "private"),
    ("10.255.255.254", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.10", "private"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("169.254.10.20", "link-local"),
    ("fe80::1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:127.0.0.1", "loopback"),
    ("100.64.0.1", "not a public address"),
    ("0.0.0.0", "not a unicast address"),
    ("224.0.0.1", "not a unicast address"),
]
PUBLIC = ["93.184.215.14", "172.32.0.1", "8.8.8.8", "2606:4700:4700::1111"]


class StubResolver:
    """Answers from a table and counts the look-ups; never touches the network."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return self.table[host]


def _literal(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@pytest.mark.parametrize(("ip", "why"), PRIVATE)
def test_a_private_address_literal_is_refused(ip: str, why: str) -> None:
    resolve = StubResolver({})
    with pytest.raises(TargetRefused, match=why):
        check_target(f"https://{_literal(ip)}/hook", resolve=resolve)
    assert resolve.calls == []  # a literal is checked as it is


@pytest.mark.parametrize(("ip", "why"), PRIVATE)
def test_a_name_that_resolves_to_a_private_address_is_refused(
    ip: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    resolve = StubResolver({"hooks.example.com": [ip]})
    with caplog.at_level(logging.WARNING, logger="offload.notify"):
        with pytest.raises(TargetRefused, match="no public address") as refused:
            check_target("https://hooks.example.com/hook", resolve=resolve)
    assert resolve.calls == [("hooks.example.com", 443)]
    # The reason, shown to the job's owner, gives neither the address the name resolved
    # to nor its kind (an owner would map the internal network by it); the log does
    assert ip not in str(refused.value) and why not in str(refused.value)
    assert why in caplog.text and str(ipaddress.ip_address(ip)) in caplog.text


def test_one_private_answer_among_public_ones_is_enough_to_refuse() -> None:
    resolve = StubResolver({"mixed.example.com": ["93.184.215.14", "10.0.0.7"]})
    with pytest.raises(TargetRefused, match="no public address"):
        check_target("http://mixed.example.com:8080/x", resolve=resolve)
    assert resolve.calls == [("mixed.example.com", 8080)]


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_are_allowed_and_connected_to_as_checked(ip: str) -> None:
    resolve = StubResolver({"hooks.example.com": [ip]})
    target = check_target("https://user:pw@hooks.example.com/in?x=1", resolve=resolve)
    # The request goes to the checked address, so a second DNS answer cannot redirect it.
    assert target.address == ip
    assert target.connect_url.host == ip and target.connect_url.path == "/in"
    assert target.host_header == "hooks.example.com"
    assert target.extensions == {"sni_hostname": "hooks.example.com"}
    assert len(resolve.calls) == 1


def test_allow_private_permits_private_and_loopback_but_never_metadata() -> None:
    resolve = StubResolver({"internal": ["10.0.0.5"], "meta": ["169.254.169.254"]})
    assert check_target("http://internal/x", resolve=resolve, allow_private=True).address == (
        "10.0.0.5"
    )
    assert check_target("http://127.0.0.1:9/x", resolve=resolve, allow_private=True)
    with pytest.raises(TargetRefused, match="no public address"):
        check_target("http://meta/latest", resolve=resolve, allow_private=True)
    with pytest.raises(TargetRefused, match="metadata"):
        check_target("http://169.254.169.254/latest", resolve=resolve, allow_private=True)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "https:///nohost", "not a url", ""]
)
def test_anything_but_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_target(url, resolve=StubResolver({}))


def test_a_name_that_does_not_resolve_is_a_retryable_failure() -> None:
    with pytest.raises(DeliveryError) as failure:
        check_target("https://gone.example.com/", resolve=StubResolver({}))
    assert not isinstance(failure.value, TargetRefused)


def test_shown_targets_lose_credentials_and_query() -> None:
    assert (
        redact("https://u:secret@h.example.com:8443/p?token=abc")
        == "https://h.example.com:8443/p?…"
    )
    assert redact("http://[::1]:80/x") == "http://[::1]:80/x"
    # A span's url.full: a valid URL, its keys kept and each value hidden
    assert (
        redact("https://u:pw@h.example.com/p?token=abc&v=2&flag=", query="REDACTED")
        == "https://h.example.com/p?token=REDACTED&v=REDACTED&flag=REDACTED"
    )
    assert redact("https://h.example.com/p", query="REDACTED") == "https://h.example.com/p"
    # a key that is not a plain name may be the secret itself: the whole query is hidden
    for query in ("s3cr3tT0ken", "sig%3Dabc", "v=1&t0k3n", "%74oken=x", "a" * 65 + "=1"):
        url = f"https://h.example.com/p?{query}"
        assert redact(url, query="REDACTED") == "https://h.example.com/p?REDACTED", query


@pytest.mark.anyio
async def test_the_notifier_connects_to_the_resolved_address_with_the_original_host() -> None:
    # Given a name that the (stub) resolver maps to the receiver on loopback,
    with Receiver() as receiver:
        resolve = StubResolver({"hooks.example.test": ["127.0.0.1"]})
        async with new_client() as client:
            notifier = WebhookNotifier(client, allow_private=True, resolve=resolve)
            url = f"http://hooks.example.test:{receiver.port}/in"
            note = Notification(
                id="msg_1", channel="webhook", target=url, event="job.succeeded",
                record={"id": "j", "state": "succeeded", "finished_at": None}, sent_at=1.0,
            )  # fmt: skip
            # when it delivers,
            receipt = await notifier.deliver(note)
    # then the request reached the checked address, named by its original host.
    assert receipt.code == 200
    (request,) = receiver.requests
    assert request.path == "/in"
    assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert "webhook-signature" not in request.headers  # no secrets configured
    assert resolve.calls == [("hooks.example.test", receiver.port)]


@pytest.mark.anyio
async def test_https_checks_the_certificate_of_the_name_while_connecting_to_the_address() -> None:
    import ssl

    import httpx
    import trustme

    # Given an HTTPS receiver on loopback with a certificate for hooks.example.test only,
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.example.test").configure_cert(server)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    resolve = StubResolver(
        {"hooks.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]}
    )
    with Receiver(tls=server) as receiver:
        async with httpx.AsyncClient(verify=client_context, trust_env=False) as client:
            notifier = WebhookNotifier(client, allow_private=True, resolve=resolve)

            def note(host: str) -> Notification:
                return Notification(
                    id="msg_2", channel="webhook", target=f"https://{host}:{receiver.port}/in",
                    event="job.succeeded", record={"id": "j", "finished_at": None}, sent_at=1.0,
                )  # fmt: skip

            # when it is named by that host (and reached at the address it resolved to),
            receipt = await notifier.deliver(note("hooks.example.test"))
            # then TLS verified the certificate against the name: delivered;
            assert receipt.code == 200
            assert receiver.requests[0].headers["host"] == f"hooks.example.test:{receiver.port}"
            # and a name the certificate does not cover fails, at the same address.
            with pytest.raises(DeliveryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                await notifier.deliver(note("other.example.test"))
    assert len(receiver.requests) == 1
