"""What several relay processes on one database need of a transaction: locks and announcements.

With PostgreSQL, any number of ``relay serve`` processes share one database (see
``relay.server.fleet``).  Their transactions then meet each other, and these functions are
what a transaction does about it:

- :func:`lock_chain`: posts to one group are serialised across processes (the chain rules
  read the head row and write the next one), with a transaction-scoped advisory lock;
- :func:`lock_timeline`: the same for a group's timeline of member entries;
- :func:`try_lock_joins`: a group's held join requests are decided by one process at a time
  (the one whose lock attempt succeeds; the others leave the group for later);
- :func:`announce`: "group G has event N", as a ``NOTIFY`` in the post's own transaction,
  so it is delivered to the other processes only if and when the event commits.

On a database only one process uses (SQLite) each is a no-op: the connection does not say it
is shared (:attr:`relay.store.postgres.PgConn.shared`), and nothing is sent to the engine.

Must not: wait for anything but the lock it names, or announce what was not stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.store.conn import Conn, send_later

CHANNEL = "relay_fleet"  # the one NOTIFY channel of a fleet
CHAIN_LOCKS = 1  # advisory lock class: a group's event chain
JOIN_LOCKS = 2  # advisory lock class: a group's held join requests
TIMELINE_LOCKS = 3  # advisory lock class: a group's timeline (member messages; owners' posts go on)
_KEY_MASK = 0x7FFFFFFF  # the two-key advisory locks take int4 keys: ids past 2^31 share a lock


def shared(conn: Conn) -> bool:
    """Whether other processes may use this database at the same time."""
    return getattr(conn, "shared", False) is True


def lock_chain(conn: Conn, group_id: int) -> None:
    """Wait until no other transaction appends to (or prunes) ``group_id``'s events; held to
    the end of this transaction, and taken before the transaction's next statement runs."""
    if shared(conn):
        # Sent with the next statement: one round trip less per post.  Not folded into the
        # statement that reads the head: in READ COMMITTED a statement's snapshot is taken
        # when it starts, before a lock inside it waits, so it would read the head as it was
        # before the other process's append committed.
        sql = f"SELECT pg_advisory_xact_lock({CHAIN_LOCKS}, CAST(? AS integer))"
        send_later(conn, sql, (group_id & _KEY_MASK,))


def lock_chains(conn: Conn, group_ids: Iterable[int]) -> None:
    """:func:`lock_chain` for several groups in one statement, taken in ascending order of
    their keys (as every batch takes them: two batches wait, they do not deadlock)."""
    if shared(conn):
        keys = sorted({group_id & _KEY_MASK for group_id in group_ids})
        # As in lock_chain: sent with the next statement, before it.
        sql = f"SELECT count(pg_advisory_xact_lock({CHAIN_LOCKS}, k)) FROM unnest(CAST(? AS integer[])) AS k"
        send_later(conn, sql, (keys,))


def lock_timeline(conn: Conn, group_id: int) -> None:
    """Like :func:`lock_chain`, for the group's timeline of member entries (a lock of its
    own: member messages and owners' posts to one group do not wait for each other)."""
    if shared(conn):
        sql = f"SELECT pg_advisory_xact_lock({TIMELINE_LOCKS}, CAST(? AS integer))"
        send_later(conn, sql, (group_id & _KEY_MASK,))


def try_lock_joins(conn: Conn, group_id: int) -> bool:
    """Take ``group_id``'s join queue for this transaction if no other process holds it (False:
    another process is deciding its requests now).  Always True on an unshared database."""
    if not shared(conn):
        return True
    (taken,) = conn.execute(
        f"SELECT pg_try_advisory_xact_lock({JOIN_LOCKS}, CAST(? AS integer))", (group_id & _KEY_MASK,)
    ).fetchone()
    return bool(taken)


def announce(conn: Conn, payload: str) -> None:
    """Tell the other processes ``payload`` when this transaction commits (never if it, or the
    savepoint this runs in, rolls back)."""
    if shared(conn):
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))
