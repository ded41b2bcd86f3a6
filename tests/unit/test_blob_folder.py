"""The blob folder of a relative OFFLOAD_BLOBS_URL is where the process started, whatever a
handler does to the working directory later (`os.chdir`: its blobs went elsewhere, and
their links answered 404)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.stores.blobs import open_blobs


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
