"""Groups' timelines at a group address: members' messages, owners' certs, signed moderation.

:class:`Timelines` is the one surface the rest of the server uses (app, public, events,
fleet); the work is in its parts, each of one concern:

- relay.server.timeline_posts: members' messages (``member_post``): checks, pace, job;
- relay.server.timeline_publish: owners' certs and moderations (``publish``), whose
  effects (tombstones, voided certs, bans refusing joins) take place in the same
  transaction;
- relay.server.timeline_intake: what both intakes share (the group's view, the writer's
  common steps, the answer after COMMIT and the places published in commit order);
- relay.server.timeline_feed: the ``timeline`` frames, their fan-out, pages, age retention,
  and the end of a removed or banned member's feeds.

Signatures are verified once, on the trio thread, never in the writer; the pace is charged
only for a message whose signature checked out.

Must not: hold logic of its own (it wires the parts and passes calls through), verify a
signature inside a transaction, write SQL, or hold state the database does not also hold.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from relay.protocol import timeline as rules
from relay.protocol.messages import MemberPost, MemberPostResult, Publish, PublishResult
from relay.server.admission import GroupBinding
from relay.server.bounds import Bounds
from relay.server.config import GroupsConfig
from relay.server.events import Channels, GroupView
from relay.server.fanout import FanOut, Page
from relay.server.metrics import Metrics
from relay.server.timeline_feed import TimelineFeed
from relay.server.timeline_intake import TimelineIntake
from relay.server.timeline_posts import MemberPosts
from relay.server.timeline_publish import Publishing
from relay.store import timeline as store
from relay.store.conn import Conn


class Timelines:
    """The timelines of the groups served here: intake, fan-out, moderation's effects."""

    def __init__(
        self, channels: Channels, config: GroupsConfig, metrics: Metrics, bounds: Bounds | None = None
    ) -> None:
        self.feed = TimelineFeed(channels, metrics)
        self.fanout: FanOut = self.feed.fanout
        self.intake = TimelineIntake(channels, config, metrics, self.feed, self._moderated)
        self.posts = MemberPosts(self.intake, bounds if bounds is not None else channels.bounds)
        self.publishing = Publishing(self.intake)
        channels.timelines = self

    def rules_of(self, view: GroupView) -> rules.PostingRules:
        """The group's posting rules, never below this relay's floor."""
        return self.intake.rules_of(view)

    async def submit_member_post(
        self, group: GroupBinding, frame: MemberPost
    ) -> Callable[[], Awaitable[MemberPostResult]]:
        """Check, verify and queue a member's message; returns the wait for its answer."""
        return await self.posts.submit(group, frame)

    async def submit_publish(
        self, group: GroupBinding, frame: Publish
    ) -> Callable[[], Awaitable[PublishResult]]:
        """Check, verify and queue an owner's cert or a moderation; returns the wait for its answer."""
        return await self.publishing.submit(group, frame)

    def first_page(
        self, conn: Conn, group_id: int, since: int | None
    ) -> tuple[store.TimelineHead, int, Page]:
        """In a subscription's read job: the head, the cursor history starts after, its first page."""
        return self.feed.first_page(conn, group_id, since)

    async def run_pruner(self) -> None:
        """Age retention, every ``prune_interval``."""
        await self.feed.run_pruner()

    # --- moderation's effects on this process (also announced by other processes) -----------

    def removed(self, group_id: int) -> None:
        """A message of the group was removed: cached frames may hold its content."""
        self.feed.removed(group_id)

    def member_ended(self, group_id: int, action: str, member: bytes) -> None:
        """A member was removed or banned: no longer known certified, and its live feeds end."""
        self.posts.forget_member(group_id, member)
        self.feed.end_member(group_id, action, member)

    def forget(self) -> None:
        """Removals or bans may have been missed (another process's announcements lost)."""
        self.posts.forget()

    def _moderated(self, group_id: int, action: str, subject: bytes) -> None:
        """A moderation committed here: its effect on this process."""
        if action == rules.ACTION_REMOVE_MESSAGE:
            self.removed(group_id)
        else:
            self.member_ended(group_id, action, subject)
