"""Join requests as rows: the durable per-group queue, members, and the per-group counts.

Functions here run on the database worker thread inside a transaction opened
by :class:`relay.store.db.Database`.  The ``id`` of a row is its arrival order.
The counts in ``group_queues`` are kept by triggers (migration 3), so they can
never disagree with the rows.  The signed request is stored as received, byte
for byte.  The SQL is the subset SQLite and PostgreSQL share (see
``relay.store.conn``), but for a batch of arriving requests on PostgreSQL
(:func:`intake_views`, :func:`insert_rows`: one statement each for the lot, where every
statement is a round trip).  No policy here: the decisions come from
``relay.protocol.admission``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.protocol.admission import Decision, JoinState
from relay.protocol.state import GroupState
from relay.store.conn import Conn, Rows

_COLUMNS = (
    "id, group_id, member_key, request, name, status, code, reason, received_at, decided_at, "
    "attempts, next_attempt_ms, last_error"
)


@dataclass(frozen=True, slots=True)
class JoinRow:
    id: int
    group_id: int
    member_key: bytes
    request: bytes  # the encoded Signed join request, body bytes exactly as signed
    name: str
    status: JoinState
    code: str | None
    reason: str | None
    received_at: int
    decided_at: int | None
    attempts: int
    next_attempt_ms: int
    last_error: str | None

    @property
    def decision(self) -> Decision:
        return Decision(self.status, self.code, self.reason)


def _row(values: Any) -> JoinRow | None:
    if values is None:
        return None
    fields = list(values)
    fields[2], fields[3] = bytes(fields[2]), bytes(fields[3])  # blobs as bytes, whatever the driver
    fields[5] = JoinState(str(fields[5]))
    return JoinRow(*fields)


def _rows(rows: Rows) -> list[JoinRow]:
    return [r for r in map(_row, rows.fetchall()) if r is not None]


@dataclass(frozen=True, slots=True)
class QueueCounts:
    held: int = 0
    pending: int = 0
    dead: int = 0
    members: int = 0
    refused: int = 0

    @property
    def undecided(self) -> int:
        return self.held + self.pending + self.dead


def counts(conn: Conn, group_id: int) -> QueueCounts:
    row = conn.execute(
        "SELECT held, pending, dead, members, refused FROM group_queues WHERE group_id = ?", (group_id,)
    ).fetchone()
    return QueueCounts(*row) if row else QueueCounts()


@dataclass(frozen=True, slots=True)
class IntakeView:
    """What deciding an arriving request reads, in one statement: the group's state and the
    owners' rules (not the signed profile), its queue counts, and the id of the request the
    member key already has here, if any.  Narrow on purpose: it is read for every request,
    and with Python's sqlite3 each statement and each column fetched is a round trip of the
    GIL between the writer thread and the trio thread."""

    state: GroupState
    reason_code: str | None
    reason: str | None
    admission: str
    max_members: int
    admission_suspended: bool
    members: int
    held: int
    undecided: int  # held, pending approval or dead-lettered
    existing_id: int | None
    banned: bool = False  # a signed ban of this key is kept (relay.store.timeline's roster)


def intake_view(conn: Conn, group_id: int, member_key: bytes) -> IntakeView | None:
    row = conn.execute(
        "SELECT g.state, g.reason_code, g.reason, g.admission, g.max_members, g.admission_suspended, "
        "coalesce(q.members, 0), coalesce(q.held, 0), coalesce(q.held + q.pending + q.dead, 0), "
        "(SELECT j.id FROM join_requests AS j WHERE j.group_id = g.id AND j.member_key = ?), "
        "(SELECT r.banned FROM member_roster AS r WHERE r.group_id = g.id AND r.member = ?) "
        "FROM groups AS g LEFT JOIN group_queues AS q ON q.group_id = g.id WHERE g.id = ?",
        (member_key, member_key, group_id),
    ).fetchone()
    return None if row is None else _intake(row)


def _intake(row: Sequence[Any]) -> IntakeView:
    return IntakeView(
        GroupState(row[0]),
        row[1],
        row[2],
        row[3],
        row[4],
        bool(row[5]),
        int(row[6]),
        int(row[7]),
        int(row[8]),
        row[9],
        row[10] is not None and int(row[10]) != 0,
    )


def intake_views(conn: Conn, requests: Sequence[tuple[int, bytes]]) -> list[IntakeView | None]:
    """PostgreSQL only: :func:`intake_view` of each (group id, member key), in one statement
    (a batch of join intake); None where the group does not exist."""
    views: list[IntakeView | None] = [None] * len(requests)
    for row in conn.execute(
        "SELECT r.n, g.state, g.reason_code, g.reason, g.admission, g.max_members, g.admission_suspended, "
        "coalesce(q.members, 0), coalesce(q.held, 0), coalesce(q.held + q.pending + q.dead, 0), "
        "(SELECT j.id FROM join_requests AS j WHERE j.group_id = g.id AND j.member_key = r.k), "
        "(SELECT m.banned FROM member_roster AS m WHERE m.group_id = g.id AND m.member = r.k) "
        "FROM unnest(CAST(? AS bigint[]), CAST(? AS bytea[])) WITH ORDINALITY AS r (g, k, n) "
        "JOIN groups AS g ON g.id = r.g LEFT JOIN group_queues AS q ON q.group_id = g.id",
        ([group_id for group_id, _ in requests], [key for _, key in requests]),
    ):
        views[int(row[0]) - 1] = _intake(row[1:])
    return views


def totals(conn: Conn) -> QueueCounts:
    """Sums over every group (for metrics and stats: one pass over a small table)."""
    row = conn.execute(
        "SELECT coalesce(sum(held), 0), coalesce(sum(pending), 0), coalesce(sum(dead), 0), "
        "coalesce(sum(members), 0), coalesce(sum(refused), 0) FROM group_queues"
    ).fetchone()
    return QueueCounts(*map(int, row))


def by_member(conn: Conn, group_id: int, member_key: bytes) -> JoinRow | None:
    return _row(
        conn.execute(
            f"SELECT {_COLUMNS} FROM join_requests WHERE group_id = ? AND member_key = ?",
            (group_id, member_key),
        ).fetchone()
    )


def status_of(conn: Conn, group_id: int, member_key: bytes) -> JoinState | None:
    """The state of the member key's request here (None: none), without the request itself."""
    row = conn.execute(
        "SELECT status FROM join_requests WHERE group_id = ? AND member_key = ?", (group_id, member_key)
    ).fetchone()
    return None if row is None else JoinState(str(row[0]))


def by_id(conn: Conn, row_id: int) -> JoinRow | None:
    return _row(conn.execute(f"SELECT {_COLUMNS} FROM join_requests WHERE id = ?", (row_id,)).fetchone())


@dataclass(frozen=True, slots=True)
class NewJoin:
    group_id: int
    member_key: bytes
    request: bytes
    name: str


_INSERT = (
    "INSERT INTO join_requests (group_id, member_key, request, name, status, code, reason, "
    "received_at, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_values(join: NewJoin, decision: Decision, now: int) -> tuple[object, ...]:
    decided_at = None if decision.state.undecided else now
    return (
        join.group_id,
        join.member_key,
        join.request,
        join.name,
        decision.state.value,
        decision.code,
        decision.reason,
        now,
        decided_at,
    )


def insert(conn: Conn, join: NewJoin, decision: Decision, now: int) -> int:
    """Store an arriving request with its first decision; returns its id (arrival order)."""
    (row_id,) = conn.execute(f"{_INSERT} RETURNING id", _insert_values(join, decision, now)).fetchone()
    return int(row_id)


def insert_row(conn: Conn, join: NewJoin, decision: Decision, now: int) -> JoinRow:
    """Store an arriving request like :func:`insert`, and return the row as stored but for its
    id, which is 0: every other column is known (the schema's defaults for the attempt columns,
    no trigger writes to the row), so nothing is read back.  This is the intake's hot path, and
    nothing there needs the id; ``RETURNING id`` would cost Python's ``sqlite3`` a second step
    of the statement, one more hand-over of the GIL on the writer thread per request."""
    conn.execute(_INSERT, _insert_values(join, decision, now))
    return row_of(join, decision, now)


def insert_rows(conn: Conn, rows: Sequence[tuple[NewJoin, Decision, int]]) -> None:
    """PostgreSQL only: :func:`insert_row` of each (request, decision, now), in one statement
    (a batch of join intake): all of them or none."""
    columns: list[list[Any]] = [[] for _ in range(9)]
    for join, decision, now in rows:
        for column, value in zip(columns, _insert_values(join, decision, now), strict=True):
            column.append(value)
    conn.execute(_INSERT_MANY, columns)


_INSERT_MANY = (
    "INSERT INTO join_requests (group_id, member_key, request, name, status, code, reason, received_at, "
    "decided_at) SELECT * FROM unnest("
    + ", ".join(
        f"CAST(? AS {t}[])"
        for t in ("bigint", "bytea", "bytea", "text", "text", "text", "text", "bigint", "bigint")
    )
    + ")"
)


def row_of(join: NewJoin, decision: Decision, now: int, row_id: int = 0) -> JoinRow:
    """The row :func:`insert` stores for ``join`` (id 0: not read back, or a request answered
    but not stored)."""
    return JoinRow(
        id=row_id,
        group_id=join.group_id,
        member_key=join.member_key,
        request=join.request,
        name=join.name,
        status=decision.state,
        code=decision.code,
        reason=decision.reason,
        received_at=now,
        decided_at=None if decision.state.undecided else now,
        attempts=0,
        next_attempt_ms=0,
        last_error=None,
    )


def delete(conn: Conn, row_id: int) -> None:
    conn.execute("DELETE FROM join_requests WHERE id = ?", (row_id,))


def set_decision(conn: Conn, row_id: int, decision: Decision, now: int) -> None:
    decided_at = None if decision.state.undecided else now
    conn.execute(
        "UPDATE join_requests SET status = ?, code = ?, reason = ?, decided_at = ?, last_error = NULL "
        "WHERE id = ?",
        (decision.state.value, decision.code, decision.reason, decided_at, row_id),
    )


def record_failure(conn: Conn, row_id: int, error: str, next_attempt_ms: int, *, dead: bool) -> None:
    """Count a failed attempt; after too many the request waits for the operator (``dead``)."""
    conn.execute(
        "UPDATE join_requests SET attempts = attempts + 1, next_attempt_ms = ?, last_error = ?, "
        "status = CASE WHEN ? THEN 'dead' ELSE status END WHERE id = ?",
        (next_attempt_ms, error[:500], dead, row_id),
    )


def retry(conn: Conn, row_id: int) -> bool:
    """Put a dead request back at its place in the queue, with a fresh count of attempts."""
    cursor = conn.execute(
        "UPDATE join_requests SET status = 'held', attempts = 0, next_attempt_ms = 0 "
        "WHERE id = ? AND status = 'dead'",
        (row_id,),
    )
    return cursor.rowcount == 1


def due(conn: Conn, group_id: int, now_ms: int, limit: int) -> list[JoinRow]:
    """The group's held requests in arrival order, skipping those waiting out a back-off."""
    return _rows(
        conn.execute(
            f"SELECT {_COLUMNS} FROM join_requests WHERE group_id = ? AND status = 'held' "
            "AND next_attempt_ms <= ? ORDER BY id LIMIT ?",
            (group_id, now_ms, limit),
        )
    )


def next_due_ms(conn: Conn, group_id: int) -> int | None:
    """When the group's earliest held request may be tried (None: nothing held)."""
    (value,) = conn.execute(
        "SELECT min(next_attempt_ms) FROM join_requests WHERE group_id = ? AND status = 'held'",
        (group_id,),
    ).fetchone()
    return None if value is None else int(value)


def groups_with_held(conn: Conn) -> list[int]:
    return [int(g) for (g,) in conn.execute("SELECT group_id FROM group_queues WHERE held > 0")]


def expired(conn: Conn, received_before: int, limit: int) -> list[JoinRow]:
    """Held or dead requests older than the age limit, oldest first."""
    return _rows(
        conn.execute(
            f"SELECT {_COLUMNS} FROM join_requests WHERE status IN ('held', 'dead') "
            "AND received_at < ? ORDER BY received_at LIMIT ?",
            (received_before, limit),
        )
    )


def pending(conn: Conn, group_id: int, limit: int) -> list[JoinRow]:
    return _rows(
        conn.execute(
            f"SELECT {_COLUMNS} FROM join_requests WHERE group_id = ? AND status = 'pending_approval' "
            "ORDER BY id LIMIT ?",
            (group_id, limit),
        )
    )


def listing(conn: Conn, *, statuses: tuple[str, ...], after: int = 0, limit: int = 100) -> list[JoinRow]:
    """For the operator: requests in the given states, in arrival order, one page at a time."""
    marks = ", ".join("?" for _ in statuses)
    return _rows(
        conn.execute(
            f"SELECT {_COLUMNS} FROM join_requests WHERE status IN ({marks}) AND id > ? ORDER BY id LIMIT ?",
            (*statuses, after, limit),
        )
    )


def prune_refused(conn: Conn, group_id: int, keep: int) -> int:
    """Forget the group's oldest refusals beyond ``keep`` (fresh member keys cost nothing)."""
    excess = counts(conn, group_id).refused - keep
    if excess <= 0:
        return 0
    conn.execute(
        "DELETE FROM join_requests WHERE id IN (SELECT id FROM join_requests "
        "INDEXED BY join_requests_refused WHERE group_id = ? AND status = 'refused' ORDER BY id LIMIT ?)",
        (group_id, excess),
    )
    return excess
