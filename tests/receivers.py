"""Real receivers on 127.0.0.1 for notification tests: an HTTP server and an SMTP server."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .ports import free_port


@dataclass
class Received:
    """One request a receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Answer:
    """How a receiver answers one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    #: When set, the answer's head never ends: a header line every `drip_s` seconds (for a
    #: minute at most, or until the client hangs up).
    drip_s: float = 0.0


class Receiver:
    """An HTTP server on 127.0.0.1 (own thread) that records every request and answers
    from a script: `answers[i]` for the i-th request, the last one for every later one.
    With `tls`, it speaks HTTPS with that server context."""

    def __init__(self, *answers: Answer | int, tls: ssl.SSLContext | None = None) -> None:
        self.answers = [a if isinstance(a, Answer) else Answer(a) for a in answers] or [Answer()]
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.command, self.path, _lower(self.headers), body, time.time())
                    )
                    n = len(receiver.requests)
                answer = receiver.answers[min(n, len(receiver.answers)) - 1]
                time.sleep(answer.delay_s)
                self.send_response(answer.status)
                if answer.drip_s:
                    self._drip(answer.drip_s)
                    return
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST

            def _drip(self, every_s: float) -> None:
                self.close_connection = True
                deadline = time.monotonic() + 60
                try:
                    self.flush_headers()  # the status line, and no end to the head
                    while time.monotonic() < deadline:
                        self.wfile.write(b"x-drip: 1\r\n")
                        self.wfile.flush()
                        time.sleep(every_s)
                except OSError:
                    pass  # the client hung up

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class MailSink:
    """An aiosmtpd SMTP server on 127.0.0.1 that keeps every message; `codes` scripts the
    reply to each DATA (e.g. ["451 4.3.0 try later"] then 250 for the rest), and
    `rcpt_codes` to each RCPT TO (a recipient refused) likewise."""

    def __init__(
        self, *codes: str, credentials: tuple[str, str] | None = None, port: int = 0
    ) -> None:
        from aiosmtpd.controller import Controller

        self.codes = list(codes)
        self.rcpt_codes: list[str] = []
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self._event = threading.Event()
        options: dict[str, Any] = {}
        if credentials is not None:
            options.update(authenticator=self._authenticator(credentials), auth_require_tls=False)
        self.controller = Controller(
            self, hostname="127.0.0.1", port=port or free_port(), **options
        )

    def _authenticator(self, credentials: tuple[str, str]) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = (
                isinstance(data, LoginPassword)
                and (
                    data.login.decode(),
                    data.password.decode(),
                )
                == credentials
            )
            if ok:
                self.logins.append(data.login.decode())
            return AuthResult(success=ok)

        return check

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_codes:
            return self.rcpt_codes.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.codes:
            return self.codes.pop(0)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        # The envelope first: tests wait for `messages` (from another thread), then read both.
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(message)
        self._event.set()
        return "250 2.0.0 queued"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.controller.port}"

    def __enter__(self) -> MailSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def parts(message: EmailMessage) -> Iterator[tuple[str, str]]:
    """(content type, text) of each text part of a message."""
    for part in message.walk():
        if part.get_content_maintype() == "text":
            assert isinstance(part, EmailMessage)
            yield part.get_content_type(), str(part.get_content())


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}
