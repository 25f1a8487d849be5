"""What a timeline's two intakes share: the group's view, the writer's common steps, the answer.

Both intakes (members' messages, relay.server.timeline_posts; owners' certs and moderations,
relay.server.timeline_publish) run their cheap checks and verify signatures on the trio
thread, then queue one job with the writer.  This module holds what the two have in common:
the group seen active with its posting rules; in the job, the check that the group is still
as that view saw it (else ``StaleView``: the sender is asked to send again), the placing of
an entry (the running hash, and the announcement of the place to the other processes), and
the roster row of the member a job is about, read into the roster rules and written back;
after the job, its answer (sent after COMMIT) and its places published to the timeline's
fan-out in commit order, then a moderation's effects on this process.

Must not: verify a signature (the writer runs under ``crypto.verify_forbidden``; a job only
re-checks with what was verified before it), re-encode a signed entry (its body stays the
bytes its signature covers), or write SQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from relay.protocol import timeline as rules
from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import Append
from relay.protocol.state import GroupState
from relay.server.admission import GroupBinding
from relay.server.config import GroupsConfig
from relay.server.events import Channels, GroupView, StaleView
from relay.server.metrics import Metrics
from relay.server.service import decode_signed
from relay.server.timeline_feed import TimelineFeed, item_bytes
from relay.store import groups
from relay.store import timeline as store
from relay.store.conn import Conn
from relay.store.db import Job

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Placed:
    """What a job stored (places to publish once committed), or the place of a duplicate."""

    status: Append
    pos: int
    id: bytes
    items: list[tuple[int, bytes]] = field(default_factory=list)  # (pos, encoded item)
    pruned: int = 0
    # A moderation's effect on this process's feeds: (action, subject).
    effect: tuple[str, bytes] | None = None


class TimelineIntake:
    """The steps both intakes take before, in and after their writer's job."""

    def __init__(
        self,
        channels: Channels,
        config: GroupsConfig,
        metrics: Metrics,
        feed: TimelineFeed,
        moderated: Callable[[int, str, bytes], None],
    ) -> None:
        self.channels = channels
        self.service = channels.service
        self.db = channels.db
        self.config = config
        self.events = channels.config
        self.metrics = metrics
        self.feed = feed
        # A moderation committed here takes effect on this process: (group, action, subject).
        self.moderated = moderated

    # --- before the job -------------------------------------------------------------------------

    def rules_of(self, view: GroupView) -> rules.PostingRules:
        return rules.PostingRules.of(
            view.profile,
            floor_bytes=self.config.max_message_bytes,
            floor_per_minute=self.config.messages_per_minute,
        )

    async def view(self, group: GroupBinding) -> tuple[GroupView, rules.PostingRules]:
        """The group as it is now, active and taking posts, with its posting rules."""
        view = await self.channels.view(group.id)
        if view.state is not GroupState.ACTIVE:
            raise RemoteProtocolError(
                ErrorCode.GROUP_NOT_ACTIVE, f"the group is {view.state.value}; posts need an active group"
            )
        posting = self.rules_of(view)
        posting.check_posting()
        return view, posting

    # --- in the job -----------------------------------------------------------------------------

    def still(self, conn: Conn, view: GroupView) -> None:
        """The group is as the view that checked the entry saw it (else: check again)."""
        if groups.state_and_version(conn, view.id) != (view.state, view.profile_version):
            raise StaleView()

    def place(
        self,
        conn: Conn,
        group_id: int,
        head: store.TimelineHead,
        place: store.Place,
        now: int,
        items: list[tuple[int, bytes]],
    ) -> store.TimelineHead:
        """Append a place after ``head``, keeping the running hash; its item joins ``items``."""
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

    def _announcement(self, group_id: int, pos: int) -> str | None:
        process = self.channels.fleet_process
        return None if process is None else f"{process}:t:{group_id}:{pos}"

    # --- after the job --------------------------------------------------------------------------

    async def queue(self, group_id: int, apply: Callable[[Conn], Placed]) -> Job[Placed]:
        """Queue a job with the writer; its places are published once it commits."""
        return await self.db.submit(apply, on_commit=lambda placed: self._published(group_id, placed))

    async def result(self, job: Job[Placed], group: GroupBinding) -> Placed:
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

    def _published(self, group_id: int, placed: Placed) -> None:
        """After COMMIT, in commit order: the new places to the fan-out, then the effects."""
        for pos, item in placed.items:
            self.feed.fanout.publish(group_id, pos, item)
        if placed.effect is not None and placed.status is Append.NEW:
            self.moderated(group_id, *placed.effect)


def answered(result: T) -> Callable[[], Awaitable[T]]:
    """The wait for an answer known without a job (a duplicate)."""

    async def answer() -> T:
        return result

    return answer


# --- the roster rules over the one member a job is about ------------------------------------------


def roster_of(conn: Conn, group_id: int, member: bytes) -> tuple[rules.Roster, store.RosterRow | None]:
    """A roster holding the one member the job is about, as the store keeps it."""
    row = store.roster_row(conn, group_id, member)
    return roster_with(member, row), row


def roster_with(member: bytes, row: store.RosterRow | None) -> rules.Roster:
    """A roster holding one member's row (none: a roster without it)."""
    roster = rules.Roster()
    if row is not None:
        cert = None
        if row.cert is not None and row.certified:
            cert = rules.stored_cert(decode_signed(row.cert))
        roster.put(rules.RosterEntry(member, cert, row.removed_at or 0, row.banned_at))
    return roster


def save_member(conn: Conn, group_id: int, roster: rules.Roster, member: bytes) -> None:
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
