"""Local state files of owners and members: JSON, written atomically with mode 0600.

They hold secret keys, so they are never world-readable, never half-written
(a temporary file, fsync, then rename), and never sent anywhere.  A file that
must not replace another one (a new channel, a new key, a root key) is put in
place with a hard link, which fails if the name is taken, so two commands racing
for one name cannot both win and nothing is ever overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any

from relay.client.errors import RelayError


def _write_new(path: Path, data: dict[str, Any]) -> None:
    """Create ``path`` (mode 0600; FileExistsError if the name is taken), write and fsync it;
    a file written in part is removed again."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _sync_folder(path: Path) -> None:
    """Make the rename or link itself durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_private(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` atomically (mode 0600), replacing what was there."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, data)
    tmp.replace(path)
    _sync_folder(path)


def create_private(path: Path, data: dict[str, Any]) -> None:
    """Write a new file at ``path`` atomically (mode 0600); FileExistsError if the name is taken.

    The whole file is written under a temporary name first and then linked in: the name
    appears complete or not at all, and an existing file is never replaced.  A file system
    without hard links (FAT on a USB stick, where a root key may go) gets the file created
    exclusively and written in place instead, and removed again if writing fails.
    """
    if path.exists() or path.is_symlink():
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, data)
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        _write_new(path, data)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(path)


def load_state(path: Path, who: str, create_with: str) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise RelayError(f"no {who} state at {path} (run '{create_with}' first)") from None
    except ValueError as exc:
        raise RelayError(f"{path} is not a {who} state file: {exc}") from None
    if not isinstance(raw, dict):
        raise RelayError(f"{path} is not a {who} state file")
    return raw
