"""Groups' timelines at a group address: members' messages, owners' certs, signed moderation.

Intake (``member_post``, ``publish``): the cheap checks run first on the trio thread (the
group is active and takes member posts, the size, then one read beside the writer: the
member is admitted, holds a cert here or brings one, is not banned, and the entry is not
already placed, which is answered ``duplicate`` with its place and nothing checked further).
Signatures are verified once, on the trio thread, never in the writer (it runs under
``crypto.verify_forbidden``); a cert verified once is remembered as the member's roster row.
The pace (per member, ``relay.protocol.timeline.Pacer``) is charged only for a message whose
signature checked out, so nobody can spend a member's pace for it.  The writer's job then
checks again what may have changed (the group, the roster, the author's chain, the place),
appends, keeps the running hash, and announces the place to the other processes; the answer
is sent after COMMIT, and the places are published to the timeline's fan-out in commit order.

Moderation takes effect in the same transaction: a removed message's place keeps its id with
no content (a tombstone; the hub's cached frames of the group are dropped, so history serves
the tombstone); ``remove_member`` and ``ban`` void the member's cert (posts refused
``not_certified`` / ``banned``) and end its live feeds; a ban also refuses its join request
and every later one (``banned``).

The fan-out is :class:`relay.server.fanout.FanOut` with the ``timeline`` stream: a
subscription to a group with member posts attaches the connection's event feed and its
timeline feed in one read (see :meth:`relay.server.events.Channels.subscribe`).

Must not: verify a signature inside a transaction, re-encode a signed entry, write SQL, or
hold state the database does not also hold (the pacer is a bound, not a record).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio

from relay.protocol import timeline as rules
from relay.protocol.admission import Decision, JoinState
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import Append
from relay.protocol.messages import (
    Error,
    MemberPost,
    MemberPostResult,
    Moderation,
    Publish,
    PublishResult,
    Signed,
    TimelineFrame,
    TimelineItem,
)
from relay.protocol.state import GroupState
from relay.server.admission import GroupBinding
from relay.server.bounds import Bounds
from relay.server.config import EventsConfig, GroupsConfig
from relay.server.events import Channels, GroupView, StaleView
from relay.server.fanout import FanOut, FanoutLimits, Page, Stream
from relay.server.http import prepared_message
from relay.server.metrics import Metrics
from relay.server.service import decode_signed
from relay.store import events as event_store
from relay.store import fleet as fleet_store
from relay.store import groups, joins
from relay.store import timeline as store
from relay.store.conn import Conn
from relay.store.db import Job
from relay.store.errors import StoreUnavailable

log = structlog.get_logger("relay.timeline")

# The ``timeline`` frame {"type": "timeline", "item": <TimelineItem>} around an encoded item.
TIMELINE_PREFIX = b"\x82\xa4type\xa8timeline\xa4item"


def item_bytes(row: store.PlaceRow) -> bytes:
    """A stored place as an encoded ``TimelineItem``: the entry's stored bytes are spliced in
    as they are (never decoded), in place of the ``nil`` of an item without one."""
    base = encode(TimelineItem(pos=row.pos, after=row.after, kind=row.kind, id=row.id, entry=None))
    return base if row.entry is None else base[:-1] + row.entry


def timeline_message(item: bytes) -> bytes:
    """The WebSocket bytes of the ``timeline`` frame for an encoded item."""
    return prepared_message(TIMELINE_PREFIX + item)


def _check_layout() -> None:
    probe = Signed(body=b"x", signer=bytes(32), sig=bytes(64))
    row = store.PlaceRow(3, 2, "message", bytes(32), encode(probe))
    whole = TimelineItem(pos=3, after=2, kind="message", id=bytes(32), entry=probe)
    assert item_bytes(row) == encode(whole), "TimelineItem layout changed"
    assert encode(TimelineFrame(item=whole)) == TIMELINE_PREFIX + encode(whole), (
        "TimelineFrame layout changed"
    )


_check_layout()

TIMELINE = Stream("timeline", timeline_message, "relay_timeline_delivered_total")
MAX_UNCERTIFIED_LISTED = 200
RECENT_IDS = 65_536  # stored message ids remembered for retries


@dataclass(frozen=True, slots=True)
class _Known:
    """What the intake reads beside the writer before verifying anything."""

    placed: int | None  # the entry's place, if already stored: a duplicate
    joined: JoinState | None = None  # the author's join request
    row: store.RosterRow | None = None  # the author's (or a moderation's subject's) roster row
    cert_placed: bool = False  # the cert in the frame is kept in the timeline
    certified: bool = False  # known certified (and admitted) here: a member seen posting
    cert_id: bytes | None = None  # the cert it was seen posting under
    moderators: frozenset[bytes] = frozenset()
    author: bytes | None = None  # the author of the message a removal names


@dataclass(frozen=True, slots=True)
class _Placed:
    """What a job stored (places to publish once committed), or the place of a duplicate."""

    status: Append
    pos: int
    id: bytes
    items: list[tuple[int, bytes]] = field(default_factory=list)  # (pos, encoded item)
    pruned: int = 0
    # A moderation's effect on this process's feeds: (action, subject).
    effect: tuple[str, bytes] | None = None


class Timelines:
    """The timelines of the groups served here: intake, fan-out, moderation's effects."""

    def __init__(
        self, channels: Channels, config: GroupsConfig, metrics: Metrics, bounds: Bounds | None = None
    ) -> None:
        self.channels = channels
        self.service = channels.service
        self.db = channels.db
        self.config = config
        self.events: EventsConfig = channels.config
        self.metrics = metrics
        self.bounds = bounds if bounds is not None else channels.bounds
        events = self.events
        self.fanout = FanOut(
            FanoutLimits(
                buffer_frames=events.send_buffer_frames,
                buffer_bytes=events.send_buffer_bytes,
                stall_timeout=events.stall_timeout,
                page=events.catch_up_page,
                recent=events.recent_cache,
            ),
            metrics,
            self._read_page,
            TIMELINE,
        )
        floor = rules.PostingRules(
            kind="group",
            posts_allowed=True,
            max_bytes=config.max_message_bytes,
            per_minute=config.messages_per_minute,
            slow_mode=0,
        )
        self.pacer = rules.Pacer(floor, max_members=config.pacer_members)
        # Members seen posting, by (group, key): the cert they posted under.  Spares the read
        # before the signature check for a member already known; bounded like the pacer.
        self._members: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        # Newest stored message ids -> (group, place): a retry answered with no read at all.
        self._recent: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        channels.timelines = self

    def rules_of(self, view: GroupView) -> rules.PostingRules:
        return rules.PostingRules.of(
            view.profile,
            floor_bytes=self.config.max_message_bytes,
            floor_per_minute=self.config.messages_per_minute,
        )

    async def _view(self, group: GroupBinding) -> tuple[GroupView, rules.PostingRules]:
        view = await self.channels.view(group.id)
        if view.state is not GroupState.ACTIVE:
            raise RemoteProtocolError(
                ErrorCode.GROUP_NOT_ACTIVE, f"the group is {view.state.value}; posts need an active group"
            )
        posting = self.rules_of(view)
        posting.check_posting()
        return view, posting

    def _announcement(self, group_id: int, pos: int) -> str | None:
        process = self.channels.fleet_process
        return None if process is None else f"{process}:t:{group_id}:{pos}"

    # --- member messages ----------------------------------------------------------------

    async def submit_member_post(
        self, group: GroupBinding, frame: MemberPost
    ) -> Callable[[], Awaitable[MemberPostResult]]:
        """Check, verify and queue a member's message; returns the wait for its answer."""
        try:
            return await self._submit_member_post(group, frame)
        except RemoteProtocolError:
            self.metrics.inc("relay_member_messages_total", result="refused")
            raise

    async def _submit_member_post(
        self, group: GroupBinding, frame: MemberPost
    ) -> Callable[[], Awaitable[MemberPostResult]]:
        view, posting = await self._view(group)
        signed = frame.message
        member = signed.signer
        message = rules.check_message(signed, channel=view.channel, max_body=posting.max_bytes)
        message_id = rules.signed_id(rules.KIND_MESSAGE, signed)
        cert_id = None if frame.cert is None else rules.signed_id(rules.KIND_CERT, frame.cert)
        reply_to = message.reply_to
        recent = self._recent.get(message_id)
        if recent is not None and recent[0] == group.id:
            return self._duplicate_post(recent[1], message_id)  # a retry: no read, no check
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
            return self._duplicate_post(known.placed, message_id)
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
                if not known.cert_placed:
                    # The member's current cert, dropped from the timeline by retention: placed
                    # again (the roster row remembers it was verified).
                    cert = rules.stored_cert(frame.cert)
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
        now = self.service.now()
        max_events, max_bytes, backdate = (
            self.events.max_events,
            self.events.max_bytes,
            self.events.max_backdate,
        )
        fleet = self.channels.fleet_process is not None

        def apply(conn: Conn) -> _Placed:
            if fleet:
                store.lock(conn, view.id)
            read = store.intake(conn, view.id, member, verified.id)
            if read is None or (read.state, read.profile_version) != (view.state.value, view.profile_version):
                raise StaleView()
            if read.placed is not None:
                return _Placed(Append.DUPLICATE, read.placed, verified.id)
            is_event = exists = False
            if reply_to:
                is_event = store.event_exists(conn, view.id, reply_to)
                exists = is_event or store.message_exists(conn, view.id, reply_to)
            posting.check_reply(view.profile.kind, reply_to, is_event, exists)
            row = read.roster
            roster = _roster_with(member, row)
            head, after = read.head, read.owner_seq
            items: list[tuple[int, bytes]] = []
            if cert is not None and cert_stored is not None:
                try:
                    if roster.apply_cert(cert) is Append.NEW:
                        _save(conn, view.id, roster, member)
                except RemoteProtocolError as exc:
                    if exc.code is not ErrorCode.SUPERSEDED:
                        raise
                else:
                    if store.place_of(conn, view.id, cert.id) is None:
                        place = store.Place(head.pos + 1, after, rules.KIND_CERT, cert.id, cert_stored)
                        head = self._place(conn, view.id, head, place, now, items)
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
                return _Placed(Append.DUPLICATE, 0, verified.id)
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
            head = self._place(conn, view.id, head, place, now, items)
            store.set_author_head(
                conn, view.id, member, verified.seq, verified.id, verified.message.created_at
            )
            pruned = store.prune_to_size(conn, view.id, head, max_events, max_bytes)
            return _Placed(Append.NEW, head.pos, verified.id, items, pruned)

        job = await self.db.submit(apply, on_commit=lambda placed: self._published(view.id, placed))

        async def answer() -> MemberPostResult:
            try:
                placed = await self._result(job, group)
            except RemoteProtocolError:
                self.metrics.inc("relay_member_messages_total", result="refused")
                raise
            self.metrics.inc("relay_member_messages_total", result=placed.status.value)
            if placed.status is Append.NEW and posting_cert is not None:
                self._seen(group.id, member, posting_cert, placed)
            return MemberPostResult(status=placed.status.value, pos=placed.pos, id=placed.id)

        return answer

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

    def _seen(self, group_id: int, member: bytes, cert_id: bytes, placed: _Placed) -> None:
        """A message stored: remember its author as certified, and its id (retries)."""
        self._members[(group_id, member)] = cert_id
        self._members.move_to_end((group_id, member))
        while len(self._members) > self.config.pacer_members:
            self._members.popitem(last=False)
        self._recent[placed.id] = (group_id, placed.pos)
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def forget(self) -> None:
        """Removals or bans may have been missed (another process's announcements lost)."""
        self._members.clear()

    def _duplicate_post(self, pos: int, message_id: bytes) -> Callable[[], Awaitable[MemberPostResult]]:
        self.metrics.inc("relay_member_messages_total", result=Append.DUPLICATE.value)
        result = MemberPostResult(status=Append.DUPLICATE.value, pos=pos, id=message_id)

        async def answer() -> MemberPostResult:
            return result

        return answer

    def _pace(self, member: bytes, posting: rules.PostingRules) -> None:
        evicted = self.pacer.evicted
        self.pacer.check(member, trio.current_time(), rules=posting)
        if self.pacer.evicted > evicted:
            self.bounds.hit("pacer_members", self.config.pacer_members, self.pacer.evicted - evicted)

    # --- owners' certs and moderation -------------------------------------------------------

    async def submit_publish(
        self, group: GroupBinding, frame: Publish
    ) -> Callable[[], Awaitable[PublishResult]]:
        """Check, verify and queue an owner's cert or a moderation; returns the wait for its answer."""
        try:
            return await self._submit_publish(group, frame)
        except RemoteProtocolError:
            self.metrics.inc("relay_timeline_published_total", kind=_kind_label(frame.kind), result="refused")
            raise

    async def _submit_publish(
        self, group: GroupBinding, frame: Publish
    ) -> Callable[[], Awaitable[PublishResult]]:
        view, _ = await self._view(group)
        signed = frame.entry
        kind = frame.kind
        if kind == rules.KIND_CERT:
            rules.check_cert(signed, channel=view.channel, owners=view.owners)  # before any read
        elif kind != rules.KIND_MODERATION:
            raise RemoteProtocolError(
                ErrorCode.BAD_TYPE, f"publish takes a cert or a moderation, not {kind!r}"
            )
        entry_id = rules.signed_id(kind, signed)
        subject: bytes | None = None
        if kind == rules.KIND_MODERATION:
            # Decoded (not verified) to know what to read; verified below with what was read.
            subject = decode(
                signed.body, Moderation, limit=rules.MAX_MODERATION_BYTES, what="moderation"
            ).subject

        def read(conn: Conn) -> _Known:
            placed = store.place_of(conn, group.id, entry_id)
            if placed is not None or subject is None:
                return _Known(placed)
            return _Known(
                None,
                moderators=store.moderators(conn, group.id),
                author=store.author_of(conn, group.id, subject),
            )

        known = await self.db.read(read)
        if known.placed is not None:
            self.metrics.inc("relay_timeline_published_total", kind=kind, result=Append.DUPLICATE.value)
            result = PublishResult(status=Append.DUPLICATE.value, pos=known.placed, id=entry_id)

            async def duplicate() -> PublishResult:
                return result

            return duplicate
        stored = encode(signed)
        now = self.service.now()
        fleet = self.channels.fleet_process
        max_events, max_bytes = self.events.max_events, self.events.max_bytes
        apply: Callable[[Conn], _Placed]
        if kind == rules.KIND_CERT:
            cert = rules.verify_cert(signed, channel=view.channel, owners=view.owners)

            def apply(conn: Conn) -> _Placed:
                if fleet is not None:
                    store.lock(conn, view.id)
                self._still(conn, view)
                placed = store.place_of(conn, view.id, cert.id)
                if placed is not None:
                    return _Placed(Append.DUPLICATE, placed, cert.id)
                roster, _ = _roster_of(conn, view.id, cert.member)
                if roster.apply_cert(cert) is Append.NEW:
                    _save(conn, view.id, roster, cert.member)
                head = store.head(conn, view.id)
                after = event_store.head(conn, view.id).head_seq
                items: list[tuple[int, bytes]] = []
                place = store.Place(head.pos + 1, after, rules.KIND_CERT, cert.id, stored)
                head = self._place(conn, view.id, head, place, now, items)
                pruned = store.prune_to_size(conn, view.id, head, max_events, max_bytes)
                return _Placed(Append.NEW, head.pos, cert.id, items, pruned)

        else:
            moderation = rules.verify_moderation(
                signed,
                channel=view.channel,
                owners=view.owners,
                moderators=known.moderators,
                author=known.author,
            )

            def apply(conn: Conn) -> _Placed:
                if fleet is not None:
                    store.lock(conn, view.id)
                self._still(conn, view)
                placed = store.place_of(conn, view.id, moderation.id)
                if placed is not None:
                    return _Placed(Append.DUPLICATE, placed, moderation.id)
                # The signer's right as it is now (a moderator withdrawn meanwhile): no crypto.
                rules.check_moderation(
                    signed,
                    channel=view.channel,
                    owners=view.owners,
                    moderators=store.moderators(conn, view.id),
                    author=store.author_of(conn, view.id, moderation.subject),
                )
                return self._moderate(conn, view, moderation, stored, now, fleet)

        job = await self.db.submit(apply, on_commit=lambda placed: self._published(view.id, placed))

        async def answer() -> PublishResult:
            try:
                placed = await self._result(job, group)
            except RemoteProtocolError:
                self.metrics.inc("relay_timeline_published_total", kind=kind, result="refused")
                raise
            self.metrics.inc("relay_timeline_published_total", kind=kind, result=placed.status.value)
            if placed.effect is not None and placed.status is Append.NEW:
                self.metrics.inc("relay_moderations_total", action=placed.effect[0])
                log.info("timeline.moderated", group=group.id, action=placed.effect[0], pos=placed.pos)
            return PublishResult(status=placed.status.value, pos=placed.pos, id=placed.id)

        return answer

    def _moderate(
        self,
        conn: Conn,
        view: GroupView,
        moderation: rules.VerifiedModeration,
        stored: bytes,
        now: int,
        fleet: str | None,
    ) -> _Placed:
        """In the writer: the moderation's effect, then its place (announced with its effect)."""
        action, subject = moderation.action, moderation.subject
        head = store.head(conn, view.id)
        after = event_store.head(conn, view.id).head_seq
        items: list[tuple[int, bytes]] = []
        removes = None
        if action == rules.ACTION_REMOVE_MESSAGE:
            removes = subject
            store.tombstone(conn, view.id, subject)
        else:
            roster, _ = _roster_of(conn, view.id, subject)
            roster.apply_moderation(moderation)
            _save(conn, view.id, roster, subject)
            if action == rules.ACTION_BAN:
                join = joins.by_member(conn, view.id, subject)
                if join is not None and join.status is not JoinState.REFUSED:
                    reason = moderation.moderation.reason or "banned by the group's moderators"
                    joins.set_decision(
                        conn, join.id, Decision(JoinState.REFUSED, ErrorCode.BANNED.value, reason), now
                    )
        place = store.Place(
            head.pos + 1, after, rules.KIND_MODERATION, moderation.id, stored, subject=removes
        )
        head = self._place(conn, view.id, head, place, now, items)
        if fleet is not None:
            effect = "r" if removes is not None else "x"
            extra = "" if removes is not None else f":{action}:{subject.hex()}"
            fleet_store.announce(conn, f"{fleet}:{effect}:{view.id}{extra}")
        pruned = store.prune_to_size(conn, view.id, head, self.events.max_events, self.events.max_bytes)
        return _Placed(Append.NEW, head.pos, moderation.id, items, pruned, effect=(action, subject))

    # --- the writer's common steps --------------------------------------------------------------

    def _still(self, conn: Conn, view: GroupView) -> None:
        """The group is as the view that checked the entry saw it (else: check again)."""
        if groups.state_and_version(conn, view.id) != (view.state, view.profile_version):
            raise StaleView()

    def _place(
        self,
        conn: Conn,
        group_id: int,
        head: store.TimelineHead,
        place: store.Place,
        now: int,
        items: list[tuple[int, bytes]],
    ) -> store.TimelineHead:
        running = rules.timeline_hash(head.hash, place.pos, place.after, place.kind, place.id)
        after = store.append(
            conn,
            group_id,
            head,
            place,
            running_hash=running,
            now=now,
            announcement=self._announcement(group_id, place.pos),
        )
        items.append(
            (place.pos, item_bytes(store.PlaceRow(place.pos, place.after, place.kind, place.id, place.entry)))
        )
        return after

    async def _result(self, job: Job[_Placed], group: GroupBinding) -> _Placed:
        try:
            placed = await self.db.result(job)
        except StaleView:
            # The profile or state changed meanwhile: the sender checks against the new one.
            self.channels.group_changed(group.id)
            raise RemoteProtocolError(
                ErrorCode.OUT_OF_ORDER, "the group's profile changed meanwhile; send it again"
            ) from None
        if placed.pruned:
            self.metrics.inc("relay_timeline_pruned_total", placed.pruned, reason="size")
        return placed

    def _published(self, group_id: int, placed: _Placed) -> None:
        """After COMMIT, in commit order: the new places to the fan-out, then the effects."""
        for pos, item in placed.items:
            self.fanout.publish(group_id, pos, item)
        if placed.effect is not None and placed.status is Append.NEW:
            action, subject = placed.effect
            if action == rules.ACTION_REMOVE_MESSAGE:
                self.removed(group_id)
            else:
                self.member_ended(group_id, action, subject)

    # --- moderation's effects on this process (also announced by other processes) -----------

    def removed(self, group_id: int) -> None:
        """A message of the group was removed: cached frames may hold its content."""
        self.fanout.forget_recent(group_id)

    def member_ended(self, group_id: int, action: str, member: bytes) -> None:
        """A member was removed or banned: its live feeds end (an error frame, then close)."""
        self._members.pop((group_id, member), None)
        if action == rules.ACTION_BAN:
            error = Error(code=ErrorCode.BANNED.value, reason="this member was banned from the group")
        else:
            error = Error(
                code=ErrorCode.NOT_CERTIFIED.value,
                reason="the owners removed this member; a newer cert from them admits it again",
            )
        ended = self.channels.fanout.end_member(group_id, member, prepared_message(encode(error)), error.code)
        if ended:
            self.metrics.inc("relay_member_feeds_ended_total", ended, code=error.code)
            log.info("feed.member_ended", group=group_id, code=error.code, feeds=ended)

    # --- reads ----------------------------------------------------------------------------------

    async def _read_page(self, group_id: int, after: int, limit: int, hook: Callable[[Page], None]) -> Page:
        def read(conn: Conn) -> Page:
            head = store.head(conn, group_id)
            rows = store.read_after(conn, group_id, after, limit)
            return Page([(row.pos, item_bytes(row)) for row in rows], head.pos, len(rows) < limit)

        return await self.db.transact(read, on_commit=hook)

    def first_page(
        self, conn: Conn, group_id: int, since: int | None
    ) -> tuple[store.TimelineHead, int, Page]:
        """In a subscription's read job: the timeline's head, the cursor history starts after,
        and its first page."""
        head = store.head(conn, group_id)
        history, page = self.events.history, self.events.catch_up_page
        cursor = max(0, head.pos - history) if since is None else since
        cursor = max(cursor, head.first_pos - 1) if head.first_pos else cursor
        rows = store.read_after(conn, group_id, cursor, page)
        return head, cursor, Page([(row.pos, item_bytes(row)) for row in rows], head.pos, len(rows) < page)

    async def uncertified(self, group_id: int) -> list[store.Uncertified]:
        return await self.db.read(lambda conn: store.uncertified(conn, group_id, MAX_UNCERTIFIED_LISTED))

    # --- retention ------------------------------------------------------------------------------

    async def prune_by_age(self) -> int:
        """One pass of age retention over every timeline (bounded per transaction)."""
        before = self.service.now() - self.events.max_age
        total = 0
        while True:
            dropped = await self.db.transact(lambda conn: store.prune_older_than(conn, before, 1000))
            n = sum(dropped.values())
            total += n
            if n == 0:
                break
        if total:
            self.metrics.inc("relay_timeline_pruned_total", total, reason="age")
            log.info("timeline.pruned", reason="age", places=total)
        return total

    async def run_pruner(self) -> None:
        while True:
            await trio.sleep(self.events.prune_interval)
            with contextlib.suppress(StoreUnavailable):  # logged by the store; next round, then
                await self.prune_by_age()


def _kind_label(kind: str) -> str:
    """A metric label from a client's word: only the known kinds, never what it made up."""
    return kind if kind in (rules.KIND_CERT, rules.KIND_MODERATION) else "other"


def _roster_of(conn: Conn, group_id: int, member: bytes) -> tuple[rules.Roster, store.RosterRow | None]:
    """A roster holding the one member the job is about, as the store keeps it."""
    row = store.roster_row(conn, group_id, member)
    return _roster_with(member, row), row


def _roster_with(member: bytes, row: store.RosterRow | None) -> rules.Roster:
    """A roster holding one member's row (none: a roster without it)."""
    roster = rules.Roster()
    if row is not None:
        cert = None
        if row.cert is not None and row.certified:
            cert = rules.stored_cert(decode_signed(row.cert))
        roster.put(rules.RosterEntry(member, cert, row.removed_at or 0, row.banned_at))
    return roster


def _save(conn: Conn, group_id: int, roster: rules.Roster, member: bytes) -> None:
    """Write back what the roster rules made of the member."""
    entry = roster.entry(member)
    assert entry is not None
    cert = entry.cert
    store.put_member(
        conn,
        group_id,
        member,
        cert_id=None if cert is None else cert.id,
        cert=None if cert is None else encode(cert.signed),
        role=rules.ROLE_MEMBER if cert is None else cert.cert.role,
        issued_at=0 if cert is None else cert.cert.issued_at,
        removed_at=entry.removed_at or None,
        banned_at=entry.banned_at,
    )
