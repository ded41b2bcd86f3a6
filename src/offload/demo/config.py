"""The demo's settings: its working folder, public address, SMTP server and pacing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

#: The working folder `offload demo` uses when none is given.
DEFAULT_FOLDER = ".offload-demo"
#: Where the demo's web pages are, for links in emails.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
#: Pause per month of a report (seconds), imitating a slower data source; 0 turns it off.
DEFAULT_PACE_S = 0.2
#: Largest image upload (bytes).
DEFAULT_MAX_UPLOAD_BYTES = 8 << 20


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What both halves of the demo need to know, passed to workers as environment variables.

    Args:
        folder: the working folder (jobs database, blobs, sample data, mailbox).
        base_url: the address of the web pages, for links in emails.
        smtp_url: where mail goes (`OFFLOAD_SMTP_URL`); None until the launcher picks one.
        mail_to: send every email to this address instead of the demo user's.
        mail_from: the sender of the demo's email (`OFFLOAD_EMAIL_FROM`).
        pace_s: pause per report month (seconds).
        max_upload_bytes: largest accepted image upload.
        inline: do the slow work inside the request (the problem the pattern solves).
    """

    folder: Path
    base_url: str = DEFAULT_BASE_URL
    smtp_url: str | None = None
    mail_to: str | None = None
    mail_from: str | None = None
    pace_s: float = DEFAULT_PACE_S
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    inline: bool = False

    @property
    def data_path(self) -> Path:
        """The sample shop data (SQLite), also home of the inline mode's exports."""
        return self.folder / "shop.db"

    @property
    def mailbox_path(self) -> Path:
        """Messages the local SMTP catcher received (SQLite)."""
        return self.folder / "mailbox.db"

    @property
    def jobs_url(self) -> str:
        return f"sqlite:///{self.folder / 'offload.db'}"

    @property
    def blobs_url(self) -> str:
        return str(self.folder / "blobs")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DemoConfig:
        e = os.environ if env is None else env
        try:
            return cls(
                folder=Path(e.get("OFFLOAD_DEMO_DIR") or DEFAULT_FOLDER).resolve(),
                base_url=e.get("OFFLOAD_DEMO_BASE_URL") or DEFAULT_BASE_URL,
                smtp_url=e.get("OFFLOAD_SMTP_URL") or None,
                mail_to=e.get("OFFLOAD_DEMO_MAIL_TO") or None,
                mail_from=e.get("OFFLOAD_EMAIL_FROM") or None,
                pace_s=float(e.get("OFFLOAD_DEMO_PACE") or DEFAULT_PACE_S),
                max_upload_bytes=int(
                    e.get("OFFLOAD_DEMO_MAX_UPLOAD_BYTES") or DEFAULT_MAX_UPLOAD_BYTES
                ),
                inline=(e.get("OFFLOAD_DEMO_INLINE") or "") == "1",
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad demo setting: {exc}") from exc

    def to_env(self) -> dict[str, str]:
        """The environment that gives a worker process this configuration."""
        env = {
            "OFFLOAD_DEMO_DIR": str(self.folder),
            "OFFLOAD_DEMO_BASE_URL": self.base_url,
            "OFFLOAD_DEMO_PACE": repr(self.pace_s),
            "OFFLOAD_DEMO_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "OFFLOAD_DEMO_INLINE": "1" if self.inline else "0",
        }
        if self.smtp_url:
            env["OFFLOAD_SMTP_URL"] = self.smtp_url
        if self.mail_to:
            env["OFFLOAD_DEMO_MAIL_TO"] = self.mail_to
        if self.mail_from:
            env["OFFLOAD_EMAIL_FROM"] = self.mail_from
        return env
