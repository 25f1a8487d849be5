"""Local state files of owners and members: JSON, written atomically with mode 0600.

They hold secret keys, so they are never world-readable, never half-written
(a temporary file, fsync, then rename), and never sent anywhere.  A file that is
replaced keeps its mode (and, for root, its owner); a symbolic link keeps pointing
at the file it names.  Every failure to read or write one is a
:class:`~relay.client.errors.RelayError` that names the file and what to do
(:func:`relay.client.errors.file_error`); :func:`check_writable` finds the usual
ones before a command has done anything it would then fail to record.  A file that
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
from typing import Any, TypeVar

import msgspec

from relay.client.errors import RelayError, file_error

T = TypeVar("T")


def _write_temp(tmp: Path, data: dict[str, Any], like: os.stat_result | None = None) -> None:
    """Write ``data`` to the new file ``tmp`` (FileExistsError if the name is taken), mode 0600
    or the mode and owner of ``like``, fsynced; a file written in part is removed again."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if like is not None:
            os.fchmod(fd, like.st_mode & 0o7777)
            if os.geteuid() == 0 and (like.st_uid, like.st_gid) != (0, 0):
                os.fchown(fd, like.st_uid, like.st_gid)  # root editing a user's file leaves it theirs
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    """Write ``path`` atomically, replacing what was there: mode 0600 for a new file, the old
    file's mode for one replaced; RelayError (naming the file) if it cannot be written."""
    target = path.resolve() if path.is_symlink() else path
    try:
        try:
            like: os.stat_result | None = target.stat()
        except FileNotFoundError:
            like = None
        if like is not None and not os.path.isfile(target):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(target))
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        _write_temp(tmp, data, like)
        try:
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise file_error(exc, path, doing="write") from None
    _sync_folder(target)


def check_writable(path: Path) -> None:
    """RelayError if ``path`` could not be written as a state file: its folder is missing, not
    a folder or not writable, or ``path`` is a folder.  Asked before a command acts, so that it
    never does what it then cannot record."""
    target = path.resolve() if path.is_symlink() else path
    folder = target.parent
    if target.is_dir():
        raise file_error(IsADirectoryError(errno.EISDIR, "is a folder"), path, doing="write")
    if not folder.exists():
        raise file_error(FileNotFoundError(errno.ENOENT, "no such folder"), path, doing="write")
    if not folder.is_dir():
        raise file_error(NotADirectoryError(errno.ENOTDIR, "not a folder"), path, doing="write")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise file_error(PermissionError(errno.EACCES, "permission denied"), path, doing="write")


def create_private(path: Path, data: dict[str, Any]) -> None:
    """Write a new file at ``path`` atomically (mode 0600); FileExistsError if the name is taken,
    RelayError (naming the file) if it cannot be written.

    The whole file is written under a temporary name first and then linked in: the name
    appears complete or not at all, and an existing file is never replaced.  A file system
    without hard links (FAT on a USB stick, where a root key may go) gets the file created
    exclusively and written in place instead, and removed again if writing fails.
    """
    if path.is_dir():
        raise file_error(IsADirectoryError(errno.EISDIR, "is a folder"), path, doing="write")
    if path.exists() or path.is_symlink():
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_temp(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            _write_temp(path, data)  # exclusive, in place (removed again if writing fails)
        finally:
            tmp.unlink(missing_ok=True)
    except FileExistsError:
        raise
    except OSError as exc:
        raise file_error(exc, path, doing="write") from None
    _sync_folder(path)


def read_json(path: Path, *, what: str, missing: str) -> Any:
    """The JSON in ``path``; RelayError naming the file if it is missing (``missing`` says what
    to do), unreadable, a folder, or not JSON."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RelayError(f"no {what} at {path} ({missing})", code="no_file") from None
    except OSError as exc:
        raise file_error(exc, path, doing="read", what=what) from None
    if not data.strip():
        raise RelayError(f"{path} is empty, not {_a(what)}", code="bad_file")
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise RelayError(f"{path} is not {_a(what)}: it is not text", code="bad_file") from None
    except ValueError as exc:
        raise RelayError(f"{path} is not {_a(what)}: it is not JSON ({exc})", code="bad_file") from None


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def load_state(path: Path, who: str, create_with: str) -> dict[str, Any]:
    """The JSON object in ``path``, a ``who`` state file that ``create_with`` makes."""
    raw = read_json(path, what=f"{who} state file", missing=f"run '{create_with}' first")
    if not isinstance(raw, dict):
        raise RelayError(f"{path} is not {_a(who)} state file: it holds no JSON object", code="bad_file")
    return raw


def convert(raw: dict[str, Any], kind: type[T], path: Path, who: str) -> T:
    """``raw`` as a ``kind`` (a dataclass), every field's type checked; RelayError naming the
    file and the field otherwise."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise RelayError(f"{path} is not {_a(who)} state file ({exc})", code="bad_file") from None
