"""Groups' timelines, as rows: member certs, messages and moderations placed by this relay.

A group's timeline is its own log beside the owners' events: places ``pos`` 1, 2, 3 ... per
group, each holding one signed entry (``kind`` "cert", "message" or "moderation") exactly as
its signer sent it, and ``after``, the owner head seq when it was placed.  A removed message
keeps its place and id with ``entry`` NULL (a tombstone), so the running hash, kept in
``timeline_heads`` with the last place, oldest kept, count and bytes, still checks.
``member_roster`` is each member's state at this relay: its current cert, the head of its own
hash chain (seq, id, created_at of its newest message), and what moderation did to it.

Functions here run inside a transaction opened by the store (``relay.store.db``), on either
engine: the SQL is the subset SQLite and PostgreSQL share (see ``relay.store.conn``), but for
an append on PostgreSQL, which folds the place, the head and the announcement into one statement
(each statement is a round trip of the single writer connection there).

Must not: hold policy (the chain, cert and moderation rules are ``relay.protocol.timeline``'s,
the hash is computed by the caller with them), decode the signed entries, or verify anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.store import retention
from relay.store.conn import Conn
from relay.store.fleet import CHANNEL, lock_timeline, shared

CERT = "cert"
MESSAGE = "message"
MODERATION = "moderation"
ZERO = bytes(32)


@dataclass(frozen=True, slots=True)
class TimelineHead:
    """A group's timeline as a whole: its last place and hash, and what retention keeps."""

    pos: int = 0
    hash: bytes = ZERO
    first_pos: int = 0  # the oldest place kept (0: none)
    count: int = 0
    bytes: int = 0
    pruned: int = 0  # places dropped by retention, ever


@dataclass(frozen=True, slots=True)
class Place:
    """One place to store: what the relay assigned, and the entry with what indexes it."""

    pos: int
    after: int
    kind: str
    id: bytes
    entry: bytes | None  # the encoded Signed, as its signer sent it (None: removed already)
    author: bytes | None = None  # a message's signer
    author_seq: int | None = None  # its seq in the author's own chain
    subject: bytes | None = None  # the message a ``remove_message`` names


@dataclass(frozen=True, slots=True)
class PlaceRow:
    """One stored place as served: ``entry`` None for a removed message."""

    pos: int
    after: int
    kind: str
    id: bytes
    entry: bytes | None


@dataclass(frozen=True, slots=True)
class RosterRow:
    """One member at one group: its cert (None: never certified here, e.g. banned first),
    its own chain's head, and moderation's marks (``removed_at``: certs issued at or before it
    no longer count; ``banned_at``, when a ban was issued: none ever will)."""

    member: bytes
    cert_id: bytes | None
    cert: bytes | None
    role: str
    issued_at: int
    head_seq: int
    head_id: bytes
    head_created_at: int
    removed_at: int | None
    banned_at: int  # 0: not banned

    @property
    def banned(self) -> bool:
        return self.banned_at != 0

    @property
    def certified(self) -> bool:
        """A cert that counts: there is one, newer than any removal, and no ban."""
        if self.cert_id is None or self.banned:
            return False
        return self.removed_at is None or self.issued_at > self.removed_at


# --- the head -----------------------------------------------------------------------------

_HEAD = "pos, hash, first_pos, count, bytes, pruned"


def head(conn: Conn, group_id: int) -> TimelineHead:
    row = conn.execute(f"SELECT {_HEAD} FROM timeline_heads WHERE group_id = ?", (group_id,)).fetchone()
    if row is None:
        return TimelineHead()
    return TimelineHead(int(row[0]), bytes(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5]))


def lock(conn: Conn, group_id: int) -> None:
    """Serialise appends to (and retention of) the group's timeline across the processes of a
    fleet, to the end of the transaction (nothing on a database one process uses)."""
    lock_timeline(conn, group_id)


def append(
    conn: Conn,
    group_id: int,
    before: TimelineHead,
    place: Place,
    *,
    running_hash: bytes,
    now: int,
    announcement: str | None = None,
) -> TimelineHead:
    """Store ``place`` after ``before`` (the caller checked it is ``before.pos + 1`` and
    computed the running hash through it); returns the new head.  ``announcement``: what to
    tell the other processes, delivered only if this commits."""
    size = 0 if place.entry is None else len(place.entry)
    after = TimelineHead(
        pos=place.pos,
        hash=running_hash,
        first_pos=before.first_pos or place.pos,
        count=before.count + 1,
        bytes=before.bytes + size,
        pruned=before.pruned,
    )
    row = (
        group_id,
        place.pos,
        place.after,
        place.kind,
        place.id,
        place.entry,
        place.author,
        place.author_seq,
        place.subject,
        now,
        size,
    )
    head_row = (group_id, after.pos, after.hash, after.first_pos, after.count, after.bytes, after.pruned)
    if shared(conn):
        # PostgreSQL: the place, the head and the announcement in one statement, one round trip
        # of the single writer connection (as relay.store.events.append does for a post).
        if announcement is None:
            conn.execute(f"WITH head AS ({_UPSERT_HEAD}) {_INSERT_PLACE}", (*head_row, *row))
        else:
            conn.execute(
                f"WITH stored AS ({_INSERT_PLACE} RETURNING pos), "
                f"head AS ({_UPSERT_HEAD} RETURNING group_id) SELECT pg_notify(?, ?) FROM stored, head",
                (*row, *head_row, CHANNEL, announcement),
            )
        return after
    conn.execute(_INSERT_PLACE, row)
    conn.execute(_UPSERT_HEAD, head_row)
    return after


_INSERT_PLACE = (
    "INSERT INTO timeline (group_id, pos, after, kind, id, entry, author, author_seq, subject, stored_at, "
    "size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_HEAD = (
    f"INSERT INTO timeline_heads (group_id, {_HEAD}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (group_id) DO UPDATE SET pos = excluded.pos, hash = excluded.hash, "
    "first_pos = excluded.first_pos, count = excluded.count, bytes = excluded.bytes, "
    "pruned = excluded.pruned"
)


# --- lookups --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intake:
    """What a member message's transaction reads before it appends, in one statement (on
    PostgreSQL every statement is a round trip of the single writer connection)."""

    state: str
    profile_version: int
    head: TimelineHead
    owner_seq: int  # the owners' head now: the place's ``after``
    roster: RosterRow | None  # the author's row
    placed: int | None  # the message's place, if it is stored already
    removal_stored: bool  # a ``remove_message`` naming it came first


def intake(conn: Conn, group_id: int, member: bytes, message_id: bytes) -> Intake | None:
    """The group's state, its timeline's head, the owners' head, the author's roster row, and
    whether the message is placed or removed already (None: no such group)."""
    row = conn.execute(
        "SELECT g.state, g.profile_version, t.pos, t.hash, t.first_pos, t.count, t.bytes, t.pruned, "
        f"e.head_seq, {', '.join('r.' + c for c in _ROSTER.split(', '))}, "
        "(SELECT p.pos FROM timeline AS p WHERE p.group_id = g.id AND p.id = ?), "
        "(SELECT count(*) FROM timeline AS m WHERE m.group_id = g.id AND m.subject = ?) "
        "FROM groups AS g LEFT JOIN timeline_heads AS t ON t.group_id = g.id "
        "LEFT JOIN event_heads AS e ON e.group_id = g.id "
        "LEFT JOIN member_roster AS r ON r.group_id = g.id AND r.member = ? WHERE g.id = ?",
        (message_id, message_id, member, group_id),
    ).fetchone()
    if row is None:
        return None
    head = TimelineHead()
    if row[2] is not None:
        head = TimelineHead(int(row[2]), bytes(row[3]), int(row[4]), int(row[5]), int(row[6]), int(row[7]))
    return Intake(
        state=str(row[0]),
        profile_version=int(row[1]),
        head=head,
        owner_seq=0 if row[8] is None else int(row[8]),
        roster=None if row[9] is None else _roster(row[9:19]),
        placed=None if row[19] is None else int(row[19]),
        removal_stored=int(row[20]) > 0,
    )


def place_of(conn: Conn, group_id: int, entry_id: bytes) -> int | None:
    """The place holding the entry with this id (a tombstone too), if kept."""
    row = conn.execute(
        "SELECT pos FROM timeline WHERE group_id = ? AND id = ?", (group_id, entry_id)
    ).fetchone()
    return None if row is None else int(row[0])


def message_exists(conn: Conn, group_id: int, message_id: bytes) -> bool:
    """A member message with this id is kept here (removed or not): a reply may name it."""
    row = conn.execute(
        "SELECT 1 FROM timeline WHERE group_id = ? AND id = ? AND kind = ?", (group_id, message_id, MESSAGE)
    ).fetchone()
    return row is not None


def event_exists(conn: Conn, group_id: int, event_id: bytes) -> bool:
    """An owner event with this id is kept here: a comment may reply to it."""
    row = conn.execute("SELECT 1 FROM events WHERE group_id = ? AND id = ?", (group_id, event_id)).fetchone()
    return row is not None


def message_at(conn: Conn, group_id: int, author: bytes, seq: int) -> bytes | None:
    """The id of ``author``'s message ``seq``, if kept."""
    row = conn.execute(
        "SELECT id FROM timeline WHERE group_id = ? AND author = ? AND author_seq = ?",
        (group_id, author, seq),
    ).fetchone()
    return None if row is None else bytes(row[0])


def author_of(conn: Conn, group_id: int, message_id: bytes) -> bytes | None:
    """The author of a message kept here (None: no such message)."""
    row = conn.execute(
        "SELECT author FROM timeline WHERE group_id = ? AND id = ? AND kind = ?",
        (group_id, message_id, MESSAGE),
    ).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


def removal_stored(conn: Conn, group_id: int, message_id: bytes) -> bool:
    """A ``remove_message`` naming this message is kept here (it may come before the message)."""
    row = conn.execute(
        "SELECT 1 FROM timeline WHERE group_id = ? AND subject = ?", (group_id, message_id)
    ).fetchone()
    return row is not None


def read_after(conn: Conn, group_id: int, after: int, limit: int) -> list[PlaceRow]:
    """Up to ``limit`` places after ``after``, oldest first."""
    return [
        PlaceRow(
            int(pos), int(placed_after), str(kind), bytes(entry_id), None if entry is None else bytes(entry)
        )
        for pos, placed_after, kind, entry_id, entry in conn.execute(
            "SELECT pos, after, kind, id, entry FROM timeline WHERE group_id = ? AND pos > ? "
            "ORDER BY pos LIMIT ?",
            (group_id, after, limit),
        )
    ]


# --- removal --------------------------------------------------------------------------------


def tombstone(conn: Conn, group_id: int, message_id: bytes) -> int | None:
    """Forget a message's content, keeping its place and id; returns the place (None: no such
    message kept here, or already removed)."""
    row = conn.execute(
        "SELECT pos, size FROM timeline WHERE group_id = ? AND id = ? AND kind = ? AND entry IS NOT NULL",
        (group_id, message_id, MESSAGE),
    ).fetchone()
    if row is None:
        return None
    pos, size = int(row[0]), int(row[1])
    conn.execute("UPDATE timeline SET entry = NULL, size = 0 WHERE group_id = ? AND pos = ?", (group_id, pos))
    conn.execute("UPDATE timeline_heads SET bytes = bytes - ? WHERE group_id = ?", (size, group_id))
    return pos


# --- the roster -----------------------------------------------------------------------------

_ROSTER = "member, cert_id, cert, role, issued_at, head_seq, head_id, head_created_at, removed_at, banned"


def _roster(row: Any) -> RosterRow:
    return RosterRow(
        member=bytes(row[0]),
        cert_id=None if row[1] is None else bytes(row[1]),
        cert=None if row[2] is None else bytes(row[2]),
        role=str(row[3]),
        issued_at=int(row[4]),
        head_seq=int(row[5]),
        head_id=ZERO if row[6] is None else bytes(row[6]),
        head_created_at=int(row[7]),
        removed_at=None if row[8] is None else int(row[8]),
        banned_at=int(row[9]),
    )


def roster_row(conn: Conn, group_id: int, member: bytes) -> RosterRow | None:
    row = conn.execute(
        f"SELECT {_ROSTER} FROM member_roster WHERE group_id = ? AND member = ?", (group_id, member)
    ).fetchone()
    return None if row is None else _roster(row)


def roster(conn: Conn, group_id: int, limit: int = 100_000) -> list[RosterRow]:
    """Every member row of the group (bounded), in key order."""
    return [
        _roster(row)
        for row in conn.execute(
            f"SELECT {_ROSTER} FROM member_roster WHERE group_id = ? ORDER BY member LIMIT ?",
            (group_id, limit),
        )
    ]


def moderators(conn: Conn, group_id: int) -> frozenset[bytes]:
    """The members whose current cert names them moderators (not removed since, not banned)."""
    rows = conn.execute(
        "SELECT member FROM member_roster WHERE group_id = ? AND role = 'moderator' AND banned = 0 "
        "AND cert_id IS NOT NULL AND (removed_at IS NULL OR issued_at > removed_at)",
        (group_id,),
    )
    return frozenset(bytes(row[0]) for row in rows)


def put_member(
    conn: Conn,
    group_id: int,
    member: bytes,
    *,
    cert_id: bytes | None,
    cert: bytes | None,
    role: str,
    issued_at: int,
    removed_at: int | None,
    banned_at: int,
) -> None:
    """The member's cert and moderation marks as the roster rules left them (the head of its
    own chain stays as it is)."""
    conn.execute(
        "INSERT INTO member_roster (group_id, member, cert_id, cert, role, issued_at, removed_at, banned) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (group_id, member) DO UPDATE SET cert_id = excluded.cert_id, cert = excluded.cert, "
        "role = excluded.role, issued_at = excluded.issued_at, removed_at = excluded.removed_at, "
        "banned = excluded.banned",
        (group_id, member, cert_id, cert, role, issued_at, removed_at, banned_at),
    )


def set_author_head(
    conn: Conn, group_id: int, member: bytes, seq: int, message_id: bytes, created_at: int
) -> None:
    """The newest message of the member's own chain (the member has a row: it is certified)."""
    conn.execute(
        "UPDATE member_roster SET head_seq = ?, head_id = ?, head_created_at = ? "
        "WHERE group_id = ? AND member = ?",
        (seq, message_id, created_at, group_id, member),
    )


def banned(conn: Conn, group_id: int, member: bytes) -> bool:
    row = conn.execute(
        "SELECT banned FROM member_roster WHERE group_id = ? AND member = ?", (group_id, member)
    ).fetchone()
    return row is not None and int(row[0]) != 0


@dataclass(frozen=True, slots=True)
class Uncertified:
    """An admitted member with no cert that counts here, as the owners' list shows it."""

    member: bytes
    name: str
    request: bytes  # the stored join request (its "about" line is shown)
    received_at: int


def uncertified(conn: Conn, group_id: int, limit: int) -> list[Uncertified]:
    """Admitted members whose key has no current cert (none, removed since, or banned), in
    arrival order."""
    rows = conn.execute(
        "SELECT j.member_key, j.name, j.request, j.received_at FROM join_requests AS j "
        "LEFT JOIN member_roster AS r ON r.group_id = j.group_id AND r.member = j.member_key "
        "WHERE j.group_id = ? AND j.status = 'admitted' AND (r.member IS NULL OR r.cert_id IS NULL "
        "OR r.banned <> 0 OR (r.removed_at IS NOT NULL AND r.issued_at <= r.removed_at)) "
        "ORDER BY j.id LIMIT ?",
        (group_id, limit),
    )
    return [Uncertified(bytes(m), str(n), bytes(r), int(t)) for m, n, r, t in rows]


# --- retention ------------------------------------------------------------------------------


def prune_to_size(conn: Conn, group_id: int, current: TimelineHead, max_places: int, max_bytes: int) -> int:
    """Drop the oldest places until the timeline is within both bounds (never the last)."""
    return retention.prune_to_size(
        conn,
        _LOG,
        group_id,
        newest=current.pos,
        count=current.count,
        size=current.bytes,
        max_count=max_places,
        max_bytes=max_bytes,
    )


def prune_through(conn: Conn, group_id: int, upto: int) -> int:
    """Drop the group's places up to ``upto`` inclusive (never the last); returns how many."""
    return retention.prune_through(conn, _LOG, group_id, upto)


def prune_older_than(conn: Conn, stored_before: int, limit: int) -> dict[int, int]:
    """Age retention: drop up to about ``limit`` places stored before the time, oldest first;
    a group's last place is kept whatever its age.  Returns the places dropped per group."""
    return retention.prune_older_than(conn, _LOG, stored_before, limit)


def _bounds(conn: Conn, group_id: int) -> tuple[int, int]:
    current = head(conn, group_id)
    return current.pos, current.first_pos


_LOG = retention.Log("timeline", "timeline_heads", "pos", "first_pos", "timeline_age", lock_timeline, _bounds)


@dataclass(frozen=True, slots=True)
class Totals:
    places: int = 0
    bytes: int = 0
    pruned: int = 0


def totals(conn: Conn) -> Totals:
    """For metrics: sums over the per-group summaries (one row per group)."""
    places, size, pruned = conn.execute(
        "SELECT coalesce(sum(count), 0), coalesce(sum(bytes), 0), coalesce(sum(pruned), 0) "
        "FROM timeline_heads"
    ).fetchone()
    return Totals(int(places), int(size), int(pruned))
