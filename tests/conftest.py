"""Shared fixtures: the asyncio backend for anyio tests, and a temporary working folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder with OFFLOAD_* variables cleared."""
    for name in list(os.environ):
        if name.startswith("OFFLOAD_") and name != "OFFLOAD_REQUIRE_SERVICES":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path
