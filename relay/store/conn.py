"""What a store function is given: one open transaction on either database engine.

Every SQL statement of the relay lives in ``relay.store``; the server composes a transaction
from the store's functions (``groups.by_id(conn, ...)``, ``joins.set_decision(conn, ...)``)
and hands it to the database, which runs it on its writer thread.  Those functions take a
:class:`Conn`, the small part of a DB-API connection they use, so that one body of SQL runs
on both engines: SQLite's own connection is a ``Conn`` as it is (no wrapper on the hot path),
and the PostgreSQL store passes an adapter that rewrites the statement for psycopg once
(``?`` placeholders, SQLite's index hints).  The SQL written here is therefore the common
subset: ``?`` placeholders, ``ON CONFLICT`` upserts, ``RETURNING`` instead of ``lastrowid``,
``CASE`` instead of arithmetic on booleans, and ``int()`` around aggregates (PostgreSQL's
``sum`` of a ``BIGINT`` is a ``numeric``).

Must not: open connections, commit, or know which engine it runs on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol


class Rows(Protocol):
    """The cursor an ``execute`` returns: rows as tuples, and how many a change touched."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """One connection inside an open transaction (see the module's docstring)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Rows: ...


def send_later(conn: Conn, sql: str, parameters: Sequence[Any] = (), /) -> None:
    """Run ``sql``, whose result nobody reads (a lock taken), with the
    transaction's next statement where the engine can (PostgreSQL's ``PgConn.defer``: one
    round trip less), else now.  Its error, if any, comes with that next statement: the next
    job's savepoint or the ``COMMIT``, which the writer then treats as the batch's failure."""
    defer = getattr(conn, "defer", None)
    if defer is not None:
        defer(sql, parameters)
    else:
        conn.execute(sql, parameters)


@contextmanager
def savepoint(conn: Conn, name: str = "step") -> Iterator[None]:
    """Run the block so that, if it raises, its changes alone are undone (and the error
    goes on): one held request of many in a transaction fails without its neighbours."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
        conn.execute(f"RELEASE SAVEPOINT {name}")
        raise
    conn.execute(f"RELEASE SAVEPOINT {name}")
