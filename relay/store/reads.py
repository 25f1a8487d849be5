"""SQLite read connections beside the single writer: reads that do not queue behind it.

:class:`Readers` holds a small bounded pool of read-only connections to the WAL database the
writer (:class:`relay.store.db.Database`) owns, each used on a worker thread of its own.  A
:meth:`Readers.read` runs a store function in one read transaction, that is one consistent
snapshot of the last commit, and never waits for the writer's batch: WAL readers and the
writer do not block each other.

Only for reads whose answer need not be in step with the writer's commit order: the operator
port's listings and stats, heads, discovery, the service log.  A subscription's first page and
its catch-up pages must stay on the writer (``Database.transact(on_commit=...)``): the fan-out
relies on the read and its hook running in commit order.

Must not: write (the connections are opened read-only, ``query_only`` besides), or hold policy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from relay.store.db import ReadStats, _translated

T = TypeVar("T")


class Readers:
    """A bounded pool of read-only connections to the database at ``path`` (see the module)."""

    def __init__(self, path: Path, *, size: int = 2) -> None:
        if size < 1:
            raise ValueError("a pool of readers needs at least one connection")
        self.path = path
        self._limiter = trio.CapacityLimiter(size)  # reads at once, each with its connection
        # The worker threads' own: a read holds one of ``_limiter``'s tokens while its thread
        # runs, so sharing that limiter would wait for itself.
        self._threads = trio.CapacityLimiter(size)
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._size = size
        self._total = 0

    def stats(self) -> ReadStats:
        """Reads running, waiting for a connection, and started (for the metrics)."""
        limiter = self._limiter
        return ReadStats(self._size, limiter.borrowed_tokens, limiter.statistics().tasks_waiting, self._total)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            f"{self.path.absolute().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,  # used by one thread at a time, not always the same one
            timeout=30.0,
        )
        conn.execute("PRAGMA query_only=ON")
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction on a pooled connection, on a worker thread, and
        return its result; a database error comes out as the store's own (``StoreError``)."""
        self._total += 1
        async with self._limiter:
            if self._closed:
                raise RuntimeError("the readers are closed")
            held = [self._idle.pop()] if self._idle else []  # the thread opens one if empty
            try:
                # Not abandoned on cancel: the connection goes back to the pool only when idle.
                value = await trio.to_thread.run_sync(self._run, held, fn, limiter=self._threads)
            except sqlite3.Error as exc:
                for conn in held:
                    conn.close()  # in an unknown state: never reused
                held.clear()
                raise _translated(exc)  # noqa: B904 -- keeps the cause _translated sets
            finally:
                for conn in held:  # fn's own error too: its snapshot was rolled back
                    self._give_back(conn)
            return value

    def _give_back(self, conn: sqlite3.Connection) -> None:
        if self._closed or conn.in_transaction:
            conn.close()
        else:
            self._idle.append(conn)

    def _run(self, held: list[sqlite3.Connection], fn: Callable[[sqlite3.Connection], T]) -> T:
        """On the worker thread: one snapshot (BEGIN ... ROLLBACK) around ``fn``."""
        if not held:
            held.append(self._open())
        conn = held[0]
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("ROLLBACK")

    def close(self) -> None:
        """Close the idle connections; one in use is closed when its read ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
