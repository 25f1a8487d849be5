"""Groups' timelines as served: the ``timeline`` frames, their fan-out, pages and age retention.

A stored place is sent as a ``timeline`` frame whose item splices the entry's stored bytes in
as they are.  The fan-out is :class:`relay.server.fanout.FanOut` with the ``timeline`` stream:
a subscription to a group with member posts attaches the connection's event feed and its
timeline feed in one read (see :meth:`relay.server.events.Channels.subscribe`, which calls
:meth:`TimelineFeed.first_page` in that read).  Pages for a lagging feed are read here; age
retention prunes every timeline in bounded transactions.  Moderation's effects on the live
feeds of this process end here too (a removal drops cached frames; a removed or banned
member's feeds end), whether this process stored the moderation or another announced it.

Must not: decode or re-encode a stored entry (its bytes are its signature's), decide what is
placed (the intakes, relay.server.timeline_intake and its users, do), or write SQL.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from relay.protocol import timeline as rules
from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode
from relay.protocol.messages import Error, Signed, TimelineFrame, TimelineItem
from relay.server.events import Channels, fanout_limits, prune_older, run_every
from relay.server.fanout import FanOut, Page, Stream
from relay.server.http import prepared_message
from relay.server.metrics import Metrics
from relay.store import timeline as store
from relay.store.conn import Conn

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


class TimelineFeed:
    """The timelines' fan-out, the pages it reads, age retention, and moderation's end of feeds."""

    def __init__(self, channels: Channels, metrics: Metrics) -> None:
        self.channels = channels
        self.db = channels.db
        self.service = channels.service
        self.events = channels.config
        self.metrics = metrics
        self.fanout = FanOut(fanout_limits(self.events), metrics, self._read_page, TIMELINE)

    # --- pages ----------------------------------------------------------------------------------

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

    # --- moderation's effects on this process's feeds -------------------------------------------

    def removed(self, group_id: int) -> None:
        """A message of the group was removed: cached frames may hold its content."""
        self.fanout.forget_recent(group_id)

    def end_member(self, group_id: int, action: str, member: bytes) -> None:
        """A member was removed or banned: its live feeds end (an error frame, then close)."""
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

    # --- retention ------------------------------------------------------------------------------

    async def prune_by_age(self) -> int:
        """One pass of age retention over every timeline (bounded per transaction)."""
        before = self.service.now() - self.events.max_age
        total = await prune_older(self.db, store.prune_older_than, before)
        if total:
            self.metrics.inc("relay_timeline_pruned_total", total, reason="age")
            log.info("timeline.pruned", reason="age", places=total)
        return total

    async def run_pruner(self) -> None:
        await run_every(self.events.prune_interval, self.prune_by_age)
