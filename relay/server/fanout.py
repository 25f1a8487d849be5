"""Fan-out: each group's subscribers, and one bounded feed per subscribed connection.

An event is encoded once into its ``event`` frame and once into WebSocket frame
bytes (:func:`relay.server.http.prepared_message`), and the same ``bytes`` object
is queued for every member.  Publishing is synchronous and runs on the trio
thread in commit order (``Database.transact(on_commit=...)``), so a feed that
reads the store in a job and goes live in that job's hook can neither miss nor
repeat an event at the switch-over.

Each feed has a bounded queue, and a sender task only while it has a backlog.
A feed with nothing queued gets a new event written straight to its socket by
the publisher (:meth:`relay.server.http.WebSocket.send_now`: one system call,
no task switch).  Anything that cannot go out that way (the socket is full, a
frame went out in part, a control frame, catch-up, the feed ending) is queued,
and the publisher, still synchronous, starts a sender as one of the
connection's helper tasks (:mod:`relay.server.tasks`) if none is running.
The sender joins everything queued into one ``send_all``, reads catch-up pages,
and exits as soon as nothing is left; ``_sending`` is cleared with no await
after the last check, so the next event either takes the fast path or starts a
new sender, in order.
Why: an idle member waits for days, and a parked task per member (its
coroutine frames, cancel scopes and Task) was about a fifth of an idle
connection's memory; a spawn costs only when a backlog starts.

A member whose queue overflows is dropped back to catch-up: its queue is
discarded and it is fed again from the store (or the hub's cache of recent
events) from the last event it was sent, until it reaches the live events.  A
member that accepts nothing for ``stall_timeout`` is disconnected: its sender
ends the connection (``ConnectionTasks.end_connection``).  A feed that ends
(its group stopped, or the relay is shutting down) sends its last frames and a
Close, then ends its connection the same way; the connection's own task, the
only one reading, waits for the member's Close.  Nothing here blocks another member.

Arrival order: with several relay processes on one database (``relay.server.fleet``), a
group's events reach a process in any order: its own commits through the writer's hooks,
the others' as "group G has event N" announcements.  Each hub therefore knows the last
event it published (``last_seq``) and publishes only the next one: an older one is a
duplicate and is dropped, a newer one means some are missing and the hub reads them from
the store first (one read at a time per hub; its hook publishes in order, skipping what
arrived meanwhile).  With one process the next event is always the next one: publishing
costs one comparison more.

Two streams: the owners' events, and groups' timelines of member entries
(:class:`Stream`: how a stored row becomes its frame, the metrics' names).  Each runs a
``FanOut`` of its own; a connection subscribed to a group with member posts has a feed in
each, and the timeline's (the event feed's ``companion``) starts only once the event feed has
sent the ``subscribed`` answer, so nothing of the timeline reaches a member before it.

Must not: decode or re-encode signed bytes, touch the database except through
the reader it is given, or await while publishing.
"""

from __future__ import annotations

import contextvars
import enum
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode
from relay.protocol.messages import EventFrame, Signed
from relay.server.http import CLOSE_POLICY, ConnectionClosed, WebSocket, prepared_message
from relay.server.metrics import Metrics
from relay.server.tasks import ConnectionTasks

log = structlog.get_logger("relay.fanout")

# The ``event`` frame is the map {"type": "event", "event": <Signed>}: this prefix and the
# encoded ``Signed`` as stored make the frame without decoding anything.
EVENT_PREFIX = b"\x82\xa4type\xa5event\xa5event"
_probe = Signed(body=b"", signer=bytes(32), sig=bytes(64))
assert encode(EventFrame(event=_probe)) == EVENT_PREFIX + encode(_probe), "EventFrame layout changed"
MAX_CONTROL = 64  # profile and direct-invitation frames waiting per feed


def event_message(stored: bytes) -> bytes:
    """The WebSocket bytes of the ``event`` frame for an encoded ``Signed`` event."""
    return prepared_message(EVENT_PREFIX + stored)


@dataclass(frozen=True, slots=True)
class Stream:
    """What one fan-out carries: how a stored row becomes its frame, and its metrics' names.

    The relay runs two: owner events (``event`` frames, :data:`EVENTS`) and groups' timelines
    (``timeline`` frames, relay.server.timeline).  A subscribed connection has a feed in each
    (the timeline's is the event feed's ``companion``)."""

    name: str
    frame: Callable[[bytes], bytes]  # stored bytes -> the prepared WebSocket message
    delivered_metric: str
    subscribers_metric: str | None = None  # a gauge of the feeds attached (None: not kept)


EVENTS = Stream("events", event_message, "relay_events_delivered_total", "relay_subscribers")


@dataclass(frozen=True, slots=True)
class Page:
    """What one catch-up read found: events after the cursor, and the head at that moment."""

    events: list[tuple[int, bytes]]  # (seq, encoded Signed)
    head_seq: int
    complete: bool  # no more events after these (at the moment of the read)


# Reads a page of stored events after ``after`` for a group; ``on_commit`` is called with the
# page on the trio thread in commit order (see Database.transact).
PageReader = Callable[[int, int, int, Callable[[Page], None]], Awaitable[Page]]
# Starts a task (a nursery's ``start_soon``): how a hub reads missing events.
Spawner = Callable[[Callable[[], Awaitable[None]]], None]
FILL_RETRY = (0.05, 2.0)  # the first wait after a failed read of missing events, and the longest


@dataclass(frozen=True, slots=True)
class FanoutLimits:
    buffer_frames: int
    buffer_bytes: int
    stall_timeout: float
    page: int
    recent: int


class Mode(enum.Enum):
    CATCH_UP = "catch_up"
    LIVE = "live"


class Hub:
    """One group's feeds, and its newest events already framed (bounded)."""

    __slots__ = (
        "attached",
        "filling",
        "group_id",
        "known_from",
        "last_seq",
        "live",
        "members",
        "others",
        "profile_message",
        "recent",
    )

    def __init__(self, group_id: int, head_seq: int) -> None:
        self.group_id = group_id
        self.live: set[Feed] = set()
        self.attached: set[Feed] = set()  # every feed, live or catching up
        self.members: dict[bytes, Feed] = {}  # member key -> its newest feed (direct invitations)
        # member key -> its older feeds, only for a member subscribed more than once (a phone
        # and a laptop): the common member costs no entry here.
        self.others: dict[bytes, list[Feed]] = {}
        # ``recent`` holds every event from ``known_from`` on: the hub was made in the hook of
        # a read that saw the head, and every later commit is published to it.
        self.recent: deque[tuple[int, bytes]] = deque()
        self.known_from = head_seq + 1
        self.last_seq = head_seq  # the newest event published to the hub
        # A read of missing events runs (at most one per hub): the newest seq it must reach.
        self.filling: int | None = None
        self.profile_message: bytes | None = None

    def covers(self, cursor: int) -> bool:
        return cursor + 1 >= self.known_from


class Feed:
    """One subscribed connection: a bounded queue, and a sender task only while it has a backlog."""

    __slots__ = (
        "_context",
        "_sending",
        "_tasks",
        "closed",
        "companion",
        "control",
        "ending",
        "fanout",
        "hub",
        "lagged",
        "member",
        "mode",
        "queue",
        "queued_bytes",
        "queued_seq",
        "sent_seq",
        "ws",
    )

    def __init__(self, fanout: FanOut, hub: Hub, ws: WebSocket, member: bytes) -> None:
        self.fanout = fanout
        self.hub = hub
        self.ws = ws
        self.member = member
        self.mode = Mode.CATCH_UP
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self.queued_seq = 0  # the newest event queued (or sent): later ones only go live
        self.sent_seq = 0  # the newest event handed to the socket: catch-up resumes after it
        self.control: list[bytes] = []
        # Set by ``start``: the connection's helper tasks own the sender task, which runs in the
        # connection's context (its log lines name the member's connection, not the publisher's).
        self._tasks: ConnectionTasks | None = None
        self._context: contextvars.Context | None = None
        # True from the moment a sender task is started until it finds nothing left to send:
        # while it is set, everything new is queued behind what the sender has not sent yet.
        self._sending = False
        self.closed = False
        # The connection ends (the group stopped, or the relay): send what is in ``control``,
        # then a Close with this code and reason.
        self.ending: tuple[int, str] | None = None
        self.lagged = 0
        # The same connection's feed of the other stream (a group's timeline beside its
        # events), started by this feed's sender once the control frames (``subscribed``) are
        # out: nothing of it may reach the member before the answer.
        self.companion: Feed | None = None

    def start(self, tasks: ConnectionTasks, context: contextvars.Context) -> None:
        """Let the feed start its sender as the connection's helper; sends what is queued."""
        self._tasks = tasks
        self._context = context
        self._wake()

    # --- called on the trio thread by publishers (never blocks) ---------------------

    def push_event(self, seq: int, message: bytes) -> None:
        if seq <= self.queued_seq or self.ending is not None:
            return
        limits = self.fanout.limits
        if len(self.queue) >= limits.buffer_frames or self.queued_bytes + len(message) > limits.buffer_bytes:
            self._lag()
            return
        if (
            not self._sending
            and not self.queue
            and not self.control
            and self._tasks is not None  # not started: nothing goes out before its turn
            and self.ws.send_now(message)
        ):
            # No backlog and the socket took the frame at once: no task, no await.  A part
            # left unsent is a backlog: a sender flushes it.
            self.queued_seq = self.sent_seq = seq
            if self.ws.unsent:
                self._wake()
            return
        self.queue.append(message)
        self.queued_bytes += len(message)
        self.queued_seq = seq
        self._wake()

    def push_ping(self, message: bytes) -> bool:
        """A Ping from the liveness sweep: written at once if nothing is queued and the socket
        takes it (no task), else queued like a control frame; False if it could not be."""
        if self.closed or self.ending is not None:
            return False
        if not self._sending and not self.queue and not self.control and self.ws.send_now(message):
            if self.ws.unsent:
                self._wake()
            return True
        return self.push_control(message)

    def push_control(self, message: bytes) -> bool:
        """Queue a profile or direct-invitation frame; False if too many are waiting."""
        if self.closed or self.ending is not None or len(self.control) >= MAX_CONTROL:
            return False
        self.control.append(message)
        self._wake()
        return True

    def end(self, message: bytes | None, code: int, reason: str) -> None:
        """Send ``message`` (an error frame) if any, then a Close; then the connection ends."""
        if self.ending is not None or self.closed:
            return  # already ending: the first reason stands
        self.hub.live.discard(self)
        self.queue = []
        self.queued_bytes = 0
        self.control = [] if message is None else [message]
        self.ending = (code, reason)
        self._wake()

    def _lag(self) -> None:
        """Too far behind: forget the queue, catch up from the store after what was sent."""
        self.hub.live.discard(self)
        self.mode = Mode.CATCH_UP
        self.queue = []
        self.queued_bytes = 0
        self.queued_seq = self.sent_seq
        self.lagged += 1
        self.fanout.lagging(self)
        self._wake()

    def _wake(self) -> None:
        """There is a backlog: start a sender unless one is running (it sends this too)."""
        if self._sending or self.closed or self._tasks is None or self._context is None:
            return  # before ``start`` the backlog waits; after ``detach`` nobody reads it
        self._sending = True
        # Run in the connection's context, whoever publishes (start_soon copies the current one).
        self._context.run(self._tasks.start_soon, self._sender)

    # --- the sender task ----------------------------------------------------------

    def queue_page(self, events: list[tuple[int, bytes]]) -> None:
        """Queue a page of catch-up (the queue is empty: only a feed in catch-up gets one)."""
        for seq, message in events:
            self.queue.append(message)
            self.queued_bytes += len(message)
            self.queued_seq = seq

    def start_live(self, after: int, events: list[tuple[int, bytes]]) -> None:
        """Switch to live after queueing ``events`` (in the hook of a read, or from the cache)."""
        for seq, message in events:
            self.queue.append(message)
            self.queued_bytes += len(message)
            self.queued_seq = seq
        self.queued_seq = max(self.queued_seq, after)
        self.mode = Mode.LIVE
        self.hub.live.add(self)
        self._wake()

    async def _sender(self) -> None:
        """Send the backlog, then exit; a member gone, stalled or ended ends its connection."""
        try:
            await self._drain()
            return
        except ConnectionClosed:
            pass
        except FeedEnded:
            # The error frame (if any) was sent; a Close tells the member it is final.  The
            # connection's handler then waits for the member's Close (it is the one reading).
            assert self.ending is not None
            with trio.move_on_after(1):
                await self.ws.send_close(*self.ending)
        # No Close frame to a member that reads nothing: it could block (the connection's
        # handler closes the stream).
        assert self._tasks is not None
        self._tasks.end_connection()

    async def _drain(self) -> None:
        """Send until nothing is left; raises ConnectionClosed when the member is gone."""
        fanout = self.fanout
        while True:
            if self.ws.unsent:
                await self._send(b"")  # the rest of a frame the fast path wrote in part
                continue
            if self.control:
                data = b"".join(self.control)
                self.control = []
                await self._send(data)
                companion = self.companion
                if companion is not None and companion._tasks is None and self._tasks is not None:
                    assert self._context is not None
                    companion.start(self._tasks, self._context)
                continue
            if self.ending is not None:
                raise FeedEnded()
            if self.queue:
                batch = self.queue
                last = self.queued_seq
                self.queue = []
                self.queued_bytes = 0
                await self._send(b"".join(batch) if len(batch) > 1 else batch[0])
                # Only if still in step: a lag during the send reset queued_seq to what was
                # sent before this batch, and catch-up resumes after this batch instead.
                self.sent_seq = max(self.sent_seq, last)
                if self.mode is Mode.CATCH_UP:
                    self.queued_seq = self.sent_seq
                continue
            if self.mode is Mode.CATCH_UP:
                await fanout.catch_up(self)
                continue
            # Nothing left, and no await since the checks above: a publisher from now on sees
            # no sender and writes to the socket itself, or starts a new sender.
            self._sending = False
            return

    async def _send(self, data: bytes) -> None:
        with trio.move_on_after(self.fanout.limits.stall_timeout) as scope:
            await self.ws.send_prepared(data)
        if scope.cancelled_caught:
            self.fanout.stalled(self)
            raise ConnectionClosed()


class FeedEnded(Exception):
    """The feed ends (its group stopped, or the relay): its last frames were sent."""


class FanOut:
    """Every group's hub; publishing, subscribing and catching up."""

    def __init__(
        self, limits: FanoutLimits, metrics: Metrics, reader: PageReader, stream: Stream = EVENTS
    ) -> None:
        self.limits = limits
        self.stream = stream
        self.metrics = metrics
        self.reader = reader
        self.hubs: dict[int, Hub] = {}
        # Set when other processes share the database (relay.server.fleet): missing events
        # are read in tasks it starts.  None: a gap cannot happen, and is published as is.
        self.spawn: Spawner | None = None
        self.subscribers = 0
        # (group, member key) -> subscriptions checked and not attached yet (their read runs).
        self.pending: dict[tuple[int, bytes], int] = {}

    def publish(self, group_id: int, seq: int, stored: bytes) -> None:
        """A committed event: frame it once and queue it for every live member (trio thread).

        Any order (see the module's docstring): a duplicate is dropped, and events missing
        before ``seq`` are read from the store and published first."""
        hub = self.hubs.get(group_id)
        if hub is None:
            return
        if seq != hub.last_seq + 1:
            if seq <= hub.last_seq:
                return  # published already (it came by two ways)
            if self.spawn is not None:
                self._fill(hub, seq)
                return
        hub.last_seq = seq
        message = self.stream.frame(stored)
        if self.limits.recent:
            hub.recent.append((seq, message))
            if len(hub.recent) > self.limits.recent:
                hub.recent.popleft()
                hub.known_from = hub.recent[0][0]
        else:
            hub.known_from = seq + 1
        for feed in tuple(hub.live):
            feed.push_event(seq, message)
        self.metrics.inc(self.stream.delivered_metric, len(hub.live))

    def note(self, group_id: int, seq: int) -> None:
        """Another process committed event ``seq`` of the group: publish up to it, if this
        process has members of the group and has not published it yet."""
        hub = self.hubs.get(group_id)
        if hub is not None and seq > hub.last_seq and self.spawn is not None:
            self._fill(hub, seq)

    def resync(self) -> None:
        """Announcements may have been missed (the listening connection was lost): every hub
        reads what the store holds after its last event."""
        for hub in self.hubs.values():
            self._fill(hub, hub.last_seq + 1, until_complete=True)

    def _fill(self, hub: Hub, seq: int, *, until_complete: bool = False) -> None:
        target = max(seq, hub.filling or 0)
        if until_complete:
            target = max(target, 1 << 62)  # whatever the store holds, however far
        running = hub.filling is not None
        hub.filling = target
        if not running and self.spawn is not None:
            self.spawn(lambda: self._read_missing(hub))

    async def _read_missing(self, hub: Hub) -> None:
        """Read and publish the hub's events after ``last_seq`` until ``filling`` is reached
        (or the store holds no more), then stop; a failed read is tried again after a wait."""
        wait = FILL_RETRY[0]
        asked = hub.filling

        def hook(page: Page) -> None:
            for seq, stored in page.events:
                if seq > hub.last_seq + 1:
                    # Retention dropped the ones between: the cache must not pretend to hold
                    # them (a member catching up reads the store, and finds them gone).
                    hub.recent.clear()
                    hub.known_from = seq
                    hub.last_seq = seq - 1
                self.publish(hub.group_id, seq, stored)
            target = hub.filling
            if target is not None and (hub.last_seq >= target or (page.complete and target == asked)):
                # Reached, or the store holds nothing more than what was asked before this
                # read began (anything announced since may not have been in it: read again).
                hub.filling = None

        while hub.filling is not None and self.hubs.get(hub.group_id) is hub:
            asked = hub.filling
            try:
                await self.reader(hub.group_id, hub.last_seq, self.limits.page, hook)
            except Exception as exc:  # the store is unavailable, say: members wait, not lose
                log.warning("fanout.read_failed", group=hub.group_id, error=str(exc), retry_in=wait)
                await trio.sleep(wait)
                wait = min(wait * 2, FILL_RETRY[1])
        hub.filling = None

    def push_profile(self, group_id: int, message: bytes) -> None:
        hub = self.hubs.get(group_id)
        if hub is None:
            return
        hub.profile_message = message
        for feed in tuple(hub.live):
            feed.push_control(message)

    def feeds_of(self, group_id: int) -> int:
        hub = self.hubs.get(group_id)
        return 0 if hub is None else len(hub.attached)

    def end_group(self, group_id: int, message: bytes) -> int:
        """End every feed of a group with ``message``; returns how many (trio thread)."""
        hub = self.hubs.get(group_id)
        if hub is None:
            return 0
        feeds = [feed for feed in hub.attached if feed.ending is None]
        for feed in feeds:
            feed.end(message, CLOSE_POLICY, ErrorCode.GROUP_NOT_ACTIVE.value)
        return len(feeds)

    def end_member(self, group_id: int, member: bytes, message: bytes, reason: str) -> int:
        """End every feed ``member`` holds on the group with ``message`` (an error frame);
        returns how many (trio thread).  Its connections close with the feeds."""
        hub = self.hubs.get(group_id)
        if hub is None:
            return 0
        newest = hub.members.get(member)
        feeds = [f for f in (newest, *hub.others.get(member, ())) if f is not None and f.ending is None]
        for feed in feeds:
            feed.end(message, CLOSE_POLICY, reason)
        return len(feeds)

    def forget_recent(self, group_id: int) -> None:
        """The frames cached for the group may be stale (a message was removed): catch-up
        reads the store from now on, until newer frames fill the cache again."""
        hub = self.hubs.get(group_id)
        if hub is not None:
            hub.recent.clear()
            hub.known_from = hub.last_seq + 1

    def subscriptions_of(self, group_id: int, member: bytes) -> int:
        """The feeds ``member`` has on the group, attached or about to be."""
        hub = self.hubs.get(group_id)
        attached = 0
        if hub is not None and member in hub.members:
            attached = 1 + len(hub.others.get(member, ()))
        return attached + self.pending.get((group_id, member), 0)

    def reserve(self, group_id: int, member: bytes, limit: int) -> bool:
        """Count a subscription about to be attached, if ``member`` holds fewer than ``limit``."""
        if self.subscriptions_of(group_id, member) >= limit:
            return False
        key = (group_id, member)
        self.pending[key] = self.pending.get(key, 0) + 1
        return True

    def unreserve(self, group_id: int, member: bytes) -> None:
        """A reserved subscription was attached, or failed."""
        key = (group_id, member)
        left = self.pending.get(key, 0) - 1
        if left > 0:
            self.pending[key] = left
        else:
            self.pending.pop(key, None)

    def attach(self, group_id: int, head_seq: int, ws: WebSocket, member: bytes) -> Feed:
        """A new feed for a connection, in catch-up mode; call in the hook of its first read."""
        hub = self.hubs.get(group_id)
        if hub is None:
            hub = self.hubs[group_id] = Hub(group_id, head_seq)
            if self.spawn is not None:
                # In a fleet, another process's event committed after this read and announced
                # before this hook found no hub, and was not published: read after the head
                # once (usually nothing), so it is not held back until the next announcement.
                self._fill(hub, head_seq + 1, until_complete=True)
        self.subscribers += 1
        if self.stream.subscribers_metric is not None:
            self.metrics.set(self.stream.subscribers_metric, self.subscribers)
        feed = Feed(self, hub, ws, member)
        hub.attached.add(feed)
        previous = hub.members.get(member)
        if previous is not None:
            hub.others.setdefault(member, []).append(previous)
        hub.members[member] = feed
        return feed

    def feed_of(self, group_id: int, member: bytes) -> Feed | None:
        hub = self.hubs.get(group_id)
        return None if hub is None else hub.members.get(member)

    def detach(self, feed: Feed) -> None:
        if feed.closed:
            return
        feed.closed = True
        hub = feed.hub
        hub.live.discard(feed)
        member = feed.member
        others = hub.others.get(member)
        if hub.members.get(member) is feed:
            if others:
                hub.members[member] = others.pop()  # the newest of its other feeds
            else:
                del hub.members[member]
        elif others and feed in others:
            others.remove(feed)
        if others is not None and not others:
            del hub.others[member]
        hub.attached.discard(feed)
        self.subscribers -= 1
        if self.stream.subscribers_metric is not None:
            self.metrics.set(self.stream.subscribers_metric, self.subscribers)
        if not hub.attached and self.hubs.get(hub.group_id) is hub:
            del self.hubs[hub.group_id]

    async def catch_up(self, feed: Feed) -> None:
        """One step of catch-up: from the hub's recent events if they reach back far enough,
        else one page from the store; goes live when nothing is left."""
        hub = feed.hub
        cursor = feed.sent_seq
        if hub.covers(cursor):
            feed.start_live(cursor, [(s, m) for s, m in hub.recent if s > cursor])
            self._caught_up(feed)
            return

        def hook(page: Page) -> None:
            if feed.closed or feed.ending is not None:
                return
            events = [(seq, self.stream.frame(stored)) for seq, stored in page.events]
            if page.complete:
                feed.start_live(cursor, events)
                self._caught_up(feed)
            else:
                feed.queue_page(events)

        await self.reader(hub.group_id, cursor, self.limits.page, hook)

    def _caught_up(self, feed: Feed) -> None:
        if feed.lagged and feed.hub.profile_message is not None:
            feed.push_control(feed.hub.profile_message)  # it may have missed a profile push

    def lagging(self, feed: Feed) -> None:
        self.metrics.inc("relay_bounds_hit_total", bound="send_buffer")
        self.metrics.inc("relay_feed_lagging_total")
        if feed.lagged == 1:  # once per connection: a slow member would flood the log
            log.warning(
                "feed.lagging",
                group=feed.hub.group_id,
                seq=feed.sent_seq,
                limit_frames=self.limits.buffer_frames,
                limit_bytes=self.limits.buffer_bytes,
            )

    def stalled(self, feed: Feed) -> None:
        self.metrics.inc("relay_feed_stalled_total")
        log.warning(
            "feed.stalled", group=feed.hub.group_id, seq=feed.sent_seq, timeout=self.limits.stall_timeout
        )
