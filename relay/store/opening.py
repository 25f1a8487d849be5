"""Which database a relay stores in: the SQLite file in its data folder, or PostgreSQL.

``storage.url`` empty means SQLite (``DATA/relay.db``), the embedded default; a
``postgresql://`` URL means PostgreSQL (``relay.store.postgres``, loaded only then, so a
relay on SQLite never imports the driver).  Either is a :data:`Store`: the server sees the
group-commit writer and the store's functions, never the engine.

Must not: read the configuration itself, or retry: a database that cannot be opened is the
caller's start-up failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from relay.store.conn import Conn
from relay.store.db import Database, Writer

Store = Writer[Conn]


def open_store(
    *,
    url: str,
    path: Path,
    synchronous: str = "FULL",
    max_pending: int = 10_000,
    on_commit: Callable[[float, int], None] | None = None,
    read_connections: int = 4,
) -> Store:
    """The store ``url`` names (PostgreSQL) or the SQLite file at ``path``, its schema made
    or migrated; raises the engine's start-up errors (see each engine)."""
    if url:
        from relay.store.postgres import PostgresDatabase

        return PostgresDatabase(
            url, max_pending=max_pending, on_commit=on_commit, read_connections=read_connections
        )
    return Database(
        path,
        synchronous=synchronous,
        max_pending=max_pending,
        on_commit=on_commit,
        read_connections=read_connections,
    )
