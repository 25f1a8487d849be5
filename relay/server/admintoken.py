"""The operator port's access token: ``DATA/admin.token``, created once, read at start and on SIGHUP.

A random secret (32 bytes, base64url) in a file only the relay's user can read (mode
0600).  Whoever can read the data folder may drive the operator port, which is the
same trust ``relay admin --data`` always needed; a web page the operator opens cannot
read it, so it cannot drive the port.  Rotation: delete (or replace) the file, then
SIGHUP or restart; a missing file is created again.

Must not: log the token, or compare it any other way than in constant time (the
admin endpoint uses ``relay.protocol.crypto.same_secret``).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

TOKEN_FILE = "admin.token"
# RFC 6750's token68 characters; at least 22 of them (128 bits of base64url) when the
# operator writes the file themselves (from a secret store, say).
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{22,512}")


class TokenError(Exception):
    """The token file exists but cannot be used; the message says what to do."""


def load_or_create(data_dir: Path) -> tuple[str, bool]:
    """The token in ``data_dir``, created if missing; returns ``(token, created)``."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / TOKEN_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _create(data_dir, path)
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not _TOKEN.fullmatch(text):
        raise TokenError(
            f"{path} does not hold a usable token (22 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -); "
            "delete it and a new one is made"
        )
    return text, False


def exposed(data_dir: Path) -> bool:
    """Whether others than the file's owner may read the token (group or world bits set)."""
    try:
        return bool((data_dir / TOKEN_FILE).stat().st_mode & 0o077)
    except OSError:
        return False


def _create(data_dir: Path, path: Path) -> tuple[str, bool]:
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        # link() fails if another process (relay init beside relay serve) made it meanwhile:
        # the first writer wins, and everyone reads the same token.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create(data_dir)
    finally:
        tmp.unlink(missing_ok=True)
    return token, True
