"""The start-up banner's text (blob store included, never a secret) and the logging the
command line sets up (the AWS SDK's INFO chatter quieted, a user's own setup untouched)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from offload import App, Settings
from offload.cli import QUIET_LOGGERS, _setup_logging, banner_lines
from offload.stores import FileBlobStore
from offload.stores.s3 import S3BlobStore


def fields(lines: list[str]) -> dict[str, str]:
    return {name: value.strip() for name, _, value in (ln.strip().partition(" ") for ln in lines)}


def test_the_banner_shows_a_blob_folder_resolved(tmp_path: Path) -> None:
    app = App("banner", blobs=FileBlobStore(tmp_path / "sub" / ".." / "files"))
    app.configure(Settings(url="memory://"))
    lines = banner_lines("offload worker (app banner)", app, queues=["a"], kinds=["k"])
    assert lines[0] == "offload worker (app banner)"
    assert fields(lines[1:]) == {
        "backend": "memory://",
        "queues": "a",
        "kinds": "k",
        "blobs": str(tmp_path / "files"),
    }


def test_the_banner_shows_an_s3_store_without_credentials() -> None:
    store = S3BlobStore.from_url(
        "s3://my-bucket/jobs/out?endpoint_url=http://key:secret@127.0.0.1:9000&region=eu-west-1"
    )
    app = App("banner", blobs=store)
    app.configure(Settings(url="memory://"))
    lines = banner_lines("t", app, queues=[], kinds=[], concurrency="4, prefetch 8")
    shown = fields(lines[1:])
    assert shown["blobs"] == "s3://my-bucket/jobs/out at http://127.0.0.1:9000 (eu-west-1)"
    assert shown["concurrency"] == "4, prefetch 8"
    assert "secret" not in "\n".join(lines) and "key:" not in "\n".join(lines)


def test_the_banner_names_an_s3_store_on_aws_by_its_bucket() -> None:
    store = S3BlobStore.from_url("s3://my-bucket")
    assert store.describe() == "s3://my-bucket at AWS"


def bare_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """No logging configured yet (pytest's capture handler set aside: it is added once the
    test body starts, so this runs there), all restored after the test."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    for name in QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)


def test_offloads_logging_quiets_the_aws_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    bare_logging(monkeypatch)
    _setup_logging()
    assert logging.getLogger().level == logging.INFO
    creds = logging.getLogger("aiobotocore.credentials")
    assert not creds.isEnabledFor(logging.INFO)
    assert creds.isEnabledFor(logging.WARNING)
    assert logging.getLogger("offload.worker").isEnabledFor(logging.INFO)
    # httpx would log each webhook's whole URL, a secret in its query string included.
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)


def test_a_level_the_user_set_on_the_sdk_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    bare_logging(monkeypatch)
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    _setup_logging()
    assert logging.getLogger("botocore.credentials").isEnabledFor(logging.DEBUG)


def test_a_users_own_logging_configuration_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    bare_logging(monkeypatch)
    logging.basicConfig(level=logging.DEBUG)  # configured before offload's command runs
    _setup_logging()
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("aiobotocore.credentials").isEnabledFor(logging.INFO)
