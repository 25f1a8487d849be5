"""Owner events, equivocation proofs and the direct-invitation inbox, as rows.

Functions here run on the database worker thread inside a transaction opened by
:class:`relay.store.db.Database`.  An event is stored as the encoded ``Signed``
the owner sent (its body bytes exactly as signed) and never rewritten.  The
per-group summary in ``event_heads`` (head, oldest kept, count, bytes) is kept
in the same transaction as the rows, so a post reads one small row, not the log.
Retention drops the oldest events first and never the head.  The SQL is the
subset SQLite and PostgreSQL share (see ``relay.store.conn``), but for a post's two
statements on PostgreSQL (:func:`state_and_head`, :func:`append`), which fold what SQLite
runs as several statements into one each, and the same for a batch of posts
(:func:`states_and_heads`, :func:`append_many`, PostgreSQL only): on PostgreSQL every
statement is a round trip of the single writer connection, on SQLite a function call.  No policy here:
the chain rules come from ``relay.protocol.events``, the bounds from the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.protocol.events import GENESIS
from relay.protocol.state import GroupState
from relay.store import groups, retention
from relay.store.conn import Conn
from relay.store.fleet import CHANNEL, lock_chain, shared


@dataclass(frozen=True, slots=True)
class HeadRow:
    """A group's log as a whole: its newest event and what retention keeps."""

    head_seq: int = 0
    head_id: bytes = GENESIS
    head_created_at: int = 0
    first_seq: int = 0  # the oldest event kept (0: none)
    count: int = 0
    bytes: int = 0
    pruned: int = 0  # events dropped by retention, ever


_HEAD = "head_seq, head_id, head_created_at, first_seq, count, bytes, pruned"
_HEAD_FROM_EXCLUDED = ", ".join(f"{c} = excluded.{c}" for c in _HEAD.split(", "))


def head(conn: Conn, group_id: int) -> HeadRow:
    row = conn.execute(f"SELECT {_HEAD} FROM event_heads WHERE group_id = ?", (group_id,)).fetchone()
    if row is None:
        return HeadRow()
    return HeadRow(row[0], bytes(row[1]), row[2], row[3], row[4], row[5], row[6])


def state_and_head(conn: Conn, group_id: int) -> tuple[tuple[GroupState, int] | None, HeadRow]:
    """What a post checks before the chain rules: the group's state and profile version
    (:func:`relay.store.groups.state_and_version`; None: no such group) and its head."""
    if not shared(conn):
        # SQLite: the two statements as they were (a statement there costs no round trip).
        return groups.state_and_version(conn, group_id), head(conn, group_id)
    # PostgreSQL: one statement, one round trip (the post's slowest part is its round trips
    # on the single writer connection).
    row = conn.execute(
        f"SELECT g.state, g.profile_version, {', '.join('h.' + c for c in _HEAD.split(', '))} "
        "FROM groups AS g LEFT JOIN event_heads AS h ON h.group_id = g.id WHERE g.id = ?",
        (group_id,),
    ).fetchone()
    if row is None:
        return None, HeadRow()  # no such group: the post is refused, whatever its head
    current = (GroupState(row[0]), int(row[1]))
    if row[2] is None:
        return current, HeadRow()
    return current, HeadRow(row[2], bytes(row[3]), row[4], row[5], row[6], row[7], row[8])


def states_and_heads(
    conn: Conn, group_ids: Sequence[int]
) -> dict[int, tuple[tuple[GroupState, int], HeadRow]]:
    """:func:`state_and_head` of several groups in one statement (PostgreSQL's batches of
    posts); a group that does not exist is left out."""
    found: dict[int, tuple[tuple[GroupState, int], HeadRow]] = {}
    for row in conn.execute(
        f"SELECT g.id, g.state, g.profile_version, {', '.join('h.' + c for c in _HEAD.split(', '))} "
        "FROM groups AS g LEFT JOIN event_heads AS h ON h.group_id = g.id "
        "WHERE g.id = ANY(CAST(? AS bigint[]))",
        (list(group_ids),),
    ):
        current = (GroupState(row[1]), int(row[2]))
        head = HeadRow() if row[3] is None else HeadRow(row[3], bytes(row[4]), *row[5:10])
        found[int(row[0])] = (current, head)
    return found


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event of :func:`append_many`: its row, and what to announce of it (or None)."""

    group_id: int
    seq: int
    event_id: bytes
    event: bytes
    created_at: int
    stored_at: int
    announcement: str | None = None


def next_head(before: HeadRow, new: NewEvent) -> HeadRow:
    """The head after ``new`` is stored on ``before`` (what :func:`append` writes)."""
    return HeadRow(
        head_seq=new.seq,
        head_id=new.event_id,
        head_created_at=new.created_at,
        first_seq=before.first_seq or new.seq,
        count=before.count + 1,
        bytes=before.bytes + len(new.event),
        pruned=before.pruned,
    )


def append_many(conn: Conn, new: Sequence[NewEvent], heads: dict[int, HeadRow]) -> None:
    """PostgreSQL only: store ``new`` (the caller checked each against the chain, in order),
    set each group's head to ``heads[group]`` (its head after its last new event) and
    announce the newest event of each group, all in one statement: all of it or none.

    One announcement per group, not per event: a process that hears "group G has event N"
    reads what it misses up to N (``relay.server.fanout``), and every announcement costs
    each listening process a wake-up, its own included."""
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    for event in new:
        for column, value in zip(
            columns,
            (
                event.group_id,
                event.seq,
                event.event_id,
                event.event,
                event.created_at,
                event.stored_at,
                len(event.event),
            ),
            strict=True,
        ):
            column.append(value)
    head_columns: list[list[Any]] = [[], [], [], [], [], [], [], []]
    for group_id, head in heads.items():
        for column, value in zip(head_columns, _values(head, group_id), strict=True):
            column.append(value)
    newest = {event.group_id: event.announcement for event in new if event.announcement is not None}
    announcements = list(newest.values())
    conn.execute(
        "WITH stored AS (INSERT INTO events (group_id, seq, id, event, created_at, stored_at, size) "
        f"SELECT * FROM unnest({_ARRAYS_EVENT})), "
        f"head AS (INSERT INTO event_heads (group_id, {_HEAD}) SELECT * FROM unnest({_ARRAYS_HEAD}) "
        f"ON CONFLICT (group_id) DO UPDATE SET {_HEAD_FROM_EXCLUDED}) "
        "SELECT count(pg_notify(?, a)) FROM unnest(CAST(? AS text[])) AS a",
        (*columns, *head_columns, CHANNEL, announcements),
    )


_ARRAYS_EVENT = ", ".join(
    f"CAST(? AS {t}[])" for t in ("bigint", "bigint", "bytea", "bytea", "bigint", "bigint", "bigint")
)
_ARRAYS_HEAD = ", ".join(
    f"CAST(? AS {t}[])"
    for t in ("bigint", "bigint", "bytea", "bigint", "bigint", "bigint", "bigint", "bigint")
)


def id_at(conn: Conn, group_id: int, seq: int) -> bytes | None:
    row = conn.execute("SELECT id FROM events WHERE group_id = ? AND seq = ?", (group_id, seq)).fetchone()
    return None if row is None else bytes(row[0])


def event_at(conn: Conn, group_id: int, seq: int) -> bytes | None:
    row = conn.execute("SELECT event FROM events WHERE group_id = ? AND seq = ?", (group_id, seq)).fetchone()
    return None if row is None else bytes(row[0])


def append(
    conn: Conn,
    group_id: int,
    before: HeadRow,
    *,
    seq: int,
    event_id: bytes,
    event: bytes,
    created_at: int,
    now: int,
    announcement: str | None = None,
) -> HeadRow:
    """Store the event after ``before`` (the caller checked the chain); returns the new head.

    ``announcement``: what to tell the other processes of the stored event, as
    :func:`relay.store.fleet.announce` would, in this transaction (nothing on an unshared
    database, where no other process listens)."""
    after = HeadRow(
        head_seq=seq,
        head_id=event_id,
        head_created_at=created_at,
        first_seq=before.first_seq or seq,
        count=before.count + 1,
        bytes=before.bytes + len(event),
        pruned=before.pruned,
    )
    row = (group_id, seq, event_id, event, created_at, now, len(event))
    if shared(conn):
        # PostgreSQL: the row, the head and the announcement in one statement, one round trip
        # (data-modifying CTEs run whether or not they are read; pg_notify is in the part
        # that is, and runs once per stored row: exactly once).
        if announcement is None:
            conn.execute(f"WITH head AS ({_UPSERT_HEAD}) {_INSERT_EVENT}", (*_values(after, group_id), *row))
        else:
            conn.execute(
                f"WITH stored AS ({_INSERT_EVENT} RETURNING seq), "
                f"head AS ({_UPSERT_HEAD} RETURNING group_id) SELECT pg_notify(?, ?) FROM stored, head",
                (*row, *_values(after, group_id), CHANNEL, announcement),
            )
        return after
    conn.execute(_INSERT_EVENT, row)
    conn.execute(_UPSERT_HEAD, _values(after, group_id))
    return after


_INSERT_EVENT = (
    "INSERT INTO events (group_id, seq, id, event, created_at, stored_at, size) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_HEAD = (
    f"INSERT INTO event_heads (group_id, {_HEAD}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT (group_id) DO UPDATE SET {_HEAD_FROM_EXCLUDED}"
)


def _values(row: HeadRow, group_id: int) -> tuple[object, ...]:
    head = (row.head_seq, row.head_id, row.head_created_at, row.first_seq, row.count, row.bytes, row.pruned)
    return (group_id, *head)


def prune_to_size(conn: Conn, group_id: int, current: HeadRow, max_events: int, max_bytes: int) -> int:
    """Drop the oldest events until the group is within both bounds (never the head)."""
    return retention.prune_to_size(
        conn,
        _LOG,
        group_id,
        newest=current.head_seq,
        count=current.count,
        size=current.bytes,
        max_count=max_events,
        max_bytes=max_bytes,
    )


def prune_through(conn: Conn, group_id: int, upto: int) -> int:
    """Drop the group's events up to ``upto`` inclusive (never the head); returns how many."""
    return retention.prune_through(conn, _LOG, group_id, upto)


def prune_older_than(conn: Conn, stored_before: int, limit: int) -> dict[int, int]:
    """Age retention: drop up to about ``limit`` events stored before the time, oldest first.

    Returns the events dropped per group.  A group's newest event is kept whatever its age.
    """
    return retention.prune_older_than(conn, _LOG, stored_before, limit)


def _bounds(conn: Conn, group_id: int) -> tuple[int, int]:
    current = head(conn, group_id)
    return current.head_seq, current.first_seq


_LOG = retention.Log("events", "event_heads", "seq", "first_seq", "events_age", lock_chain, _bounds)


def read_after(conn: Conn, group_id: int, after: int, limit: int) -> list[tuple[int, bytes]]:
    """Up to ``limit`` stored events after ``after``, oldest first, as (seq, encoded Signed)."""
    return [
        (seq, bytes(event))
        for seq, event in conn.execute(
            "SELECT seq, event FROM events WHERE group_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (group_id, after, limit),
        )
    ]


# --- equivocation proofs ----------------------------------------------------------


def add_equivocation(
    conn: Conn, group_id: int, seq: int, kept: bytes, other: bytes, now: int, keep: int
) -> bool:
    """Keep both signed events as proof; False when the group already holds ``keep`` proofs
    (or this very pair)."""
    (held,) = conn.execute("SELECT count(*) FROM equivocations WHERE group_id = ?", (group_id,)).fetchone()
    if int(held) >= keep:
        return False
    same = conn.execute(
        "SELECT 1 FROM equivocations WHERE group_id = ? AND seq = ? AND other = ?", (group_id, seq, other)
    ).fetchone()
    if same is not None:
        return False
    conn.execute(
        "INSERT INTO equivocations (group_id, seq, kept, other, at) VALUES (?, ?, ?, ?, ?)",
        (group_id, seq, kept, other, now),
    )
    return True


@dataclass(frozen=True, slots=True)
class Equivocation:
    group_id: int
    seq: int
    kept: bytes
    other: bytes
    at: int


def equivocations(conn: Conn, group_id: int, limit: int = 100) -> list[Equivocation]:
    return [
        Equivocation(g, s, bytes(k), bytes(o), a)
        for g, s, k, o, a in conn.execute(
            "SELECT group_id, seq, kept, other, at FROM equivocations WHERE group_id = ? ORDER BY id LIMIT ?",
            (group_id, limit),
        )
    ]


@dataclass(frozen=True, slots=True)
class Totals:
    events: int = 0
    bytes: int = 0
    pruned: int = 0
    equivocations: int = 0
    inbox: int = 0


def totals(conn: Conn) -> Totals:
    """For metrics and stats: sums over the per-group summaries (one row per group)."""
    events, size, pruned = conn.execute(
        "SELECT coalesce(sum(count), 0), coalesce(sum(bytes), 0), coalesce(sum(pruned), 0) FROM event_heads"
    ).fetchone()
    (proofs,) = conn.execute("SELECT count(*) FROM equivocations").fetchone()
    (inbox,) = conn.execute("SELECT count(*) FROM direct_inbox").fetchone()
    return Totals(int(events), int(size), int(pruned), int(proofs), int(inbox))


# --- the direct-invitation inbox ----------------------------------------------------


def inbox_add(conn: Conn, group_id: int, member_key: bytes, request: bytes, now: int, limit: int) -> bool:
    """Keep an invitation for a member who is not subscribed; False when its inbox is full."""
    (held,) = conn.execute(
        "SELECT count(*) FROM direct_inbox WHERE group_id = ? AND member_key = ?", (group_id, member_key)
    ).fetchone()
    if int(held) >= limit:
        return False
    conn.execute(
        "INSERT INTO direct_inbox (group_id, member_key, request, stored_at) VALUES (?, ?, ?, ?)",
        (group_id, member_key, request, now),
    )
    return True


def inbox_take(conn: Conn, group_id: int, member_key: bytes, stored_after: int) -> list[bytes]:
    """The member's waiting invitations, oldest first, removed from the inbox (expired ones too)."""
    rows = conn.execute(
        "SELECT id, request, stored_at FROM direct_inbox WHERE group_id = ? AND member_key = ? ORDER BY id",
        (group_id, member_key),
    ).fetchall()
    if rows:
        conn.execute("DELETE FROM direct_inbox WHERE group_id = ? AND member_key = ?", (group_id, member_key))
    return [bytes(request) for _, request, stored_at in rows if stored_at >= stored_after]


def inbox_expire(conn: Conn, stored_before: int, limit: int) -> int:
    cursor = conn.execute(
        "DELETE FROM direct_inbox WHERE id IN (SELECT id FROM direct_inbox INDEXED BY direct_inbox_age "
        "WHERE stored_at < ? ORDER BY stored_at LIMIT ?)",
        (stored_before, limit),
    )
    return int(cursor.rowcount)
