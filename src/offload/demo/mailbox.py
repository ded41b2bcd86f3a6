"""The local SMTP catcher (aiosmtpd) and the mailbox it fills, so mail is seen without a server.

The catcher runs in the demo's web process and stores every message in an SQLite file; the
mailbox page reads it. A repeated Message-ID (a confirmation job that ran twice) is stored
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import sqlite3
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("offload.demo")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    message_id TEXT UNIQUE,
    received_at REAL NOT NULL,
    mail_from TEXT NOT NULL,
    rcpt_tos TEXT NOT NULL,
    subject TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL,
    raw BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoredMail:
    id: int
    received_at: float
    sender: str
    recipient: str
    subject: str
    text: str
    message_id: str | None


def _text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    content = body.get_content()
    return content.replace("\r\n", "\n") if isinstance(content, str) else ""


class MailboxStore:
    """Caught messages in one SQLite file, shared by the catcher and the mailbox page."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Any:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def add(self, raw: bytes, mail_from: str, rcpt_tos: list[str]) -> bool:
        """Store one message; False when its Message-ID was stored before."""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._connect() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO messages (message_id, received_at, mail_from, rcpt_tos,"
                " subject, sender, recipient, text, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.get("Message-ID"),
                    time.time(),
                    mail_from,
                    orjson.dumps([r.lower() for r in rcpt_tos]).decode(),
                    str(message.get("Subject", "")),
                    str(message.get("From", mail_from)),
                    str(message.get("To", ", ".join(rcpt_tos))),
                    _text_of(message),
                    raw,
                ),
            )
            return bool(cursor.rowcount == 1)

    def for_recipient(self, address: str, limit: int = 50) -> list[StoredMail]:
        """Messages delivered to `address`, newest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT m.id, received_at, sender, recipient, subject, text, message_id"
                " FROM messages m, json_each(m.rcpt_tos) r WHERE r.value = ?"
                " ORDER BY m.id DESC LIMIT ?",
                (address.lower(), limit),
            ).fetchall()
        return [StoredMail(*row) for row in rows]

    def count_for(self, address: str) -> int:
        with self._connect() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM messages m, json_each(m.rcpt_tos) r WHERE r.value = ?",
                (address.lower(),),
            ).fetchone()
        return int(n)


class _Handler:
    """aiosmtpd's handler: store each message that arrives."""

    def __init__(self, store: MailboxStore) -> None:
        self.store = store

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        await asyncio.to_thread(
            self.store.add, raw, envelope.mail_from or "", list(envelope.rcpt_tos)
        )
        log.info(
            "caught mail for %s",
            ", ".join(envelope.rcpt_tos),
            extra={"action": "mail_caught"},
        )
        return "250 Message accepted for delivery"


class SmtpCatcher:
    """A local SMTP server on loopback that accepts all mail into a `MailboxStore`."""

    def __init__(self, store: MailboxStore, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        """The OFFLOAD_SMTP_URL that reaches this catcher."""
        return f"smtp://{self.host}:{self.port}"

    async def start(self) -> SmtpCatcher:
        from aiosmtpd.smtp import SMTP

        # aiosmtpd logs every SMTP command at INFO; the demo's console has better uses.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        handler = _Handler(self.store)
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="offload-demo", loop=loop), self.host, self.port
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
