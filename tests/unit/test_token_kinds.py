"""OFFLOAD_API_TOKENS with tokens limited to kinds: `token=principal[kind|kind]`."""

from __future__ import annotations

import pytest

from offload import ConfigurationError, Settings
from offload.web.auth import TokenAuth


@pytest.mark.parametrize(
    ("raw", "tokens", "kinds"),
    [
        ("t1=alice", {"t1": "alice"}, {}),
        ("t1=ci[reports.export]", {"t1": "ci"}, {"t1": {"reports.export"}}),
        (
            "t1=alice, t2 = ci [ reports.export | images.resize ] ,",
            {"t1": "alice", "t2": "ci"},
            {"t2": {"reports.export", "images.resize"}},
        ),
        ("t1=svc=reports[a]", {"t1": "svc=reports"}, {"t1": {"a"}}),
    ],
)
def test_tokens_may_be_limited_to_kinds(
    raw: str, tokens: dict[str, str], kinds: dict[str, set[str]]
) -> None:
    settings = Settings.from_env({"OFFLOAD_API_TOKENS": raw})
    assert settings.api_tokens == tokens
    assert settings.token_kinds == {token: frozenset(k) for token, k in kinds.items()}


@pytest.mark.parametrize("raw", ["t1=alice[]", "t1=[reports.export]", "t1=alice[ | ]"])
def test_a_limit_without_kinds_or_principal_is_a_configuration_error(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=r"token=principal\[kind\|kind\]"):
        Settings.from_env({"OFFLOAD_API_TOKENS": raw})


class Conn:
    def __init__(self, authorization: str | None) -> None:
        self.headers = {"authorization": authorization} if authorization else {}


def test_token_auth_names_the_principal_and_the_kinds_of_the_token_sent() -> None:
    auth = TokenAuth(Settings.from_env({"OFFLOAD_API_TOKENS": "t1=alice,t2=ci[a|b]"}))
    assert auth(Conn("Bearer t1")) == "alice"  # type: ignore[arg-type]
    assert auth.kinds_of(Conn("Bearer t1")) is None  # type: ignore[arg-type]
    assert auth(Conn("bearer t2")) == "ci"  # type: ignore[arg-type]
    assert auth.kinds_of(Conn("Bearer t2")) == {"a", "b"}  # type: ignore[arg-type]
    for header in (None, "Bearer", "Bearer nope", "Basic t1"):
        assert auth(Conn(header)) is None  # type: ignore[arg-type]
        assert auth.kinds_of(Conn(header)) is None  # type: ignore[arg-type]


def test_without_tokens_every_caller_is_local() -> None:
    auth = TokenAuth(Settings())
    assert auth(Conn(None)) == "local"  # type: ignore[arg-type]
    assert auth.kinds_of(Conn("Bearer x")) is None  # type: ignore[arg-type]
