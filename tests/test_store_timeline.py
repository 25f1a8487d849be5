"""The timeline's store functions (``relay.store.timeline``) on both engines: the same answers
from a real SQLite file and a real PostgreSQL server, through exactly a ``Conn`` (the
``conn`` fixture of test_store_boundary.py refuses SQL outside the common subset)."""

from __future__ import annotations

import test_store_boundary as boundary
from test_store_boundary import StrictConn, _group

from relay.protocol.admission import Decision, JoinState
from relay.protocol.state import GroupState
from relay.store import events, groups, joins
from relay.store import timeline as store

conn = boundary.conn  # the fixture: one transaction on either engine


def _place(
    pos: int, kind: str = store.MESSAGE, *, author: bytes | None = b"a" * 32, **kw: object
) -> store.Place:
    fields: dict[str, object] = {
        "after": 0,
        "id": bytes([pos]) * 32,
        "entry": b"entry %d" % pos,
        "author": author if kind == store.MESSAGE else None,
        "author_seq": pos if kind == store.MESSAGE else None,
    }
    fields.update(kw)
    return store.Place(pos=pos, kind=kind, **fields)  # type: ignore[arg-type]


def _fill(conn: StrictConn, group: int, n: int) -> store.TimelineHead:
    head = store.head(conn, group)
    for pos in range(head.pos + 1, head.pos + n + 1):
        head = store.append(conn, group, head, _place(pos), running_hash=bytes([pos]) * 32, now=pos)
    return head


def test_places_are_appended_read_and_looked_up(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1).id
    assert store.head(conn, group) == store.TimelineHead()
    head = store.append(
        conn, group, store.head(conn, group), _place(1, store.CERT), running_hash=b"h" * 32, now=5
    )
    head = store.append(conn, group, head, _place(2, after=7), running_hash=b"i" * 32, now=6)
    assert store.head(conn, group) == head == store.TimelineHead(2, b"i" * 32, 1, 2, len(b"entry 1") * 2)
    assert type(head.hash) is bytes
    rows = store.read_after(conn, group, 0, 10)
    assert rows == [
        store.PlaceRow(1, 0, "cert", bytes([1]) * 32, b"entry 1"),
        store.PlaceRow(2, 7, "message", bytes([2]) * 32, b"entry 2"),
    ]
    assert all(type(r.entry) is bytes and type(r.id) is bytes for r in rows)
    assert store.read_after(conn, group, 1, 10) == rows[1:]
    assert (
        store.place_of(conn, group, bytes([2]) * 32) == 2 and store.place_of(conn, group, b"x" * 32) is None
    )
    assert store.message_exists(conn, group, bytes([2]) * 32)
    assert not store.message_exists(conn, group, bytes([1]) * 32)  # a cert, not a message
    assert store.message_at(conn, group, b"a" * 32, 2) == bytes([2]) * 32
    assert store.message_at(conn, group, b"a" * 32, 3) is None
    assert store.author_of(conn, group, bytes([2]) * 32) == b"a" * 32
    assert store.author_of(conn, group, bytes([1]) * 32) is None  # a cert has no author
    # a reply's target among the owners' events
    events.append(
        conn, group, events.head(conn, group), seq=1, event_id=b"e" * 32, event=b"ev", created_at=1, now=1
    )
    assert store.event_exists(conn, group, b"e" * 32) and not store.event_exists(conn, group, b"f" * 32)


def test_a_removed_message_keeps_its_place_and_id(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1).id
    head = _fill(conn, group, 2)
    removal = store.Place(3, 0, store.MODERATION, b"m" * 32, b"removal", subject=bytes([1]) * 32)
    store.append(conn, group, head, removal, running_hash=b"r" * 32, now=3)
    assert store.removal_stored(conn, group, bytes([1]) * 32)
    assert not store.removal_stored(conn, group, bytes([2]) * 32)
    assert store.tombstone(conn, group, bytes([1]) * 32) == 1
    assert store.tombstone(conn, group, bytes([1]) * 32) is None  # already removed
    assert store.tombstone(conn, group, b"m" * 32) is None  # only messages are removed
    first = store.read_after(conn, group, 0, 1)
    assert first == [store.PlaceRow(1, 0, "message", bytes([1]) * 32, None)]
    assert store.head(conn, group).bytes == len(b"entry 2") + len(b"removal")
    assert store.message_exists(conn, group, bytes([1]) * 32)  # a reply may still name it


def _put(conn: StrictConn, group: int, member: bytes, n: int, **kw: object) -> None:
    fields: dict[str, object] = {
        "cert_id": bytes([n]) * 32,
        "cert": b"cert %d" % n,
        "role": "member",
        "issued_at": n,
        "removed_at": None,
        "banned_at": 0,
    }
    fields.update(kw)
    store.put_member(conn, group, member, **fields)  # type: ignore[arg-type]


def test_the_roster_keeps_certs_heads_and_moderation(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1).id
    ann, bob, cat = b"a" * 32, b"b" * 32, b"c" * 32
    assert store.roster_row(conn, group, ann) is None
    _put(conn, group, ann, 10)
    store.set_author_head(conn, group, ann, 1, b"i" * 32, 11)
    row = store.roster_row(conn, group, ann)
    assert row == store.RosterRow(ann, bytes([10]) * 32, b"cert 10", "member", 10, 1, b"i" * 32, 11, None, 0)
    assert row.certified and not row.banned
    # a newer cert keeps the chain's head
    _put(conn, group, ann, 12, role="moderator")
    row = store.roster_row(conn, group, ann)
    assert row is not None and (row.role, row.head_seq, row.cert_id) == ("moderator", 1, bytes([12]) * 32)
    assert store.moderators(conn, group) == {ann}
    _put(conn, group, ann, 12, role="moderator", removed_at=12)
    row = store.roster_row(conn, group, ann)
    assert row is not None and row.removed_at == 12 and not row.certified and row.head_seq == 1
    assert store.moderators(conn, group) == frozenset()
    # a ban of a key never certified here makes its row
    _put(conn, group, bob, 0, cert_id=None, cert=None, banned_at=20)
    row = store.roster_row(conn, group, bob)
    assert row is not None and row.banned and row.banned_at == 20 and row.cert_id is None
    assert not row.certified
    assert store.banned(conn, group, bob) and not store.banned(conn, group, ann)
    # the join intake reads the ban with the rest of its view (one statement)
    view = joins.intake_view(conn, group, bob)
    assert view is not None and view.banned and view.existing_id is None
    assert not joins.intake_view(conn, group, ann).banned  # type: ignore[union-attr]
    _put(conn, group, cat, 5)
    # the owners' list: admitted members without a cert that counts
    for key, name in ((ann, "ann"), (bob, "bob"), (cat, "cat")):
        new = joins.NewJoin(group, key, b"request " + name.encode(), name)
        joins.insert(conn, new, Decision(JoinState.ADMITTED), 1)
    listed = store.uncertified(conn, group, 10)
    assert [(u.member, u.name, u.request) for u in listed] == [
        (ann, "ann", b"request ann"),
        (bob, "bob", b"request bob"),
    ]
    assert all(type(u.member) is bytes and type(u.received_at) is int for u in listed)
    assert [r.member for r in store.roster(conn, group)] == [ann, bob, cat]


def test_retention_drops_the_oldest_places_never_the_last(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1).id
    head = _fill(conn, group, 5)
    assert store.prune_to_size(conn, group, head, max_places=3, max_bytes=10_000) == 2
    assert store.head(conn, group).first_pos == 3 and store.head(conn, group).count == 3
    assert store.prune_older_than(conn, stored_before=5, limit=100) == {group: 2}  # never the last
    assert [r.pos for r in store.read_after(conn, group, 0, 10)] == [5]
    assert store.totals(conn) == store.Totals(places=1, bytes=len(b"entry 5"), pruned=4)
    head = _fill(conn, group, 1)  # numbering goes on after retention
    assert head.pos == 6 and head.first_pos == 5


def test_a_group_deleted_forgets_its_timeline(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.REMOVED, now=1).id
    _fill(conn, group, 2)
    _put(conn, group, b"a" * 32, 1)
    groups.delete(conn, group)
    assert store.read_after(conn, group, 0, 10) == [] and store.head(conn, group) == store.TimelineHead()
    assert store.roster_row(conn, group, b"a" * 32) is None


def test_the_intake_reads_what_a_message_needs_in_one_statement(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1).id
    ann = b"a" * 32
    read = store.intake(conn, group, ann, b"m" * 32)
    assert read == store.Intake("active", 1, store.TimelineHead(), 0, None, None, False)
    assert store.intake(conn, group + 1, ann, b"m" * 32) is None
    _put(conn, group, ann, 3)
    head = _fill(conn, group, 2)
    events.append(
        conn, group, events.head(conn, group), seq=1, event_id=b"e" * 32, event=b"ev", created_at=1, now=1
    )
    removal = store.Place(3, 1, store.MODERATION, b"r" * 32, b"removal", subject=b"m" * 32)
    head = store.append(conn, group, head, removal, running_hash=b"h" * 32, now=3)
    read = store.intake(conn, group, ann, bytes([2]) * 32)
    assert read is not None and read.head == head and read.owner_seq == 1 and read.placed == 2
    assert read.roster == store.roster_row(conn, group, ann) and not read.removal_stored
    read = store.intake(conn, group, ann, b"m" * 32)
    assert read is not None and read.placed is None and read.removal_stored
    # a message whose removal came first is placed without its content
    gone = store.Place(4, 1, store.MESSAGE, b"m" * 32, None, author=ann, author_seq=3)
    head = store.append(conn, group, head, gone, running_hash=b"i" * 32, now=4)
    assert store.read_after(conn, group, 3, 10) == [store.PlaceRow(4, 1, "message", b"m" * 32, None)]
    assert head.bytes == store.head(conn, group).bytes == len(b"entry 1") * 2 + len(b"removal")
