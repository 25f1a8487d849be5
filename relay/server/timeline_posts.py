"""Members' messages into a group's timeline (``member_post``): the checks, the pace, the job.

The cheap checks run first on the trio thread: the group is active and takes member posts,
the message's size and channel, then one read beside the writer (the member is admitted,
holds a cert here or brings one, is not banned, and the message is not already placed, which
is answered ``duplicate`` with its place and nothing checked further).  A member seen posting
here, and a message stored lately (a retry), are remembered, so neither needs that read.
The signatures are verified once, here: a cert verified once is remembered as the member's
roster row (placed again if retention dropped it from the timeline).  The pace (per member,
``relay.protocol.timeline.Pacer``) is charged only for a message whose signature checked
out, so nobody can spend a member's pace for it.  The writer's job then checks again what may
have changed (the group, the roster, the reply's target, the author's chain, the place) and
places the message, with the member's cert first if it brought one to place.

Must not: verify a signature in the writer's job, charge the pace before the signature
checked out, write SQL, or hold state the database does not also hold (the pacer is a bound,
and the members seen and the recent ids are caches the writer checks behind).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from relay.protocol import timeline as rules
from relay.protocol.admission import JoinState
from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import Append
from relay.protocol.messages import MemberPost, MemberPostResult
from relay.server.admission import GroupBinding
from relay.server.bounds import Bounds
from relay.server.events import StaleView
from relay.server.service import decode_signed
from relay.server.timeline_intake import Placed, TimelineIntake, answered, roster_with, save_member
from relay.store import joins
from relay.store import timeline as store
from relay.store.conn import Conn

RECENT_IDS = 65_536  # stored message ids remembered for retries


@dataclass(frozen=True, slots=True)
class _Known:
    """What the intake reads (or remembers) beside the writer before verifying anything."""

    placed: int | None  # the message's place, if already stored: a duplicate
    joined: JoinState | None = None  # the author's join request
    row: store.RosterRow | None = None  # the author's roster row
    cert_placed: bool = False  # the cert in the frame is kept in the timeline
    certified: bool = False  # known certified (and admitted) here: a member seen posting
    cert_id: bytes | None = None  # the cert it was seen posting under


class MemberPosts:
    """The intake of members' messages, with the pacer and the caches that spare its reads."""

    def __init__(self, intake: TimelineIntake, bounds: Bounds) -> None:
        self.intake = intake
        self.db = intake.db
        self.config = intake.config
        self.events = intake.events
        self.metrics = intake.metrics
        self.bounds = bounds
        floor = rules.PostingRules(
            kind="group",
            posts_allowed=True,
            max_bytes=self.config.max_message_bytes,
            per_minute=self.config.messages_per_minute,
            slow_mode=0,
        )
        self.pacer = rules.Pacer(floor, max_members=self.config.pacer_members)
        # Members seen posting, by (group, key): the cert they posted under.  Spares the read
        # before the signature check for a member already known; bounded like the pacer.
        self._members: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        # Newest stored message ids -> (group, place): a retry answered with no read at all.
        self._recent: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    async def submit(
        self, group: GroupBinding, frame: MemberPost
    ) -> Callable[[], Awaitable[MemberPostResult]]:
        """Check, verify and queue a member's message; returns the wait for its answer."""
        try:
            return await self._submit(group, frame)
        except RemoteProtocolError:
            self.metrics.inc("relay_member_messages_total", result="refused")
            raise

    async def _submit(
        self, group: GroupBinding, frame: MemberPost
    ) -> Callable[[], Awaitable[MemberPostResult]]:
        intake = self.intake
        view, posting = await intake.view(group)
        signed = frame.message
        member = signed.signer
        message = rules.check_message(signed, channel=view.channel, max_body=posting.max_bytes)
        message_id = rules.signed_id(rules.KIND_MESSAGE, signed)
        cert_id = None if frame.cert is None else rules.signed_id(rules.KIND_CERT, frame.cert)
        reply_to = message.reply_to
        recent = self._recent.get(message_id)
        if recent is not None and recent[0] == group.id:
            return self._duplicate(recent[1], message_id)  # a retry: no read, no check
        known = self._known_member(group.id, member, cert_id)
        if known is None:

            def read(conn: Conn) -> _Known:
                placed = store.place_of(conn, group.id, message_id)
                if placed is not None:
                    return _Known(placed)
                return _Known(
                    None,
                    joined=joins.status_of(conn, group.id, member),
                    row=store.roster_row(conn, group.id, member),
                    cert_placed=cert_id is not None and store.place_of(conn, group.id, cert_id) is not None,
                )

            known = await self.db.read(read)
        if known.placed is not None:
            return self._duplicate(known.placed, message_id)
        row = known.row
        if row is not None and row.banned:
            raise RemoteProtocolError(ErrorCode.BANNED, "this member is banned from the group")
        if known.joined is not JoinState.ADMITTED:
            raise RemoteProtocolError(
                ErrorCode.NOT_A_MEMBER, "this key is not an admitted member of the group"
            )
        cert: rules.VerifiedCert | None = None
        certified = known.certified or (row is not None and row.certified)
        if not certified:
            if frame.cert is None or (row is not None and row.cert_id == cert_id):
                raise RemoteProtocolError(
                    ErrorCode.NOT_CERTIFIED,
                    "no current owner cert names this key here; send the cert with it",
                )
            claimed = rules.check_cert(frame.cert, channel=view.channel, owners=view.owners)
            if claimed.member != member:
                raise RemoteProtocolError(ErrorCode.NOT_CERTIFIED, "the cert sent names another member key")
        # The signatures, once each, here and never in the writer.
        if not certified:
            assert frame.cert is not None
            cert = rules.verify_cert(frame.cert, channel=view.channel, owners=view.owners)
        elif frame.cert is not None and row is not None:
            if row.cert_id == cert_id:
                if not known.cert_placed and row.cert is not None:
                    # The member's current cert, dropped from the timeline by retention: placed
                    # again from the roster's own copy, verified when it came.  Not the frame's:
                    # an id does not cover the signature, and a copy with a broken one would
                    # have readers blame this relay.
                    cert = rules.stored_cert(decode_signed(row.cert))
            else:  # another cert of its own (a newer role, say): the roster rules judge it
                cert = rules.verify_cert(frame.cert, channel=view.channel, owners=view.owners)
                if cert.member != member:
                    raise RemoteProtocolError(
                        ErrorCode.NOT_CERTIFIED, "the cert sent names another member key"
                    )
        # Which cert the member posts under once this commits (for the cache of members seen).
        posting_cert = cert_id if cert is not None else (row.cert_id if row is not None else known.cert_id)
        verified = rules.verify_message(signed, channel=view.channel, max_body=posting.max_bytes)
        self._pace(member, posting)
        stored = encode(signed)
        cert_stored = None if cert is None else encode(cert.signed)
        now = intake.service.now()
        max_events, max_bytes, backdate = (
            self.events.max_events,
            self.events.max_bytes,
            self.events.max_backdate,
        )
        fleet = intake.channels.fleet_process is not None

        def apply(conn: Conn) -> Placed:
            if fleet:
                store.lock(conn, view.id)
            read = store.intake(conn, view.id, member, verified.id)
            if read is None or (read.state, read.profile_version) != (view.state.value, view.profile_version):
                raise StaleView()
            if read.placed is not None:
                return Placed(Append.DUPLICATE, read.placed, verified.id)
            is_event = exists = False
            if reply_to:
                is_event = store.event_exists(conn, view.id, reply_to)
                exists = is_event or store.message_exists(conn, view.id, reply_to)
            posting.check_reply(view.profile.kind, reply_to, is_event, exists)
            row = read.roster
            roster = roster_with(member, row)
            head, after = read.head, read.owner_seq
            items: list[tuple[int, bytes]] = []
            if cert is not None and cert_stored is not None:
                try:
                    if roster.apply_cert(cert) is Append.NEW:
                        save_member(conn, view.id, roster, member)
                except RemoteProtocolError as exc:
                    if exc.code is not ErrorCode.SUPERSEDED:
                        raise
                else:
                    if store.place_of(conn, view.id, cert.id) is None:
                        place = store.Place(head.pos + 1, after, rules.KIND_CERT, cert.id, cert_stored)
                        head = intake.place(conn, view.id, head, place, now, items)
            roster.may_post(member)
            author = (
                rules.AuthorHead()
                if row is None
                else rules.AuthorHead(row.head_seq, row.head_id, row.head_created_at)
            )
            existing = (
                store.message_at(conn, view.id, member, verified.seq) if verified.seq <= author.seq else None
            )
            status = rules.check_author_append(
                author, verified, existing_id=existing, now=now, max_backdate=backdate
            )
            if status is Append.DUPLICATE:  # its place was dropped by retention since
                return Placed(Append.DUPLICATE, 0, verified.id)
            place = store.Place(
                head.pos + 1,
                after,
                rules.KIND_MESSAGE,
                verified.id,
                # Its removal came first (by way of another relay, say): placed, never served.
                None if read.removal_stored else stored,
                author=member,
                author_seq=verified.seq,
            )
            head = intake.place(conn, view.id, head, place, now, items)
            store.set_author_head(
                conn, view.id, member, verified.seq, verified.id, verified.message.created_at
            )
            pruned = store.prune_to_size(conn, view.id, head, max_events, max_bytes)
            return Placed(Append.NEW, head.pos, verified.id, items, pruned)

        job = await intake.queue(view.id, apply)

        async def answer() -> MemberPostResult:
            try:
                placed = await intake.result(job, group)
            except RemoteProtocolError:
                self.metrics.inc("relay_member_messages_total", result="refused")
                raise
            self.metrics.inc("relay_member_messages_total", result=placed.status.value)
            if placed.status is Append.NEW and posting_cert is not None:
                self._seen(group.id, member, posting_cert, placed)
            return MemberPostResult(status=placed.status.value, pos=placed.pos, id=placed.id)

        return answer

    def _duplicate(self, pos: int, message_id: bytes) -> Callable[[], Awaitable[MemberPostResult]]:
        self.metrics.inc("relay_member_messages_total", result=Append.DUPLICATE.value)
        return answered(MemberPostResult(status=Append.DUPLICATE.value, pos=pos, id=message_id))

    def _pace(self, member: bytes, posting: rules.PostingRules) -> None:
        evicted = self.pacer.evicted
        self.pacer.check(member, trio.current_time(), rules=posting)
        if self.pacer.evicted > evicted:
            self.bounds.hit("pacer_members", self.config.pacer_members, self.pacer.evicted - evicted)

    # --- the members seen posting, and the recent ids -------------------------------------------

    def _known_member(self, group_id: int, member: bytes, cert_id: bytes | None) -> _Known | None:
        """What the cache of members seen posting tells (None: read the store): a member who
        posted here under this cert is admitted and certified, unless a removal or ban since
        dropped it.  The writer checks the roster again in any case."""
        key = (group_id, member)
        cached = self._members.get(key)
        if cached is None or (cert_id is not None and cert_id != cached):
            return None
        self._members.move_to_end(key)
        return _Known(None, joined=JoinState.ADMITTED, certified=True, cert_id=cached)

    def _seen(self, group_id: int, member: bytes, cert_id: bytes, placed: Placed) -> None:
        """A message stored: remember its author as certified, and its id (retries)."""
        self._members[(group_id, member)] = cert_id
        self._members.move_to_end((group_id, member))
        while len(self._members) > self.config.pacer_members:
            self._members.popitem(last=False)
        self._recent[placed.id] = (group_id, placed.pos)
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def forget_member(self, group_id: int, member: bytes) -> None:
        """The member was removed or banned: no longer known certified."""
        self._members.pop((group_id, member), None)

    def forget(self) -> None:
        """Removals or bans may have been missed (another process's announcements lost)."""
        self._members.clear()
