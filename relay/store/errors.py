"""The errors a store raises, whichever engine is behind it.

The server catches these and never an engine's own (``sqlite3.Error``, ``psycopg.Error``):
each database turns its engine's errors into :class:`StoreUnavailable` (not now: a full
disk, a database server restarting) or :class:`StoreError` (anything else), with the
engine's error kept as ``__cause__`` for the log.

Must not: name an engine's types, or carry policy.
"""

from __future__ import annotations

from relay.protocol.errors import ServiceUnavailable


class StoreError(Exception):
    """The database failed the transaction; nothing of it was kept."""


class StoreUnavailable(StoreError, ServiceUnavailable):
    """The database cannot take writes now (its disk is full, say): nothing of the request
    was stored, and asking again later may work."""

    def __init__(self, error: str) -> None:
        super().__init__(f"the relay cannot store anything now ({error}); nothing was kept, ask again later")
        self.error = error


class BackupUnsupported(StoreError):
    """This store is not backed up by the relay (PostgreSQL: its own tools do it)."""
