"""Retention of a group's append-only log: the owners' events and the group's timeline alike.

Both logs are rows numbered 1, 2, 3 ... per group with a ``size`` and a ``stored_at``, beside a
per-group summary row (oldest kept, count, bytes, pruned) kept in the same transaction; a
:class:`Log` names one log's table and columns, and the rules are written once here: drop the
oldest first, never the newest (the head a post chains onto, or the place the running hash
was last signed at), by size (:func:`prune_to_size`) or by age (:func:`prune_older_than`).

Functions here run inside a transaction opened by the store (``relay.store.db``), on either
engine.  Must not: hold policy (the bounds come from the caller), nor be given names that do
not come from this package (they are written into the SQL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from relay.store.conn import Conn


@dataclass(frozen=True, slots=True)
class Log:
    """One log's table, summary table and columns, its fleet lock, and where its head is."""

    table: str  # the rows: (group_id, <number>, size, stored_at)
    heads: str  # the per-group summary: (group_id, <first>, count, bytes, pruned)
    number: str  # the rows' number column
    first: str  # the summary's "oldest kept" column
    age_index: str  # the index on stored_at (a SQLite hint; PostgreSQL's adapter strips it)
    lock: Callable[[Conn, int], None]  # serialise against appends by other processes
    bounds: Callable[[Conn, int], tuple[int, int]]  # (newest, oldest kept) of a group's log


def prune_to_size(
    conn: Conn, log: Log, group_id: int, *, newest: int, count: int, size: int, max_count: int, max_bytes: int
) -> int:
    """Drop the oldest rows until the log is within both bounds (never ``newest``)."""
    excess_count = count - max_count
    excess_bytes = size - max_bytes
    if excess_count <= 0 and excess_bytes <= 0:
        return 0
    upto, dropped, dropped_bytes = _oldest_beyond(conn, log, group_id, newest, excess_count, excess_bytes)
    return _drop_through(conn, log, group_id, upto, dropped, dropped_bytes)


def _oldest_beyond(
    conn: Conn, log: Log, group_id: int, newest: int, excess_count: int, excess_bytes: int
) -> tuple[int, int, int]:
    """How far to drop (the last number, how many rows, how many bytes) to shed the excess.

    The rows are read only as far as needed; the cursor is dropped on return, before the
    caller deletes from the table it reads (Python's ``sqlite3`` then resets the statement)."""
    upto = dropped = dropped_bytes = 0
    for number, size in conn.execute(
        f"SELECT {log.number}, size FROM {log.table} WHERE group_id = ? AND {log.number} < ? "
        f"ORDER BY {log.number}",
        (group_id, newest),
    ):
        if dropped >= excess_count and dropped_bytes >= excess_bytes:
            break
        upto, dropped, dropped_bytes = int(number), dropped + 1, dropped_bytes + int(size)
    return upto, dropped, dropped_bytes


def prune_through(conn: Conn, log: Log, group_id: int, upto: int) -> int:
    """Drop the group's rows up to ``upto`` inclusive (never the newest); returns how many."""
    log.lock(conn, group_id)  # another relay process may be appending to it
    newest, first = log.bounds(conn, group_id)
    upto = min(upto, newest - 1)
    if upto < first:
        return 0
    dropped, dropped_bytes = conn.execute(
        f"SELECT count(*), coalesce(sum(size), 0) FROM {log.table} WHERE group_id = ? AND {log.number} <= ?",
        (group_id, upto),
    ).fetchone()
    return _drop_through(conn, log, group_id, upto, int(dropped), int(dropped_bytes))


def _drop_through(conn: Conn, log: Log, group_id: int, upto: int, dropped: int, dropped_bytes: int) -> int:
    if dropped == 0:
        return 0
    conn.execute(f"DELETE FROM {log.table} WHERE group_id = ? AND {log.number} <= ?", (group_id, upto))
    conn.execute(
        f"UPDATE {log.heads} SET {log.first} = ?, count = count - ?, bytes = bytes - ?, pruned = pruned + ? "
        "WHERE group_id = ?",
        (upto + 1, dropped, dropped_bytes, dropped, group_id),
    )
    return dropped


def prune_older_than(conn: Conn, log: Log, stored_before: int, limit: int) -> dict[int, int]:
    """Age retention: drop up to about ``limit`` rows stored before the time, oldest first; a
    group's newest row is kept whatever its age.  Returns the rows dropped per group."""
    rows = conn.execute(
        f"SELECT group_id, max({log.number}) FROM (SELECT group_id, {log.number} FROM {log.table} "
        f"INDEXED BY {log.age_index} WHERE stored_at < ? ORDER BY stored_at LIMIT ?) AS oldest "
        "GROUP BY group_id",
        (stored_before, limit),
    ).fetchall()
    dropped: dict[int, int] = {}
    for group_id, upto in rows:
        n = prune_through(conn, log, int(group_id), int(upto))
        if n:
            dropped[int(group_id)] = n
    return dropped
