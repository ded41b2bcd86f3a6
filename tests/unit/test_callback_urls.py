"""One callback-URL rule: the kind default, the job option and the delivery-time check agree,
and a host that stands for an address without a lookup is refused on submission as it would
be when sent (names are judged when sent)."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from offload import App, Message
from offload.errors import ConfigurationError, TargetRefused
from offload.notify.targets import (
    MAX_CALLBACK_URL_LENGTH,
    address_of,
    callback_url_error,
    callback_url_refusal,
    delivery_option_errors,
    notify_email_error,
)
from offload.notify.webhook import check_target
from offload.settings import Settings


class Thing(Message):
    pass


GOOD = [
    "https://hooks.example.com/in",
    "http://hooks.example.com:8080/x?token=abc#frag",
    "https://user:pw@hooks.example.com/in",
    "HTTPS://Hooks.Example.com/in",
    "http://[2606:4700:4700::1111]/x",
    "https://bücher.example/in",
    "https://xn--bcher-kva.example/in",
    "https://" + "a" * (MAX_CALLBACK_URL_LENGTH - len("https://")),
]
BAD = [
    ("ftp://example.com/x", "http:// or https://"),
    ("javascript:alert(1)", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("hooks.example.com/in", "http:// or https://"),
    ("https:///nohost", "host"),
    ("http://:80/x", "host"),
    ("http://", "host"),
    ("http://receiver.example/ has a space", "spaces"),
    ("http://receiver.example/\nX-Injected: 1", "control"),
    ("http://receiver.example:99999/", "not a valid URL"),
    ("http://receiver.example:port/", "not a valid URL"),
    ("http://[::1/x", "not a valid URL"),
    ("http://0177.0.0.1/", "not a valid URL"),  # the sender's parser refuses these
    ("http://①②⑦.0.0.1/", "not a valid URL"),
    ("http://xn--a-/", "not a valid URL"),  # IDNA labels that do not decode
    ("http://xn--/", "not a valid URL"),
    ("http://xn--ls8h.example/", "not a valid URL"),
    ("https://" + "a" * MAX_CALLBACK_URL_LENGTH, "longer than"),
]


def _resolve(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


@pytest.mark.parametrize("url", GOOD)
def test_a_callback_url_is_accepted_by_every_entry_point(url: str) -> None:
    app = App("rule", settings=Settings(url="memory://"))
    assert callback_url_error(url) is None
    app.message("t.thing", callback_url=url)(Thing)
    assert app.envelope(Thing(), callback_url=url).options == {"callback_url": url}
    assert check_target(url, resolve=_resolve).address


@pytest.mark.parametrize(("url", "why"), BAD)
def test_a_bad_callback_url_is_refused_by_every_entry_point_alike(url: str, why: str) -> None:
    app = App("rule", settings=Settings(url="memory://"))
    app.message("t.thing")(Thing)
    error = callback_url_error(url)
    assert error is not None and why in error
    with pytest.raises(ConfigurationError, match="callback_url"):
        app.message("t.hooked", callback_url=url)
    with pytest.raises(ValueError, match="callback_url"):
        app.envelope(Thing(), callback_url=url)
    with pytest.raises(TargetRefused, match="callback_url"):
        check_target(url, resolve=_resolve)
    assert delivery_option_errors(url, None) == {"callback_url": error}


def test_empty_delivery_options_are_no_options() -> None:
    assert delivery_option_errors("", "") == {}
    assert delivery_option_errors(None, None) == {}
    assert delivery_option_errors(None, "nope") == {
        "notify_email": "notify_email is not an email address (one address, local@domain)"
    }


@pytest.mark.parametrize(
    "address",
    [
        "ann@example.com",
        "me.you+tag@sub.example.co.uk",
        "o'neil@x.io",
        "jörg@bücher.de",
        "a_b@x-y.example.com",
        "x@x.xn--p1ai",
        "x" * 64 + "@example.com",
    ],
)
def test_one_email_address_is_an_address_to_notify(address: str) -> None:
    assert notify_email_error(address) is None
    # and a message's To field names it alone, as it is
    message = EmailMessage()
    message["To"] = address
    assert [a.addr_spec for a in message["To"].addresses] == [address]


@pytest.mark.parametrize(
    "address",
    [
        # what a To field reads as several recipients, or a group of them (a relay would
        # mail each: `root`, `postmaster`, the relay's own mailboxes),
        "root,postmaster,me@example.com",
        "a@example.com, b@example.com",
        "list:root,abuse;x@example.com",
        "a@example.com;b@example.com",
        "Ann <ann@example.com>",
        '"a b"@example.com',
        "(x)a@example.com",
        # and what is not one address at all
        "a b@example.com",
        "a\x01b@example.com",
        "ann@example.com\n",
        # an encoded word, which a To field decodes into a list, or a line break
        "=?utf-8?q?victim=40other.example=2C_x?=@example.com",
        "=?utf-8?q?a=0D=0ABcc=3A_evil=40attacker.example?=@example.com",
        "ann@localhost",
        "ann@[127.0.0.1]",
        "ann@1.2.3.4",
        ".ann@example.com",
        "ann.@example.com",
        "a..b@example.com",
        "ann@.example.com",
        "ann@example..com",
        "ann@-example.com",
        "ann@example-.com",
        "ann@example.com-",
        "x" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_anything_but_one_address_is_refused_to_notify(address: str) -> None:
    assert notify_email_error(address) is not None


@pytest.mark.parametrize(
    ("url", "allow_private", "why"),
    [
        ("https://hooks.example.com/in", False, None),  # a name: judged when sent
        ("http://dead.beef/in", False, None),
        ("https://localhost/in", False, "loopback"),  # always loopback (RFC 6761)
        ("https://hooks.localhost/in", False, "loopback"),
        ("https://localhost/in", True, None),
        ("http://127.1/", False, "loopback"),  # numbers the resolver reads as IPv4
        ("http://0x7f.1/", False, "loopback"),
        ("http://2130706433/", False, "loopback"),
        ("http://017700000001/", False, "loopback"),
        ("http://2852039166/", True, "metadata"),  # 169.254.169.254
        ("http://localhost./", False, "loopback"),  # a final dot names the same host
        ("http://127.0.0.1./", False, "loopback"),
        ("http://169.254.169.254./", True, "metadata"),
        ("http://[::127.0.0.1]/", False, "loopback"),  # IPv6 forms that carry an IPv4 one
        ("http://[64:ff9b::7f00:1]/", False, "loopback"),  # NAT64
        ("http://[2002:7f00:1::]/", False, "loopback"),  # 6to4
        ("http://[64:ff9b::a9fe:a9fe]/", True, "metadata"),
        ("http://[2002:a9fe:a9fe::]/", True, "metadata"),
        ("http://[2002:5db8:d70e::]/", False, None),  # 6to4 of a public address
        ("http://[::ffff:0:7f00:1]/", False, "loopback"),  # IPv4-translated (RFC 2765)
        ("http://[::ffff:0:a9fe:a9fe]/", True, "metadata"),
        ("http://[::ffff:0:a00:1]/", True, None),
        ("http://[64:ff9b:1:a9fe:a9:fe00::]/", True, "metadata"),  # local-use NAT64: /48,
        ("http://[64:ff9b:1:a9:fe:a9fe::]/", True, "metadata"),  # /56,
        ("http://[64:ff9b:1:1:a9:fea9:fe00:0]/", True, "metadata"),  # /64,
        ("http://[64:ff9b:1::a9fe:a9fe]/", True, "metadata"),  # /96 prefixes
        ("http://[64:ff9b:1:5db8:d7:e00::]/", False, "private"),  # (a local translator)
        ("http://[64:ff9b:1::a00:1]/", False, "private"),
        ("http://[64:ff9b:1::a00:1]/", True, None),
        ("http://[fd00:ec2::254%25eth0]/", True, "metadata"),  # a zone: the same address
        ("http://[fe80::1%25eth0]/", False, "link-local"),
        ("http://[fec0::1]/", False, "not a public"),  # the old site-local
        ("http://[fec0::1]/", True, None),
        ("http://[5f00::1]/", False, "not a public"),  # segment routing (RFC 9602)
        ("http://[3fff::1]/", False, "not a public"),  # documentation (RFC 9637)
        ("http://[::1:2:3:4]/", False, "not a public"),  # outside 2000::/3
        ("http://[2606:4700::1111]/", False, None),  # global unicast
        ("https://93.184.215.14/in", False, None),
        ("https://127.0.0.1:9/in", False, "loopback"),
        ("https://[::1]/in", False, "loopback"),
        ("https://10.0.0.1/in", False, "private"),
        ("https://10.0.0.1/in", True, None),
        ("http://169.254.169.254/latest", True, "metadata"),
    ],
)
def test_a_host_that_needs_no_lookup_is_judged_on_submission(
    url: str, allow_private: bool, why: str | None
) -> None:
    refused = callback_url_refusal(url, allow_private=allow_private)
    if why is None:
        assert refused is None
    else:
        assert refused is not None and why in refused
        # and the sender, resolving as the system does, refuses it alike
        resolved = {"localhost": "127.0.0.1", "hooks.localhost": "127.0.0.1"}

        def system(host: str, port: int) -> list[str]:
            return [resolved.get(host) or str(address_of(host))]

        with pytest.raises(TargetRefused, match=why):
            check_target(url, resolve=system, allow_private=allow_private)
