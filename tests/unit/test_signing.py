"""HMAC signed links: sign/verify, expiry, tampering, and the on-disk signing key."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from offload._signing import check_signed, load_or_create_key, sign, signed_query, verify

SECRET = b"s" * 32
PATH = "/files/reports/0193.pdf"
NOW = 1_800_000_000.0
EXPIRES = int(NOW) + 3600


def _query() -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(signed_query(SECRET, PATH, EXPIRES)).items()}


def test_valid_signed_link_passes() -> None:
    q = _query()
    assert q["expires"] == str(EXPIRES)
    assert check_signed(SECRET, PATH, q["expires"], q["signature"], NOW) is True


def test_sign_is_url_safe_and_verifies() -> None:
    sig = sign(SECRET, "a", "b")
    assert "=" not in sig and "+" not in sig and "/" not in sig
    assert verify(SECRET, sig, "a", "b")
    assert not verify(SECRET, sig, "a", "c")
    assert not verify(b"x" * 32, sig, "a", "b")
    # Parts are joined with a separator: ("ab", "") is not ("a", "b").
    assert sign(SECRET, "ab", "") != sign(SECRET, "a", "b")


def test_tampered_path_fails() -> None:
    q = _query()
    assert not check_signed(SECRET, "/files/reports/other.pdf", q["expires"], q["signature"], NOW)


def test_tampered_expiry_fails() -> None:
    q = _query()
    assert not check_signed(SECRET, PATH, str(EXPIRES + 1), q["signature"], NOW)


@pytest.mark.parametrize("signature", ["", "AAAA", "x" * 43])
def test_tampered_signature_fails(signature: str) -> None:
    assert not check_signed(SECRET, PATH, str(EXPIRES), signature, NOW)


def test_flipped_signature_character_fails() -> None:
    sig = _query()["signature"]
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    assert not check_signed(SECRET, PATH, str(EXPIRES), flipped, NOW)


def test_expired_link_fails() -> None:
    q = _query()
    assert check_signed(SECRET, PATH, q["expires"], q["signature"], EXPIRES)  # last second
    assert not check_signed(SECRET, PATH, q["expires"], q["signature"], EXPIRES + 0.5)
    assert not check_signed(SECRET, PATH, q["expires"], q["signature"], EXPIRES + 3600)


@pytest.mark.parametrize("expires", ["", "soon", "-1", "1e12", " 1800003600", "1800003600.0"])
def test_non_numeric_expires_fails(expires: str) -> None:
    sig = sign(SECRET, PATH, expires)  # even when correctly signed
    assert check_signed(SECRET, PATH, expires, sig, NOW) is False


def test_unicode_digit_expires_fails_cleanly() -> None:
    assert check_signed(SECRET, PATH, "²", "x", NOW) is False


def test_non_ascii_signature_fails_cleanly() -> None:
    assert check_signed(SECRET, PATH, str(EXPIRES), "é" * 43, NOW) is False


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    # Given no key file
    path = tmp_path / "blobs" / ".signing-key"
    assert not path.exists()
    # When the key is asked for twice
    first = load_or_create_key(path)
    second = load_or_create_key(path)
    # Then one 32-byte key was created, readable by its owner only, and reused
    assert len(first) == 32
    assert second == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.hex()
    assert [p.name for p in path.parent.iterdir()] == [".signing-key"]  # no temp files left


def test_existing_key_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("ab" * 32 + "\n")
    assert load_or_create_key(path) == bytes.fromhex("ab" * 32)
    assert path.read_text() == "ab" * 32 + "\n"


def test_keys_differ_between_folders(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path / "a" / "k") != load_or_create_key(tmp_path / "b" / "k")
