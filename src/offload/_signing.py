"""HMAC signatures for expiring links (download URLs) and the key that makes them, and the
key of a webhook secret."""

from __future__ import annotations

import base64
import hmac
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

_EPOCH = re.compile(r"[0-9]{1,12}")
#: A Standard Webhooks secret: `whsec_` (optional here) and the base64 of its key.
_WHSEC = re.compile(r"(?:whsec_)?([A-Za-z0-9+/]+={0,2})")
#: Sizes (bytes) of a webhook secret's key.
WHSEC_KEY_BYTES = (24, 64)
#: The shortest key that may sign links (OFFLOAD_SECRET_KEY): a short one is guessed
#: offline from any link it signed, and every link can then be forged.
MIN_SECRET_KEY_BYTES = 32


#: A key's text that gives its bytes in hex (`hex:…`), as the key file kept beside the blobs
#: holds them: the way to name that key in OFFLOAD_SECRET_KEY_FALLBACKS.
HEX_KEY_PREFIX = "hex:"


def key_bytes(text: str, name: str = "OFFLOAD_SECRET_KEY") -> bytes:
    """The key a setting's text gives (the setting `name`): its own bytes, or after `hex:`
    the bytes its hex digits give.

    Raises:
        ValueError: `hex:` followed by anything but hex digits, or by none (a template
            whose file was missing: it would be no key, and each host would sign with its
            own).
    """
    if not text.startswith(HEX_KEY_PREFIX):
        return text.encode()
    try:
        key = bytes.fromhex(text[len(HEX_KEY_PREFIX) :])
    except ValueError:
        key = b""
    if not key:
        raise ValueError(f"{name}: a key written hex:… must go on with hex digits, and only them")
    return key


def short_secret(key: bytes, name: str = "OFFLOAD_SECRET_KEY") -> str | None:
    """Why `key` (the setting `name`) may not sign links (too short), or None."""
    if len(key) >= MIN_SECRET_KEY_BYTES:
        return None
    return (
        f"{name} is {len(key)} bytes: a key that signs links must be at least "
        f"{MIN_SECRET_KEY_BYTES} bytes of random text, as "
        '`python -c "import secrets; print(secrets.token_urlsafe(32))"` prints'
    )


def whsec_key(secret: str) -> bytes:
    """The HMAC key of a webhook secret: `whsec_` and the base64 of 24 to 64 bytes.

    Raises:
        ValueError: anything else (an empty or unset secret among them), so that no
            signature made with an empty or truncated key is ever made or accepted.
    """
    found = _WHSEC.fullmatch(secret.strip())  # (read from a file, it ends in a newline)
    text = found.group(1).rstrip("=") if found else ""
    try:  # its padding may be left out
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # (binascii.Error: a length no base64 has)
        key = b""
    low, high = WHSEC_KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(
            f"a webhook secret is whsec_ and the base64 of a key of {low} to {high} bytes"
        )
    return key


def sign(secret: bytes, *parts: str) -> str:
    """URL-safe HMAC-SHA256 of the parts joined by newlines."""
    mac = hmac.digest(secret, "\n".join(parts).encode(), "sha256")
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def verify(keys: bytes | Sequence[bytes], signature: str, *parts: str) -> bool:
    """Constant-time check of a signature made by `sign` with the key, or with any of the
    keys (the signing key, then OFFLOAD_SECRET_KEY_FALLBACKS): False for any other text."""
    try:
        given = signature.encode("ascii")
    except UnicodeEncodeError:
        return False
    each = (keys,) if isinstance(keys, bytes) else keys
    return any(hmac.compare_digest(sign(key, *parts).encode("ascii"), given) for key in each)


def signed_query(secret: bytes, path: str, expires: int) -> str:
    """`expires=…&signature=…` for `path`, valid until the epoch second `expires`."""
    return f"expires={expires}&signature={sign(secret, path, str(expires))}"


def check_signed(
    keys: bytes | Sequence[bytes], path: str, expires: str, signature: str, now: float
) -> bool:
    """True when the signature is valid for `path` (under one of `keys`, as `verify`) and
    `expires` has not passed."""
    if not _EPOCH.fullmatch(expires) or int(expires) < now:
        return False
    return verify(keys, signature, path, expires)


def load_or_create_key(path: Path) -> bytes:
    """The signing key kept in `path` (created once, readable by its owner only)."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    try:
        os.link(tmp, path)  # first writer wins when processes race
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())
