"""The blob folder: a relative OFFLOAD_BLOBS_URL is where the process started, whatever a
handler does to the working directory later (`os.chdir`: its blobs went elsewhere, and
their links answered 404); a write that fails leaves nothing behind."""

from __future__ import annotations

import errno
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from offload.errors import BlobStoreError
from offload.stores.blobs import FileBlobStore, open_blobs


@pytest.mark.anyio
async def test_a_relative_blob_folder_stays_put_when_the_working_directory_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "start").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    store = open_blobs("blobs")
    monkeypatch.chdir(tmp_path / "elsewhere")  # a handler's os.chdir
    ref = await store.put("reports/1.txt", b"hello")
    assert ref == "blob:reports/1.txt"
    assert (tmp_path / "start" / "blobs" / "reports" / "1.txt").read_bytes() == b"hello"
    assert not (tmp_path / "elsewhere" / "blobs").exists()
    assert await store.get("reports/1.txt") == b"hello"


@pytest.mark.anyio
async def test_a_streamed_write_that_fails_is_a_blob_store_error_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (a full disk raised the bare OSError, where `put` raises BlobStoreError)
    store = FileBlobStore(tmp_path)

    def full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("offload.stores.blobs.os.replace", full)
    with pytest.raises(BlobStoreError, match="No space left on device"):
        await store.put_stream("exports/a.bin", io.BytesIO(b"x" * 100_000))
    with pytest.raises(BlobStoreError, match="No space left on device"):
        await store.put("exports/b.bin", b"x" * 100_000)
    assert _files(tmp_path) == []


def _files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.is_file()]


@pytest.mark.anyio
async def test_a_source_that_fails_mid_stream_raises_its_own_error(tmp_path: Path) -> None:
    # (its ConnectionResetError became "blob store folder …: cannot write": a handler's own
    # `except ConnectionError` no longer caught it, and clients were told the store failed)
    store = FileBlobStore(tmp_path)

    async def source() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise ConnectionResetError("the upstream went away")

    with pytest.raises(ConnectionResetError, match="the upstream went away"):
        await store.put_stream("exports/a.bin", source())
    assert _files(tmp_path) == []
