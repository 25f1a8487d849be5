"""Channel traffic at a group address: owners' posts, members' subscriptions, signed heads, discovery.

Intake: a ``post`` is checked on the trio thread as far as it proves itself
(signer among the owners of the profile the relay holds, size, signature,
channel), then the chain rules run *inside* the transaction against the head
row, so two posts for one group are serialised by the single database thread
and the answer is sent only after COMMIT (on PostgreSQL, consecutive posts of a
writer batch are checked and stored together: :class:`_Posts`).  The committed
event is published to the fan-out in commit order (``Database.transact(on_commit=...)``).

Subscriptions: the membership check, the head and the first page of history
are one read job; the feed is attached in that job's commit hook, so it goes
live exactly where its read ended.  A group with member posts has a timeline
too (relay.server.timeline): the same job reads its head and first page, and
the connection gets a second feed for it.  Heads are signed per request with the
relay's identity key; discovery maps the channel tags of the groups served.

Must not: re-encode the owner's signed bytes, or keep any state the database
does not also hold (the caches here are rebuilt from it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from relay.protocol.admission import JoinState
from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import Append, ChainHead, VerifiedEvent, check_append, verify_event
from relay.protocol.heads import make_head, tag
from relay.protocol.membership import ACTION_SUBSCRIBE, verify_member_request
from relay.protocol.messages import (
    Discover,
    Discovered,
    Error,
    HeadAnswer,
    Post,
    PostResult,
    Profile,
    ProfileAnswer,
    Signed,
    Subscribe,
    Subscribed,
)
from relay.protocol.state import GroupState
from relay.server.admission import GroupBinding
from relay.server.bounds import Bounds, LogThrottle
from relay.server.config import EventsConfig
from relay.server.fanout import FanOut, FanoutLimits, Feed, Page, event_message
from relay.server.http import WebSocket, prepared_message
from relay.server.metrics import Metrics
from relay.server.service import GroupService, decode_signed
from relay.store import events as store
from relay.store import fleet, groups, joins
from relay.store import timeline as timeline_store
from relay.store.conn import Conn
from relay.store.db import Job, settle
from relay.store.errors import StoreUnavailable
from relay.store.opening import Store

if TYPE_CHECKING:
    from relay.server.timeline import Timelines

log = structlog.get_logger("relay.events")

SERVING = (GroupState.ACTIVE, GroupState.SUSPENDED)  # members may read
MAX_TAG_LOOKUPS = 32


@dataclass(frozen=True, slots=True)
class GroupView:
    """What the intake needs of a group, from its stored profile (verified again once)."""

    id: int
    channel: bytes
    state: GroupState
    profile_version: int
    owners: frozenset[bytes]
    profile: Profile
    profile_signed: Signed


class StaleView(Exception):
    """The group changed since its view was made: reload and check again."""


@dataclass(frozen=True, slots=True)
class _Stored:
    """A post the chain took: a new event (published once committed) or a duplicate of one."""

    status: Append
    seq: int
    id: bytes
    stored: bytes
    pruned: int = 0


@dataclass(frozen=True, slots=True)
class _Equivocation:
    """A post refused as a second event at a taken sequence number: only its proof is kept.

    A type of its own, not a flag on :class:`_Stored`: nothing that publishes can mistake
    it for an event to serve (a refused event must never reach a member by any path).
    """

    seq: int
    proof_kept: bool


_Outcome = _Stored | _Equivocation


@dataclass(frozen=True, slots=True)
class _PostItem:
    """What a post's transaction needs, for :class:`_Posts` (its ``apply`` closes over the same)."""

    view: GroupView
    event: VerifiedEvent
    stored: bytes
    now: int
    announcement: str | None


class _Posts:
    """Consecutive posts of one writer batch, done together on PostgreSQL
    (:class:`relay.store.db.Batch`): their groups' chain locks in one statement, their states
    and heads in one more, the chain rules per post in order against the heads as each
    accepted post leaves them, then every accepted event, the new heads and the announcements
    in one statement: four statements (with the savepoint) in two round trips for the lot,
    where each post alone sends four in two.  A refused post writes nothing, so it is never
    stored or announced; a post at a sequence number already taken (a duplicate, an
    equivocation) needs the stored event, and runs alone, after the posts before it are stored."""

    def __init__(self, config: EventsConfig) -> None:
        self.config = config

    def run(self, conn: Conn, jobs: Sequence[Job[Any]]) -> int:
        items: list[_PostItem] = [job.item for job in jobs]
        group_ids = sorted({item.view.id for item in items})
        fleet.lock_chains(conn, group_ids)  # another process may append to these chains too
        found = store.states_and_heads(conn, group_ids)
        heads = {group_id: head for group_id, (_, head) in found.items()}
        outcomes: list[_Outcome | BaseException] = []
        new: list[store.NewEvent] = []
        last: dict[int, int] = {}  # group id -> the index in outcomes of its last new event
        for item in items:
            view, event = item.view, item.event
            current = found.get(view.id)
            if current is None or current[0] != (view.state, view.profile_version):
                outcomes.append(StaleView())
                continue
            head = heads[view.id]
            if event.seq <= head.head_seq:
                break  # needs the event stored at its sequence number: this post runs alone
            try:
                status = check_append(
                    ChainHead(head.head_seq, head.head_id, head.head_created_at),
                    event,
                    existing_id=None,
                    now=item.now,
                    max_backdate=self.config.max_backdate,
                )
            except RemoteProtocolError as exc:
                outcomes.append(exc)
                continue
            row = store.NewEvent(
                view.id, event.seq, event.id, item.stored, event.event.created_at, item.now, item.announcement
            )
            heads[view.id] = store.next_head(head, row)
            new.append(row)
            last[view.id] = len(outcomes)
            outcomes.append(_Stored(status, event.seq, event.id, item.stored))
        if new:
            store.append_many(conn, new, {group_id: heads[group_id] for group_id in last})
        for group_id, index in last.items():
            pruned = store.prune_to_size(
                conn, group_id, heads[group_id], self.config.max_events, self.config.max_bytes
            )
            if pruned:  # counted on the group's last post, as each post would have pruned its share
                stored = outcomes[index]
                assert isinstance(stored, _Stored)
                outcomes[index] = dataclasses.replace(stored, pruned=pruned)
        return settle(jobs, outcomes)  # nothing fails past here


def fanout_limits(config: EventsConfig) -> FanoutLimits:
    """A fan-out's bounds as ``[events]`` sets them (the owners' events and the timelines alike)."""
    return FanoutLimits(
        buffer_frames=config.send_buffer_frames,
        buffer_bytes=config.send_buffer_bytes,
        stall_timeout=config.stall_timeout,
        page=config.catch_up_page,
        recent=config.recent_cache,
    )


class Channels:
    def __init__(
        self, service: GroupService, config: EventsConfig, metrics: Metrics, bounds: Bounds | None = None
    ) -> None:
        self.service = service
        self.db = service.db
        self.config = config
        self.metrics = metrics
        self.bounds = bounds if bounds is not None else Bounds(metrics)
        self.fanout = FanOut(fanout_limits(config), metrics, self._read_page)
        self._views: dict[int, GroupView] = {}
        self._equivocations_log = LogThrottle()
        self._tags: dict[bytes, int] | None = None  # tag -> group id, built on first discover
        self._tags_dirty: set[int] = set()
        # This process's id when other processes share the database (relay.server.fleet sets
        # it): posts then take the group's chain lock and announce what they stored.
        self.fleet_process: str | None = None
        self._posts = _Posts(config)
        # The groups' timelines (relay.server.timeline), set when it is made: a subscription to
        # a group with member posts carries its timeline too.
        self.timelines: Timelines | None = None
        service.signals.profile_changed.connect(self.profile_changed)
        service.signals.state_changed.connect(self.state_changed)

    # --- caches --------------------------------------------------------------------

    def group_changed(self, group_id: int) -> None:
        self._views.pop(group_id, None)
        if self._tags is not None:
            self._tags_dirty.add(group_id)

    def forget_all(self) -> None:
        """Every cached view and tag may be stale (changes from other processes were missed)."""
        self._views.clear()
        self._tags = None
        self._tags_dirty.clear()

    def profile_changed(self, group_id: int, profile: Signed, state: GroupState) -> None:
        self.group_changed(group_id)
        self.fanout.push_profile(
            group_id, prepared_message(encode(ProfileAnswer(profile=profile, state=state.value)))
        )

    def state_changed(self, group_id: int, state: GroupState) -> None:
        """A group that stops being active ends its members' feeds (an error frame, then close):
        a suspended or removed group serves no events, and a new ``subscribe`` is refused."""
        self.group_changed(group_id)
        if state is GroupState.ACTIVE:
            return
        reason = f"the group is {state.value}; it serves no events"
        message = prepared_message(encode(Error(code=ErrorCode.GROUP_NOT_ACTIVE.value, reason=reason)))
        ended = self.fanout.end_group(group_id, message)
        if ended:
            self.metrics.inc("relay_feeds_ended_total", ended)
            log.info("feed.group_ended", group=group_id, state=state.value, feeds=ended)

    async def view(self, group_id: int) -> GroupView:
        view = self._views.get(group_id)
        if view is not None:
            return view
        record = await self.db.transact(lambda conn: groups.by_id(conn, group_id))
        if record is None:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address")
        verified = self.service.profiles.of(record.profile)
        signed = verified.signed
        view = GroupView(
            id=record.id,
            channel=record.channel,
            state=record.state,
            profile_version=record.profile_version,
            owners=frozenset(verified.owners),
            profile=verified.profile,
            profile_signed=signed,
        )
        if len(self._views) >= 100_000:  # a cache, bounded: forget everything rather than grow
            self._views.clear()
        self._views[group_id] = view
        return view

    # --- post ----------------------------------------------------------------------

    async def post(self, group: GroupBinding, frame: Post) -> PostResult:
        return await (await self.submit_post(group, frame))()

    async def submit_post(self, group: GroupBinding, frame: Post) -> Callable[[], Awaitable[PostResult]]:
        """Check what the event proves on its own and queue its transaction; returns the wait
        for the answer.  A connection may have several posts in flight (they are committed in
        the order submitted, often in one commit) and answers them in order."""
        view = await self.view(group.id)
        job = await self._submit(view, frame)

        async def answer() -> PostResult:
            try:
                return self._answer(view, await self.db.result(job))
            except StaleView:
                pass
            for _ in range(3):  # the profile or state changed meanwhile: check again, alone
                self._views.pop(group.id, None)
                fresh = await self.view(group.id)
                try:
                    return self._answer(fresh, await self.db.result(await self._submit(fresh, frame)))
                except StaleView:
                    continue
            raise RemoteProtocolError(ErrorCode.INTERNAL, "the group keeps changing; post again")

        return answer

    async def _submit(self, view: GroupView, frame: Post) -> Job[_Outcome]:
        if view.state is not GroupState.ACTIVE:
            raise RemoteProtocolError(
                ErrorCode.GROUP_NOT_ACTIVE, f"the group is {view.state.value}; posts need an active group"
            )
        verified = verify_event(
            frame.event, channel=view.channel, owners=view.owners, max_body=self.config.max_body_bytes
        )
        stored = encode(frame.event)
        now = self.service.now()
        config = self.config
        process = self.fleet_process

        # A new event is announced to the other processes in the statement that stores it:
        # delivered when (and only if) this commits.
        item = _PostItem(
            view, verified, stored, now, None if process is None else f"{process}:e:{view.id}:{verified.seq}"
        )

        def apply(conn: Conn) -> _Outcome:
            if process is not None:  # other processes append to this chain too: one at a time
                fleet.lock_chain(conn, view.id)
            current, head = store.state_and_head(conn, view.id)
            if current != (view.state, view.profile_version):
                raise StaleView()
            return _append(conn, view.id, head, verified, stored, now, config, item.announcement)

        def publish(result: _Outcome) -> None:
            if isinstance(result, _Stored) and result.status is Append.NEW:
                self.fanout.publish(view.id, result.seq, result.stored)

        return await self.db.submit(apply, on_commit=publish, batch=self._posts, item=item)

    def _answer(self, view: GroupView, result: _Outcome) -> PostResult:
        if isinstance(result, _Equivocation):
            self.metrics.inc("relay_equivocations_total")
            hits = self._equivocations_log.due("equivocation")  # an owner can post them at will
            if hits:
                log.warning(
                    "event.equivocation",
                    group=view.id,
                    seq=result.seq,
                    proof_kept=result.proof_kept,
                    hits=hits,
                )
            raise RemoteProtocolError(
                ErrorCode.EQUIVOCATION,
                f"event {result.seq} already exists with different content; both are kept as proof",
            )
        if result.pruned:
            self.metrics.inc("relay_events_pruned_total", result.pruned, reason="size")
        self.metrics.inc("relay_events_total", outcome=result.status.value)
        return PostResult(status=result.status.value, seq=result.seq, id=result.id)

    # --- subscribe -----------------------------------------------------------------

    async def subscribe(
        self,
        group: GroupBinding,
        frame: Subscribe,
        session: bytes,
        ws: WebSocket,
        start: Callable[[Feed], None],
    ) -> None:
        """Check and attach a feed; its first frames (``subscribed``, history) are queued on it.

        ``start`` is called with the feed in the commit hook, so the connection can run its
        sender; nothing is answered here on success.
        """
        now = self.service.now()
        member = frame.request.signer
        verify_member_request(
            frame.request,
            relay_fingerprint=self.service.identity.fingerprint,
            channel=group.channel,
            address_id=group.address_id,
            session=session,
            now=now,
            max_age=self.service.policy.policy.invitation_max_age,
            action=ACTION_SUBSCRIBE,
        )
        timelines = self.timelines
        if timelines is not None and not timelines.rules_of(await self.view(group.id)).posts_allowed:
            timelines = None  # a channel without comments: no timeline to follow
        if self.fanout.subscribers >= self.config.max_subscribers:
            self._subscribers_bound("max_subscribers", self.config.max_subscribers)
        if self.fanout.feeds_of(group.id) >= self.config.max_subscribers_per_group:
            self._subscribers_bound("max_subscribers_per_group", self.config.max_subscribers_per_group)
        # After the signature: a key is only counted for the one who holds it.
        per_member = self.config.max_subscriptions_per_member
        if not self.fanout.reserve(group.id, member, per_member):
            self.bounds.hit("subscriptions_per_member", per_member)
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED,
                f"this member key already holds {per_member} subscriptions to this group, the most "
                "one member may hold at once; close one first",
            )
        reserved = True
        since = frame.since
        history = self.config.history
        page = self.config.catch_up_page
        inbox_after = now - self.config.inbox_ttl
        timeline_since = frame.timeline_since
        timeline: tuple[int, Page] | None = None  # the timeline's cursor and first page

        def read(conn: Conn) -> tuple[Subscribed, int, Page, list[bytes]]:
            nonlocal timeline
            record = groups.by_id(conn, group.id)
            if record is None:
                raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address")
            if record.state is not GroupState.ACTIVE:
                raise RemoteProtocolError(
                    ErrorCode.GROUP_NOT_ACTIVE, f"the group is {record.state.value}; it serves no events"
                )
            join = joins.by_member(conn, group.id, member)
            if join is None or join.status is not JoinState.ADMITTED:
                if timeline_store.banned(conn, group.id, member):
                    raise RemoteProtocolError(ErrorCode.BANNED, "this member is banned from the group")
                raise RemoteProtocolError(
                    ErrorCode.NOT_A_MEMBER, "this key is not an admitted member of the group"
                )
            head = store.head(conn, group.id)
            cursor = max(0, head.head_seq - history) if since is None else since
            cursor = max(cursor, head.first_seq - 1) if head.first_seq else cursor
            rows = store.read_after(conn, group.id, cursor, page)
            complete = len(rows) < page
            inbox = store.inbox_take(conn, group.id, member, inbox_after)
            answer = Subscribed(
                head_seq=head.head_seq, first_seq=head.first_seq, profile_version=record.profile_version
            )
            if timelines is not None:
                if timeline_store.banned(conn, group.id, member):
                    raise RemoteProtocolError(ErrorCode.BANNED, "this member is banned from the group")
                thead, tcursor, tpage = timelines.first_page(conn, group.id, timeline_since)
                timeline = (tcursor, tpage)
                answer = Subscribed(
                    head_seq=answer.head_seq,
                    first_seq=answer.first_seq,
                    profile_version=answer.profile_version,
                    timeline_pos=thead.pos,
                    timeline_first=thead.first_pos,
                )
            return answer, cursor, Page(rows, head.head_seq, complete), inbox

        def attach(result: tuple[Subscribed, int, Page, list[bytes]]) -> None:
            nonlocal reserved
            answer, cursor, first, inbox = result
            self.fanout.unreserve(group.id, member)
            reserved = False
            feed = self.fanout.attach(group.id, first.head_seq, ws, member)
            feed.push_control(prepared_message(encode(answer)))
            for request in inbox:
                feed.push_control(prepared_message(_DELIVERY_PREFIX + request))
            feed.sent_seq = feed.queued_seq = cursor
            events = [(seq, event_message(stored)) for seq, stored in first.events]
            if first.complete:
                feed.start_live(cursor, events)
            else:
                feed.queue_page(events)
            if timelines is not None and timeline is not None:
                # The same connection's timeline feed: started by this feed's sender once the
                # ``subscribed`` answer is out (Feed.companion).
                tcursor, tpage = timeline
                companion = timelines.fanout.attach(group.id, tpage.head_seq, ws, member)
                companion.sent_seq = companion.queued_seq = tcursor
                items = [(pos, timelines.fanout.stream.frame(item)) for pos, item in tpage.events]
                if tpage.complete:
                    companion.start_live(tcursor, items)
                else:
                    companion.queue_page(items)
                feed.companion = companion
            start(feed)

        try:
            await self.db.transact(read, on_commit=attach)
        finally:
            if reserved:  # refused, or failed before its commit hook
                self.fanout.unreserve(group.id, member)
        self.metrics.inc("relay_subscriptions_total")
        log.debug("feed.subscribed", group=group.id, since=since)

    def detach(self, feed: Feed) -> None:
        """A subscribed connection ends: its feed and its timeline feed, if any, go."""
        self.fanout.detach(feed)
        if feed.companion is not None:
            feed.companion.fanout.detach(feed.companion)

    def _subscribers_bound(self, bound: str, limit: int) -> None:
        self.metrics.inc("relay_bounds_hit_total", bound=bound)
        log.warning("bound.hit", bound=bound, limit=limit)
        raise RemoteProtocolError(
            ErrorCode.RATE_LIMITED, f"this relay serves its maximum of {limit} subscribers; try again later"
        )

    async def _read_page(self, group_id: int, after: int, limit: int, hook: Callable[[Page], None]) -> Page:
        def read(conn: Conn) -> Page:
            head = store.head(conn, group_id)
            rows = store.read_after(conn, group_id, after, limit)
            return Page(rows, head.head_seq, len(rows) < limit)

        return await self.db.transact(read, on_commit=hook)

    # --- heads and discovery ---------------------------------------------------------

    async def head(self, group: GroupBinding) -> HeadAnswer:
        def read(conn: Conn) -> tuple[store.HeadRow, timeline_store.TimelineHead, bytes | None]:
            head = store.head(conn, group.id)
            event = store.event_at(conn, group.id, head.head_seq) if head.head_seq else None
            return head, timeline_store.head(conn, group.id), event

        head, timeline, event = await self.db.read(read)
        return HeadAnswer(
            head=self._sign_head(group.channel, head, timeline), event=_signed(event) if event else None
        )

    def _sign_head(
        self, channel: bytes, head: store.HeadRow, timeline: timeline_store.TimelineHead
    ) -> Signed:
        """The relay's signed head: the owner chain's newest event, and the timeline's last
        place and running hash (zeros for a group without one)."""
        identity = self.service.identity
        return make_head(
            identity.signing_key,
            relay_fingerprint=identity.fingerprint,
            channel=channel,
            head=ChainHead(head.head_seq, head.head_id, head.head_created_at),
            now=self.service.now(),
            timeline_pos=timeline.pos,
            timeline_hash=timeline.hash,
        )

    async def discover(self, frame: Discover) -> Discovered:
        index = await self._tag_index()
        wanted = {index[t]: t for t in frame.tags[:MAX_TAG_LOOKUPS] if t in index}
        if not wanted:
            return Discovered(heads=[])

        def read(conn: Conn) -> list[tuple[bytes, store.HeadRow, timeline_store.TimelineHead]]:
            found = []
            for group_id in wanted:
                record = groups.by_id(conn, group_id)
                if record is not None and record.state in SERVING:
                    head = store.head(conn, group_id)
                    found.append((record.channel, head, timeline_store.head(conn, group_id)))
            return found

        found = await self.db.read(read)
        self.metrics.inc("relay_discovered_total", len(found))
        return Discovered(heads=[self._sign_head(channel, head, tl) for channel, head, tl in found])

    async def _tag_index(self) -> dict[bytes, int]:
        fingerprint = self.service.identity.fingerprint
        if self._tags is None:
            rows = await self.db.read(lambda conn: groups.channels_in_states(conn, SERVING))
            # HKDF and HMAC per group: off the trio thread, for a relay with many groups.
            self._tags = await trio.to_thread.run_sync(
                lambda: {tag(channel, fingerprint): group_id for group_id, channel in rows}
            )
            self._tags_dirty.clear()
        if self._tags_dirty:
            dirty, self._tags_dirty = list(self._tags_dirty)[:1000], set()
            rows = await self.db.read(lambda conn: groups.channels_of(conn, dirty))
            for group_id, channel in rows:
                self._tags[tag(channel, fingerprint)] = group_id
        return self._tags

    # --- retention ----------------------------------------------------------------------

    async def prune_by_age(self) -> int:
        """One pass of age retention (bounded per transaction), and expired inbox entries."""
        before = self.service.now() - self.config.max_age
        inbox_before = self.service.now() - self.config.inbox_ttl
        total = await prune_older(self.db, store.prune_older_than, before)
        if total:
            self.metrics.inc("relay_events_pruned_total", total, reason="age")
            log.info("events.pruned", reason="age", events=total)
        expired = await self.db.transact(lambda conn: store.inbox_expire(conn, inbox_before, 10_000))
        if expired:
            self.metrics.inc("relay_direct_expired_total", expired)
        return total

    async def run_pruner(self) -> None:
        await run_every(self.config.prune_interval, self.prune_by_age)


async def prune_older(db: Store, prune: Callable[[Conn, int, int], dict[int, int]], before: int) -> int:
    """Age retention over every group's log (``prune``: the store's ``prune_older_than``), in
    transactions of at most 1000 rows until none is left; returns how many rows went."""
    total = 0
    while True:
        dropped = await db.transact(lambda conn: prune(conn, before, 1000))
        n = sum(dropped.values())
        total += n
        if n == 0:
            return total


async def run_every(interval: float, step: Callable[[], Awaitable[object]]) -> None:
    """A pruner: ``step`` every ``interval`` seconds, for as long as the relay runs."""
    while True:
        await trio.sleep(interval)
        with contextlib.suppress(StoreUnavailable):  # logged by the store; next round, then
            await step()


def _append(
    conn: Conn,
    group_id: int,
    head: store.HeadRow,
    event: VerifiedEvent,
    stored: bytes,
    now: int,
    config: EventsConfig,
    announcement: str | None,
) -> _Outcome:
    """The chain rules against the stored head, then the row (announced as
    ``announcement``, if given); runs on the database thread."""
    seq = event.seq
    existing = store.id_at(conn, group_id, seq) if seq <= head.head_seq else None
    try:
        status = check_append(
            ChainHead(head.head_seq, head.head_id, head.head_created_at),
            event,
            existing_id=existing,
            now=now,
            max_backdate=config.max_backdate,
        )
    except RemoteProtocolError as exc:
        if exc.code is not ErrorCode.EQUIVOCATION:
            raise
        kept = store.event_at(conn, group_id, seq) or b""
        proof_kept = store.add_equivocation(
            conn, group_id, seq, kept, stored, now, config.max_equivocations_per_group
        )
        return _Equivocation(seq, proof_kept)
    if status is Append.DUPLICATE:
        return _Stored(status, seq, event.id, stored)
    after = store.append(
        conn,
        group_id,
        head,
        seq=seq,
        event_id=event.id,
        event=stored,
        created_at=event.event.created_at,
        now=now,
        announcement=announcement,
    )
    pruned = store.prune_to_size(conn, group_id, after, config.max_events, config.max_bytes)
    return _Stored(status, seq, event.id, stored, pruned=pruned)


def _signed(blob: bytes) -> Signed:
    return decode_signed(blob)


# The ``direct_invitation`` frame {"type": "direct_invitation", "request": <Signed>} around a
# stored request, like the event frame: no decoding.
_DELIVERY_PREFIX = b"\x82\xa4type\xb1direct_invitation\xa7request"


def _check_prefixes() -> None:
    from relay.protocol.messages import DirectInviteDelivery

    probe = Signed(body=b"", signer=bytes(32), sig=bytes(64))
    assert encode(DirectInviteDelivery(request=probe)) == _DELIVERY_PREFIX + encode(probe)


_check_prefixes()
