"""The data folder's problems at start-up, in words: what is wrong with which file, and what to do.

``relay init`` and ``relay serve`` open the data folder's files (``identity.key``,
``relay.db``, ``relay.lock``, ``admin.token``, ``run.json``) before the relay serves anything;
:func:`explained` turns what that raises (a file where the folder should be, a folder or file
another user owns -- ``relay init`` run as root, then the service started as its own user --,
a damaged key or database) into a :class:`StartupError` whose message names the file and the
fix.  ``relay serve`` logs it as ``relay.start_failed`` and exits 1.  This module must not
create, change or remove anything.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from relay.store import sqlitefile


class StartupError(Exception):
    """The relay cannot start (data folder unusable or in use, port taken); the message says why."""


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _owner_of(path: Path) -> tuple[Path, int] | None:
    """``path`` or the nearest folder above it that this user can see, and its owner."""
    for candidate in (path, *path.parents):
        try:
            return candidate, candidate.stat().st_uid
        except OSError:
            continue  # missing, or in a folder this user cannot enter: ask the folder
    return None


def problem(exc: BaseException, path: Path, data_dir: Path) -> str | None:
    """What ``exc``, raised while opening ``path`` in ``data_dir``, means for the operator;
    None if it is not a problem of the data folder (a bug stays itself)."""
    if isinstance(exc, OSError):
        where = Path(exc.filename) if exc.filename else path
        if isinstance(exc, FileExistsError | NotADirectoryError) and not data_dir.is_dir():
            return (
                f"the data folder {data_dir} is a file, not a folder: give --data a folder "
                "(it is created if missing)"
            )
        if isinstance(exc, PermissionError):
            me, found = os.geteuid(), _owner_of(where)
            whose = ""
            if found is not None and found[1] != me:
                whose = f"; {'it' if found[0] == where else found[0]} belongs to {_user(found[1])}"
            name = _user(me).split()[0]
            fix = (
                f"run the relay as that user, or give the folder to this one (chown -R {name} {data_dir})"
                if whose
                else f"check the permissions of {data_dir} and its files"
            )
            doing = "create" if where.suffix == ".tmp" or where.name.startswith(".") else "open"
            return f"cannot {doing} {where}: permission denied for {_user(me)}{whose}: {fix}"
        if isinstance(exc, IsADirectoryError):
            return f"{where} is a folder, not a file: move it out of the data folder {data_dir}"
        if exc.errno == errno.EROFS:
            return f"cannot write {where}: the file system is read-only; give --data a writable folder"
        if exc.errno == errno.ENOSPC:
            return f"cannot write {where}: the disk is full"
        return f"cannot open {where}: {exc.strerror or exc}"
    if (
        isinstance(exc, msgspec.DecodeError | msgspec.ValidationError | ValueError)
        and path.name == "identity.key"
    ):
        return (
            f"{path} is damaged ({exc}); restore it from a backup (a new key would change the relay's "
            "address for every channel), or move it away to start as a new relay"
        )
    return sqlitefile.problem(exc, path)


def token_problem(exc: Exception, path: Path, data_dir: Path) -> str:
    """An unusable ``admin.token`` (relay.server.admintoken.TokenError) in words; a file another
    user owns is told as such, like the other files of the data folder."""
    inner = exc.__context__
    if isinstance(inner, PermissionError):
        return problem(inner, path, data_dir) or str(exc)
    return str(exc)


@contextmanager
def explained(path: Path, data_dir: Path) -> Iterator[None]:
    """Raise a :class:`StartupError` for a data-folder problem in the block (see :func:`problem`)."""
    try:
        yield
    except StartupError:
        raise
    except Exception as exc:
        reason = problem(exc, path, data_dir)
        if reason is None:
            raise
        raise StartupError(reason) from None
