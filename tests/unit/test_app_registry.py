"""App registry and envelope stamping, Settings from the environment, and the bind check."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

from offload import App, ConfigurationError, Context, Message, Settings, SyncContext, UnknownKind
from offload._links import signing_key
from offload.app import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE
from offload.clock import FakeClock
from offload.web import check_bind

NOW = 1_800_000_000.0
T = TypeVar("T")


def _app() -> App:
    return App("test", url="memory://", settings=Settings(url="memory://"), clock=FakeClock(NOW))


def _registered(app: App, kind: str = "reports.export", **options: object) -> type[Message]:
    class Export(Message):
        user_id: str
        period: str = "2026-10"

    return app.message(kind, **options)(Export)  # type: ignore[arg-type]


# -- registry -------------------------------------------------------------------------------


def test_message_registration_stamps_kind_version_and_queue() -> None:
    app = _app()
    cls = _registered(
        app,
        "reports.export",
        version=3,
        queue="reports",
        max_attempts=9,
        timeout=timedelta(minutes=2),
    )
    assert (cls.__kind__, cls.__version__, cls.__queue__) == ("reports.export", 3, "reports")
    spec = app.spec_of("reports.export")
    assert spec.cls is cls and spec.max_attempts == 9 and spec.timeout == 120.0
    assert app.spec_of(cls) is spec
    assert app.queues == ["reports"]


def test_message_without_queue_routes_to_the_default_queue() -> None:
    app = _app()
    cls = _registered(app, "k")
    assert cls.__queue__ == DEFAULT_QUEUE
    assert app.spec_of(cls).max_attempts == DEFAULT_MAX_ATTEMPTS


@pytest.mark.parametrize("thing", [dict, object, 42, lambda: None])
def test_message_rejects_a_class_that_is_not_a_message(thing: object) -> None:
    with pytest.raises(ConfigurationError, match=r"offload\.Message"):
        _app().message("k")(thing)  # type: ignore[type-var]


def test_message_rejects_a_duplicate_kind() -> None:
    app = _app()
    _registered(app, "k")
    with pytest.raises(ConfigurationError, match="declared twice"):
        _registered(app, "k")


def test_message_registering_the_same_class_again_is_harmless() -> None:
    app = _app()
    cls = _registered(app, "k")
    assert app.message("k")(cls) is cls
    assert list(app.kinds) == ["k"]


def test_handles_registers_a_handler_with_its_options() -> None:
    app = _app()
    cls = _registered(app, "k", timeout=30)

    @app.handles(cls, max_attempts=2)
    async def handler(msg: Message, ctx: object) -> None: ...

    @app.handles(_registered(app, "sync"), timeout=timedelta(seconds=5))
    def plain(msg: Message, ctx: object) -> None: ...

    spec = app.handlers["k"]
    assert spec.fn is handler and spec.is_async and spec.max_attempts == 2
    assert spec.timeout == 30  # falls back to the message's timeout
    assert app.handlers["sync"].timeout == 5.0 and not app.handlers["sync"].is_async


def test_handles_rejects_a_second_handler_for_one_kind() -> None:
    app = _app()
    cls = _registered(app, "k")
    app.handles(cls)(lambda msg, ctx: None)
    with pytest.raises(ConfigurationError, match="already has a handler"):
        app.handles(cls)(lambda msg, ctx: None)


def test_handles_on_an_unregistered_class_raises_unknown_kind() -> None:
    class Loose(Message):
        x: int

    with pytest.raises(UnknownKind):
        _app().handles(Loose)


def test_handles_on_a_class_registered_with_another_app_raises_unknown_kind() -> None:
    cls = _registered(_app(), "elsewhere")
    with pytest.raises(UnknownKind):
        _app().handles(cls)


def test_handles_on_an_unregistered_subclass_raises_unknown_kind() -> None:
    app = _app()
    parent = _registered(app, "parent")

    class Child(parent):  # type: ignore[valid-type, misc]
        extra: int = 0

    with pytest.raises(UnknownKind):
        app.handles(Child)


def test_a_job_that_is_no_message_is_a_type_error_saying_so() -> None:
    app = _app()
    _registered(app, "known")
    for bad, named in (({"n": 1}, "not a dict"), ([1], "not a list"), ("x", "not a str")):
        with pytest.raises(TypeError, match=f"a job is a message .*{named}"):
            app.envelope(bad)  # type: ignore[arg-type]  # (it raised AttributeError: __kind__)

    class Loose(Message):
        x: int

    with pytest.raises(UnknownKind, match=r"Loose is no message kind: declare it with @app"):
        app.envelope(Loose(x=1))


def test_spec_of_an_unknown_kind_raises_unknown_kind() -> None:
    with pytest.raises(UnknownKind, match="nope"):
        _app().spec_of("nope")


# -- envelope stamping ----------------------------------------------------------------------


def test_envelope_stamps_id_times_routing_and_budget() -> None:
    app = _app()
    cls = _registered(app, "reports.export", version=2, queue="reports", max_attempts=4, timeout=60)
    env = app.envelope(cls(user_id="u1"))
    assert env.kind == "reports.export" and env.version == 2 and env.queue == "reports"
    assert env.payload == {"user_id": "u1", "period": "2026-10"}
    assert env.run_at == env.enqueued_at == NOW
    assert env.attempt == 0 and env.max_attempts == 4 and env.timeout == 60
    assert env.priority == 0 and env.owner == "local" and env.idempotency_key is None
    assert env.options == {} and env.trace is None
    assert app.envelope(cls(user_id="u1")).id != env.id


@pytest.mark.parametrize(
    ("delay", "run_at"),
    [
        (0.3, NOW + 0.3),
        (60, NOW + 60),
        (timedelta(minutes=5), NOW + 300),
        (-10, NOW),  # a negative delay runs now
        (0, NOW),
    ],
)
def test_envelope_delay_sets_run_at(delay: float | timedelta, run_at: float) -> None:
    app = _app()
    env = app.envelope(_registered(app)(user_id="u1"), delay=delay)
    assert env.run_at == pytest.approx(run_at)
    assert env.enqueued_at == NOW


@pytest.mark.parametrize(
    ("when", "run_at"),
    [
        (datetime.fromtimestamp(NOW + 3600, UTC), NOW + 3600),
        (datetime.fromtimestamp(NOW + 60, timezone(timedelta(hours=-5))), NOW + 60),
        (datetime.fromtimestamp(NOW - 3600, UTC), NOW),  # in the past: runs now
    ],
)
def test_envelope_aware_run_at_sets_run_at(when: datetime, run_at: float) -> None:
    app = _app()
    env = app.envelope(_registered(app)(user_id="u1"), run_at=when)
    assert env.run_at == pytest.approx(run_at)


def test_envelope_naive_run_at_raises_value_error() -> None:
    app = _app()
    with pytest.raises(ValueError, match="timezone-aware"):
        app.envelope(_registered(app)(user_id="u1"), run_at=datetime(2030, 1, 1))


def test_envelope_refuses_an_empty_idempotency_key() -> None:
    # An empty key (an unset variable) would make every later enqueue a repeat of the first.
    app = _app()
    with pytest.raises(ValueError, match="idempotency_key must not be empty"):
        app.envelope(_registered(app)(user_id="u1"), idempotency_key="")


def test_envelope_refuses_delay_and_run_at_both() -> None:
    # As the API does (a 422): one of them would be dropped without a word.
    app = _app()
    with pytest.raises(ValueError, match="give delay or run_at, not both"):
        app.envelope(
            _registered(app)(user_id="u1"), delay=5, run_at=datetime.fromtimestamp(NOW + 100, UTC)
        )


def test_envelope_carries_priority_key_owner_budget_and_options() -> None:
    app = _app()
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    env = app.envelope(
        _registered(app, max_attempts=4)(user_id="u1"),
        priority=-3,
        idempotency_key="once",
        owner="alice",
        max_attempts=9,
        callback_url="https://example.com/cb",
        trace=trace,
    )
    assert env.priority == -3 and env.idempotency_key == "once" and env.owner == "alice"
    assert env.max_attempts == 9  # the caller's budget overrides the message's
    assert env.options == {"callback_url": "https://example.com/cb"}
    assert env.trace == trace


def test_envelope_max_attempts_defaults_from_the_message() -> None:
    app = _app()
    assert app.envelope(_registered(app, "a", max_attempts=7)(user_id="u")).max_attempts == 7
    assert app.envelope(_registered(app, "b")(user_id="u")).max_attempts == DEFAULT_MAX_ATTEMPTS


def test_envelope_of_an_unregistered_message_raises_unknown_kind() -> None:
    class Loose(Message):
        x: int

    with pytest.raises(UnknownKind):
        _app().envelope(Loose(x=1))


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "tokens"),
    [
        (None, {}),
        ("", {}),
        ("t1=alice", {"t1": "alice"}),
        ("t1=alice,t2=bob", {"t1": "alice", "t2": "bob"}),
        (" t1 = alice , t2=bob ,", {"t1": "alice", "t2": "bob"}),
        ("t1=svc=reports", {"t1": "svc=reports"}),
    ],
)
def test_settings_parse_api_tokens(raw: str | None, tokens: dict[str, str]) -> None:
    env = {} if raw is None else {"OFFLOAD_API_TOKENS": raw}
    settings = Settings.from_env(env)
    assert settings.api_tokens == tokens
    assert settings.dev_mode is (not tokens)


@pytest.mark.parametrize("raw", ["t1", "t1=", "=alice", " = ", "t1=alice,bob", "t1=alice,=x"])
def test_settings_malformed_api_tokens_raise_configuration_error(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="OFFLOAD_API_TOKENS"):
        Settings.from_env({"OFFLOAD_API_TOKENS": raw})


def test_settings_defaults_and_overrides() -> None:
    key = "k" * 32
    settings = Settings.from_env(
        {"OFFLOAD_URL": "sqlite:///x.db", "OFFLOAD_LEASE": "12.5", "OFFLOAD_SECRET_KEY": key},
        blobs_url="files",
    )
    assert settings.url == "sqlite:///x.db" and settings.lease_s == 12.5
    assert settings.secret_key == key.encode() and settings.blobs_url == "files"
    assert Settings.from_env({}).url == "sqlite:///offload.db"


@pytest.mark.parametrize("key", ["k", "a-passphrase-of-31-bytes-longxx"])
def test_a_signing_key_too_short_to_keep_links_safe_is_refused(key: str, tmp_path: Path) -> None:
    # A key guessed offline from one signed link forges every link: from the environment,
    with pytest.raises(ConfigurationError, match=f"OFFLOAD_SECRET_KEY is {len(key)} bytes"):
        Settings.from_env({"OFFLOAD_SECRET_KEY": key})
    # and in code, once anything would sign with it.
    settings = Settings(blobs_url=str(tmp_path / "blobs"), secret_key=key.encode())
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        signing_key(settings)
    long_enough = key.encode().ljust(32, b"x")
    assert signing_key(settings.with_(secret_key=long_enough)) == long_enough


NUMBERS = [
    "OFFLOAD_MAX_BODY_BYTES",
    "OFFLOAD_CLAIM_CHECK_BYTES",
    "OFFLOAD_LINK_TTL",
    "OFFLOAD_LEASE",
    "OFFLOAD_RETENTION",
    "OFFLOAD_WEBHOOK_TIMEOUT",
    "OFFLOAD_NOTIFY_BACKOFF",
    "OFFLOAD_CONNECT_TIMEOUT",
    "OFFLOAD_RETRY_DEADLINE",
]


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("raw", ["lots", "nan", "-1", "-inf"])
def test_settings_bad_numbers_raise_configuration_error_naming_them(name: str, raw: str) -> None:
    # nan, inf and a negative number were taken (a prune then failed every five minutes)
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: raw})


def test_retention_may_be_inf_and_other_numbers_may_not() -> None:
    assert Settings.from_env({"OFFLOAD_RETENTION": "inf"}).retention_s == float("inf")
    assert Settings.from_env({"OFFLOAD_RETENTION": "0"}).retention_s == 0
    for name in (n for n in NUMBERS if n != "OFFLOAD_RETENTION"):
        with pytest.raises(ConfigurationError, match=f"{name} must be a (finite|whole) number"):
            Settings.from_env({name: "inf"})
    with pytest.raises(ConfigurationError, match="OFFLOAD_LEASE must be more than 0"):
        Settings.from_env({"OFFLOAD_LEASE": "0"})
    # past the backends' time range: every claim (a lease) or every prune failed
    for name in ("OFFLOAD_LEASE", "OFFLOAD_RETENTION"):
        with pytest.raises(ConfigurationError, match=f"{name} must be at most 1e\\+09"):
            Settings.from_env({name: "1e20"})
    assert Settings.from_env({"OFFLOAD_RETENTION": "1e9"}).retention_s == 1e9
    with pytest.raises(ConfigurationError, match="OFFLOAD_MAX_BODY_BYTES must be at most"):
        Settings.from_env({"OFFLOAD_MAX_BODY_BYTES": str(2**41)})


def test_settings_read_the_process_environment(
    workdir: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_API_TOKENS", "tok=carol")
    assert Settings.from_env().api_tokens == {"tok": "carol"}


# -- bind check (pure function calls; no sockets are opened) --------------------------------

DEV = Settings()
SECURED = Settings(api_tokens={"tok": "alice"})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_dev_mode_allows_loopback_hosts(host: str) -> None:
    check_bind(host, DEV)  # does not raise


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "api.example.com", "myhost"]
)
def test_dev_mode_refuses_public_hosts(host: str) -> None:
    with pytest.raises(ConfigurationError, match="OFFLOAD_API_TOKENS"):
        check_bind(host, DEV)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "api.example.com", "127.0.0.1"])
def test_with_tokens_any_host_is_allowed(host: str) -> None:
    check_bind(host, SECURED)  # does not raise
    assert not SECURED.dev_mode


def test_upgraders_are_registered_per_kind_and_step() -> None:
    app = App("upgrades", url="memory://", settings=Settings(url="memory://"))

    @app.upgrade("reports.export", 1)
    def one_to_two(payload: dict[str, object]) -> dict[str, object]:
        return {**payload, "format": "pdf"}

    assert app.upgraders == {"reports.export": {1: one_to_two}}
    with pytest.raises(ConfigurationError, match="already has an upgrader from 1"):
        app.upgrade("reports.export", 1)(one_to_two)
    with pytest.raises(ConfigurationError, match="count from 1"):
        app.upgrade("reports.export", 0)


def test_handles_refuses_a_handler_the_worker_could_not_call() -> None:
    app = _app()
    cls = _registered(app, "k")

    def without_context(msg: Message) -> None: ...

    def three(msg: Message, ctx: object, extra: int) -> None: ...

    for wrong in (without_context, three, lambda: None):
        with pytest.raises(ConfigurationError, match=r"must take the message and the context"):
            app.handles(cls)(wrong)
    with pytest.raises(ConfigurationError, match="must be a function"):
        app.handles(cls)("handler")  # type: ignore[arg-type]
    assert "k" not in app.handlers

    def flexible(msg: Message, ctx: object, extra: int = 0, *more: object) -> None: ...

    assert app.handles(cls)(flexible) is flexible


def test_an_async_handler_typed_with_the_plain_handlers_context_is_refused() -> None:
    # ctx.progress(...) unawaited there would do nothing: an async handler gets a Context
    app = _app()

    async def typed_as_a_class(msg: Message, ctx: SyncContext) -> None: ...

    async def typed_as_text(msg: Message, ctx: "SyncContext") -> None: ...  # noqa: UP037

    for wrong in (typed_as_a_class, typed_as_text):
        with pytest.raises(ConfigurationError, match="is async: its context is a Context"):
            app.handles(_registered(app, wrong.__name__))(wrong)

    def plain(msg: Message, ctx: SyncContext) -> None: ...

    async def awaiting(msg: Message, ctx: Context) -> None: ...

    app.handles(_registered(app, "plain"))(plain)
    app.handles(_registered(app, "awaiting"))(awaiting)


class Invoice(Message):
    number: int


class Refund(Message):
    number: int


def _inject(session: str) -> Callable[[Callable[..., T]], Callable[[Message, object], T]]:
    """A decorator as projects write them: the handler's extra argument filled in."""

    def decorate(fn: Callable[..., T]) -> Callable[[Message, object], T]:
        @functools.wraps(fn)
        def wrapper(msg: Message, ctx: object) -> T:
            return fn(msg, ctx, session)

        return wrapper

    return decorate


def test_a_decorated_handler_is_taken_as_the_worker_calls_it() -> None:
    app = _app()
    app.message("invoice")(Invoice)
    app.message("refund")(Refund)

    # A wrapper (functools.wraps) that the worker calls with (msg, ctx) is accepted, though
    # the function it wraps takes more
    @app.handles(Invoice)
    @_inject("db")
    def bill(msg: Invoice, ctx: SyncContext, session: str) -> str:
        return session

    # and an async wrapper of a plain handler typed SyncContext (run in a thread of its own)
    def in_thread(fn: Callable[[Refund, SyncContext], None]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(msg: Refund, ctx: Any) -> None:
            await asyncio.to_thread(fn, msg, ctx)

        return wrapper

    @app.handles(Refund)
    @in_thread
    def refund(msg: Refund, ctx: SyncContext) -> None: ...

    assert not app.handlers["invoice"].is_async and app.handlers["refund"].is_async


def test_a_handler_typed_for_another_message_class_is_refused() -> None:
    app = _app()
    app.message("invoice")(Invoice)
    app.message("refund")(Refund)

    def refund(msg: Refund, ctx: object) -> None: ...

    def refund_or_nothing(msg: Refund | None, ctx: object) -> None: ...

    with pytest.raises(ConfigurationError, match="takes a Refund: its jobs carry a Invoice"):
        app.handles(Invoice)(refund)

    def either(msg: Invoice | Refund, ctx: object) -> None: ...

    def any_message(msg: Message, ctx: object) -> None: ...

    def untyped(msg, ctx):  # type: ignore[no-untyped-def]
        return None

    # A union that holds the class, its base class, no type, or a type that is not a union
    # of message classes (not checked) are accepted
    for fine in (either, any_message, untyped, refund_or_nothing):
        app.handlers.clear()
        app.handles(Invoice)(fine)
        app.handles(Refund)(fine)


def test_an_object_with_an_async_call_is_an_async_handler() -> None:
    app = _app()
    app.message("invoice")(Invoice)
    app.message("refund")(Refund)

    class Bill:
        async def __call__(self, msg: Invoice, ctx: Context) -> None: ...

    async def refund(msg: Refund, ctx: Context, *, dry_run: bool) -> None: ...

    app.handles(Invoice)(Bill())
    app.handles(Refund)(functools.partial(refund, dry_run=True))
    assert app.handlers["invoice"].is_async and app.handlers["refund"].is_async


def test_a_principal_field_is_filled_under_the_key_its_body_is_read_by() -> None:
    # A field read by one alias and written by another was filled under neither: every
    # request was refused (403) as one the principal could not own
    from typing import Annotated

    from pydantic import Field

    from offload import FromPrincipal
    from offload.contract import principal_fields

    class Split(Message):
        customer: Annotated[
            str,
            FromPrincipal(),
            Field(validation_alias="customerId", serialization_alias="customerId"),
        ]

    class Plain(Message):
        user_id: Annotated[str, FromPrincipal()]

    assert principal_fields(Split) == ("customerId",)
    assert principal_fields(Plain) == ("user_id",)


def test_a_refused_handler_of_a_same_named_class_names_their_modules() -> None:
    app = _app()
    app.message("invoice")(Invoice)

    class Invoice2(Message):
        number: int

    Invoice2.__name__ = "Invoice"

    def other(msg: Invoice2, ctx: object) -> None: ...

    other.__annotations__["msg"] = Invoice2  # (resolved, as a module of its own has it)
    with pytest.raises(ConfigurationError) as refused:
        app.handles(Invoice)(other)
    said = str(refused.value)
    assert said.endswith(f"its jobs carry a {__name__}.Invoice"), said
    assert f"takes a {__name__}.{Invoice2.__qualname__}: " in said


@pytest.mark.parametrize(
    ("kind", "queue", "why"),
    [
        ("", None, "must not be empty"),
        ("   ", None, "must not be empty"),
        (" reports.export", None, "white space around"),
        ("reports.export\n", None, "white space around"),
        ("a\x00b", None, "printable"),
        ("a\u200bb", None, "printable"),  # (a zero-width space)
        ("k" * 201, None, "at most 200"),
        ("reports.export", " sp", "white space around"),
        ("reports.export", "q\x00", "printable"),
        ("reports.export", "q" * 201, "at most 200"),
        ("reports/export", None, "cannot be served over HTTP"),
        ("..", None, "cannot be served over HTTP"),
    ],
)
def test_a_kind_or_queue_name_that_would_misbehave_is_refused_at_declaration(
    kind: str, queue: str | None, why: str
) -> None:
    # Such names failed later and elsewhere: " sp" and "sp" read as one queue on the
    # dashboard, a NUL or 3,000 characters failed only on PostgreSQL (as a 503 over HTTP),
    # and a kind with "/" was listed for HTTP clients that could never post it.
    class Note(Message):
        text: str

    app = App("names")
    with pytest.raises(ConfigurationError, match=why):
        app.message(kind, queue=queue)(Note)
    assert kind not in app.kinds


def test_names_that_are_unusual_but_sound_are_declared() -> None:
    app = App("names")
    for n, (kind, queue) in enumerate(
        [("a b", "mail[eu]"), ("%41", "q:1"), ("rapports.été", "files"), ("reports/x", "r")]
    ):
        cls = type(f"Kind{n}", (Message,), {"__annotations__": {"text": str}})
        app.message(kind, queue=queue, http=kind != "reports/x")(cls)
        assert app.kinds[kind].queue == queue
