"""Groups and their service-group log, as rows.

Functions here run on the database worker thread inside a transaction opened
by :class:`relay.store.db.Database`; they take the connection (a
:class:`relay.store.conn.Conn`, either engine) first and return plain dataclasses.
They store exactly what they are given (signed profile bytes included) and make no
policy decision.  Their SQL is the subset SQLite and PostgreSQL share (see
``relay.store.conn``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.protocol.state import GroupState
from relay.store.conn import Conn

_COLUMNS = (
    "id, channel, service_group, state, reason_code, reason, address_id, address_issued_at, "
    "profile, profile_version, kind, name, invited_at, updated_at, activation_deadline, "
    "admission, max_members, admission_suspended"
)


@dataclass(frozen=True, slots=True)
class GroupRecord:
    id: int
    channel: bytes
    service_group: bytes
    state: GroupState
    reason_code: str | None
    reason: str | None
    address_id: str | None
    address_issued_at: int | None
    profile: bytes  # the encoded Signed profile, body bytes exactly as signed (empty: a refusal)
    profile_version: int
    kind: str
    name: str
    invited_at: int
    updated_at: int
    activation_deadline: int | None
    admission: str  # the owners' signed admission rule: "auto" | "approval"
    max_members: int  # the owners' signed limit; 0 = none
    admission_suspended: bool  # paused by an owner command


def _record(row: Any) -> GroupRecord | None:
    if row is None:
        return None
    values = list(row)
    # Blobs as ``bytes`` whatever the driver hands back (a memoryview, say).
    values[1], values[2], values[8] = bytes(values[1]), bytes(values[2]), bytes(values[8])
    values[3] = GroupState(str(values[3]))
    values[17] = bool(values[17])
    return GroupRecord(*values)


def by_channel(conn: Conn, channel: bytes) -> GroupRecord | None:
    return _record(conn.execute(f"SELECT {_COLUMNS} FROM groups WHERE channel = ?", (channel,)).fetchone())


def by_address(conn: Conn, address_id: str) -> GroupRecord | None:
    return _record(
        conn.execute(f"SELECT {_COLUMNS} FROM groups WHERE address_id = ?", (address_id,)).fetchone()
    )


def by_id(conn: Conn, group_id: int) -> GroupRecord | None:
    return _record(conn.execute(f"SELECT {_COLUMNS} FROM groups WHERE id = ?", (group_id,)).fetchone())


def state_and_version(conn: Conn, group_id: int) -> tuple[GroupState, int] | None:
    """The group's state and profile version alone (None: no such group): what a post checks
    its cached view of the group against, inside its transaction."""
    row = conn.execute("SELECT state, profile_version FROM groups WHERE id = ?", (group_id,)).fetchone()
    return None if row is None else (GroupState(row[0]), int(row[1]))


def channels_in_states(conn: Conn, states: tuple[GroupState, ...]) -> list[tuple[int, bytes]]:
    """(id, channel) of every group in one of ``states``, for the discovery tag index."""
    marks = ", ".join("?" for _ in states)
    rows = conn.execute(
        f"SELECT id, channel FROM groups WHERE state IN ({marks})", [s.value for s in states]
    ).fetchall()
    return [(int(group_id), bytes(channel)) for group_id, channel in rows]


def channels_of(conn: Conn, group_ids: Sequence[int]) -> list[tuple[int, bytes]]:
    """(id, channel) of those of ``group_ids`` that exist, for the discovery tag index."""
    if not group_ids:
        return []
    marks = ", ".join("?" for _ in group_ids)
    rows = conn.execute(f"SELECT id, channel FROM groups WHERE id IN ({marks})", list(group_ids)).fetchall()
    return [(int(group_id), bytes(channel)) for group_id, channel in rows]


def count_live(conn: Conn) -> int:
    """Groups not rejected or removed, from the per-state counts the triggers keep (O(1))."""
    (n,) = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM group_counts WHERE state NOT IN ('rejected', 'removed')"
    ).fetchone()
    return int(n)


def prune_closed(conn: Conn, keep: int) -> int:
    """Forget the oldest rejected/removed groups beyond ``keep``; returns how many were dropped."""
    (closed,) = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM group_counts WHERE state IN ('rejected', 'removed')"
    ).fetchone()
    excess = int(closed) - keep
    if excess <= 0:
        return 0
    # Without statistics SQLite prefers the state index and sorts every closed group.
    victims = (
        "SELECT id FROM groups INDEXED BY groups_closed_by_age "
        "WHERE state IN ('rejected', 'removed') ORDER BY updated_at, id LIMIT ?"
    )
    for table in ("service_log", "join_requests"):
        conn.execute(f"DELETE FROM {table} WHERE group_id IN ({victims})", (excess,))
    conn.execute(f"DELETE FROM groups WHERE id IN ({victims})", (excess,))
    return excess


def delete(conn: Conn, group_id: int) -> None:
    """Forget a group, its service log and its join requests."""
    conn.execute("DELETE FROM service_log WHERE group_id = ?", (group_id,))
    conn.execute("DELETE FROM join_requests WHERE group_id = ?", (group_id,))
    conn.execute("DELETE FROM groups WHERE id = ?", (group_id,))


def count_by_state(conn: Conn) -> dict[str, int]:
    return {s: int(n) for s, n in conn.execute("SELECT state, n FROM group_counts")}


@dataclass(frozen=True, slots=True)
class NewGroup:
    """What an invitation contributes to a new group row."""

    channel: bytes
    service_group: bytes
    profile: bytes
    profile_version: int
    kind: str
    name: str
    admission: str = "auto"
    max_members: int = 0
    # A refused invitation keeps only this (SHA-256 of the encoded signed profile), and an
    # empty ``profile``.
    profile_digest: bytes | None = None


def insert(
    conn: Conn,
    group: NewGroup,
    *,
    state: GroupState,
    now: int,
    address_id: str | None = None,
    activation_deadline: int | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
) -> GroupRecord | None:
    """A new group row, or None when the channel has one already: another relay process's
    transaction may have inserted it first (PostgreSQL waits for that one to commit, then
    skips), and the caller reads that group instead."""
    row = conn.execute(
        f"{_INSERT} ON CONFLICT (channel) DO NOTHING RETURNING {_COLUMNS}",
        _insert_values(group, state, now, address_id, activation_deadline, reason_code, reason),
    ).fetchone()
    return _record(row)


# The row as stored, columns defaulted by the schema included, in the one statement.
_INSERT = (
    "INSERT INTO groups (channel, service_group, state, reason_code, reason, address_id, "
    "address_issued_at, profile, profile_version, kind, name, invited_at, updated_at, "
    "activation_deadline, admission, max_members, profile_digest) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_values(
    group: NewGroup,
    state: GroupState,
    now: int,
    address_id: str | None,
    activation_deadline: int | None,
    reason_code: str | None,
    reason: str | None,
) -> tuple[object, ...]:
    return (
        group.channel,
        group.service_group,
        state.value,
        reason_code,
        reason,
        address_id,
        now if address_id else None,
        group.profile,
        group.profile_version,
        group.kind,
        group.name,
        now,
        now,
        activation_deadline,
        group.admission,
        group.max_members,
        group.profile_digest,
    )


def set_state(
    conn: Conn,
    group_id: int,
    state: GroupState,
    now: int,
    *,
    reason_code: str | None = None,
    reason: str | None = None,
) -> None:
    conn.execute(
        "UPDATE groups SET state = ?, reason_code = ?, reason = ?, updated_at = ? WHERE id = ?",
        (state.value, reason_code, reason, now, group_id),
    )


def issue_address(conn: Conn, group_id: int, address_id: str, now: int, deadline: int) -> bool:
    """Give the group its address, unless it has one (another process issued it first): a
    group has one address, ever.  True if this call issued it."""
    cursor = conn.execute(
        "UPDATE groups SET address_id = ?, address_issued_at = ?, activation_deadline = ?, "
        "updated_at = ? WHERE id = ? AND address_id IS NULL",
        (address_id, now, deadline, now, group_id),
    )
    return cursor.rowcount > 0


def set_profile(conn: Conn, group_id: int, group: NewGroup, version: int, now: int) -> None:
    """Store a newer signed profile and the admission rules copied out of it."""
    conn.execute(
        "UPDATE groups SET profile = ?, profile_version = ?, name = ?, admission = ?, max_members = ?, "
        "updated_at = ? WHERE id = ?",
        (group.profile, version, group.name, group.admission, group.max_members, now, group_id),
    )


def set_admission_suspended(conn: Conn, group_id: int, suspended: bool, now: int) -> None:
    conn.execute(
        "UPDATE groups SET admission_suspended = ?, updated_at = ? WHERE id = ?",
        (int(suspended), now, group_id),
    )


def overdue(conn: Conn, now: int, limit: int = 1000) -> list[GroupRecord]:
    """Accepted groups whose activation deadline has passed."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM groups WHERE state = 'accepted' AND activation_deadline < ? LIMIT ?",
        (now, limit),
    ).fetchall()
    return [r for r in map(_record, rows) if r is not None]


def listing(conn: Conn, *, state: str | None = None, limit: int = 100, after: int = 0) -> list[GroupRecord]:
    if state is None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM groups WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM groups WHERE state = ? AND id > ? ORDER BY id LIMIT ?",
            (state, after, limit),
        ).fetchall()
    return [r for r in map(_record, rows) if r is not None]


@dataclass(frozen=True, slots=True)
class LogRow:
    seq: int
    at: int
    event: str
    detail: str


def append_log(conn: Conn, group_id: int, now: int, event: str, detail: str, *, keep: int) -> None:
    """Append to the group's service log, keeping only the newest ``keep`` entries."""
    (found,) = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM service_log WHERE group_id = ?", (group_id,)
    ).fetchone()
    last = int(found)
    conn.execute(
        "INSERT INTO service_log (group_id, seq, at, event, detail) VALUES (?, ?, ?, ?, ?)",
        (group_id, last + 1, now, event, detail),
    )
    conn.execute("DELETE FROM service_log WHERE group_id = ? AND seq <= ?", (group_id, last + 1 - keep))


def read_log(conn: Conn, group_id: int, limit: int = 1000) -> list[LogRow]:
    rows = conn.execute(
        "SELECT seq, at, event, detail FROM service_log WHERE group_id = ? ORDER BY seq DESC LIMIT ?",
        (group_id, limit),
    ).fetchall()
    return [LogRow(*r) for r in reversed(rows)]
