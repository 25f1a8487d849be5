"""What an error from opening the SQLite database file means for the operator, in words.

``relay init`` and ``relay serve`` open ``relay.db`` before the relay serves anything;
``relay.server.datadir`` turns what that raises into a start-up message naming the file and
the fix.  The part of that which knows SQLite's errors lives here, so that the server does not
import ``sqlite3``.  Must not: open, create or change any file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def problem(exc: BaseException, path: Path) -> str | None:
    """The message for an SQLite error raised while opening the database ``path``; None if
    ``exc`` is not one (the caller explains it, or lets it be)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    why = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in why:
        return (
            f"{path} is not a chat-relay database ({why}): restore it from a backup, or give another --data"
        )
    return f"cannot open the database {path}: {why}"
