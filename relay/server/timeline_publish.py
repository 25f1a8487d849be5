"""Owners' certs and signed moderation into a group's timeline (``publish``), and their effects.

A cert is checked against the group's owners before any read; a moderation is decoded (not
verified) to learn its subject, then one read beside the writer gives the moderators and the
removed message's author it is verified against (an entry already placed is answered
``duplicate`` with its place, nothing checked further).  The writer's job checks the signer's
right again as it is then (a moderator withdrawn meanwhile), with no crypto.

Moderation takes effect in the same transaction: a removed message's place keeps its id with
no content (a tombstone; the hub's cached frames of the group are dropped, so history serves
the tombstone); ``remove_member`` and ``ban`` void the member's cert (posts refused
``not_certified`` / ``banned``) and end its live feeds; a ban also refuses its join request
and every later one (``banned``).  The effect is announced to the other processes in the
same transaction, and takes effect on this process's feeds after COMMIT.

Must not: verify a signature in the writer's job, take a moderation's effect outside the
transaction that places it, or write SQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from relay.protocol import timeline as rules
from relay.protocol.admission import Decision, JoinState
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import Append
from relay.protocol.messages import Moderation, Publish, PublishResult
from relay.server.admission import GroupBinding
from relay.server.events import GroupView
from relay.server.timeline_intake import Placed, TimelineIntake, answered, roster_of, save_member
from relay.store import events as event_store
from relay.store import fleet as fleet_store
from relay.store import joins
from relay.store import timeline as store
from relay.store.conn import Conn

log = structlog.get_logger("relay.timeline")


@dataclass(frozen=True, slots=True)
class _Known:
    """What the intake reads beside the writer before verifying anything."""

    placed: int | None  # the entry's place, if already stored: a duplicate
    moderators: frozenset[bytes] = frozenset()
    author: bytes | None = None  # the author of the message a removal names


class Publishing:
    """The intake of owners' certs and moderations."""

    def __init__(self, intake: TimelineIntake) -> None:
        self.intake = intake
        self.db = intake.db
        self.events = intake.events
        self.metrics = intake.metrics

    async def submit(self, group: GroupBinding, frame: Publish) -> Callable[[], Awaitable[PublishResult]]:
        """Check, verify and queue an owner's cert or a moderation; returns the wait for its answer."""
        try:
            return await self._submit(group, frame)
        except RemoteProtocolError:
            self.metrics.inc("relay_timeline_published_total", kind=_kind_label(frame.kind), result="refused")
            raise

    async def _submit(self, group: GroupBinding, frame: Publish) -> Callable[[], Awaitable[PublishResult]]:
        intake = self.intake
        view, _ = await intake.view(group)
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
            return answered(PublishResult(status=Append.DUPLICATE.value, pos=known.placed, id=entry_id))
        stored = encode(signed)
        now = intake.service.now()
        fleet = intake.channels.fleet_process
        max_events, max_bytes = self.events.max_events, self.events.max_bytes
        apply: Callable[[Conn], Placed]
        if kind == rules.KIND_CERT:
            cert = rules.verify_cert(signed, channel=view.channel, owners=view.owners)

            def apply(conn: Conn) -> Placed:
                placed = _placed_already(intake, conn, view, cert.id, fleet)
                if placed is not None:
                    return Placed(Append.DUPLICATE, placed, cert.id)
                roster, _ = roster_of(conn, view.id, cert.member)
                if roster.apply_cert(cert) is Append.NEW:
                    save_member(conn, view.id, roster, cert.member)
                head = store.head(conn, view.id)
                after = event_store.head(conn, view.id).head_seq
                items: list[tuple[int, bytes]] = []
                place = store.Place(head.pos + 1, after, rules.KIND_CERT, cert.id, stored)
                head = intake.place(conn, view.id, head, place, now, items)
                pruned = store.prune_to_size(conn, view.id, head, max_events, max_bytes)
                return Placed(Append.NEW, head.pos, cert.id, items, pruned)

        else:
            moderation = rules.verify_moderation(
                signed,
                channel=view.channel,
                owners=view.owners,
                moderators=known.moderators,
                author=known.author,
            )

            def apply(conn: Conn) -> Placed:
                placed = _placed_already(intake, conn, view, moderation.id, fleet)
                if placed is not None:
                    return Placed(Append.DUPLICATE, placed, moderation.id)
                # The signer's right as it is now (a moderator withdrawn meanwhile): no crypto.
                rules.check_moderation(
                    signed,
                    channel=view.channel,
                    owners=view.owners,
                    moderators=store.moderators(conn, view.id),
                    author=store.author_of(conn, view.id, moderation.subject),
                )
                return self._moderate(conn, view, moderation, stored, now, fleet)

        job = await intake.queue(view.id, apply)

        async def answer() -> PublishResult:
            try:
                placed = await intake.result(job, group)
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
    ) -> Placed:
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
            roster, _ = roster_of(conn, view.id, subject)
            roster.apply_moderation(moderation)
            save_member(conn, view.id, roster, subject)
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
        head = self.intake.place(conn, view.id, head, place, now, items)
        if fleet is not None:
            effect = "r" if removes is not None else "x"
            extra = "" if removes is not None else f":{action}:{subject.hex()}"
            fleet_store.announce(conn, f"{fleet}:{effect}:{view.id}{extra}")
        pruned = store.prune_to_size(conn, view.id, head, self.events.max_events, self.events.max_bytes)
        return Placed(Append.NEW, head.pos, moderation.id, items, pruned, effect=(action, subject))


def _placed_already(
    intake: TimelineIntake, conn: Conn, view: GroupView, entry_id: bytes, fleet: str | None
) -> int | None:
    """In the writer, before an owner's entry is placed: the fleet's lock on the group's
    timeline (in a fleet), the group as the entry was checked against, then the entry's place
    if it is stored already (a duplicate)."""
    if fleet is not None:
        store.lock(conn, view.id)
    intake.still(conn, view)
    return store.place_of(conn, view.id, entry_id)


def _kind_label(kind: str) -> str:
    """A metric label from a client's word: only the known kinds, never what it made up."""
    return kind if kind in (rules.KIND_CERT, rules.KIND_MODERATION) else "other"
