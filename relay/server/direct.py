"""Member cards and direct invitations between members of a group (seed 002).

Nothing is set up between members automatically.  A subscribed member may ask
for another member's card (that member's own signed join request, which carries
its seal key) and send it a sealed invitation; both pass only while the owners'
signed profile allows direct messages for a channel of this size
(``relay.protocol.direct.check_allowed``), and every refusal is counted.  An
invitation goes straight to the target's feed if it is subscribed here, else
into its bounded inbox, delivered on its next subscribe.

Must not: open or alter the sealed invitation, or answer for a member who is not
admitted.
"""

from __future__ import annotations

import structlog

from relay.protocol import crypto
from relay.protocol.admission import JoinState
from relay.protocol.direct import check_allowed, verify_direct_invitation
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.messages import (
    DirectInvite,
    DirectInviteDelivery,
    DirectInviteResult,
    MemberCard,
    MemberCardRequest,
    Signed,
)
from relay.protocol.profile import MAX_SIGNED_BODY
from relay.server.admission import GroupBinding
from relay.server.events import Channels
from relay.server.http import prepared_message
from relay.store import events as store
from relay.store import joins
from relay.store.conn import Conn

log = structlog.get_logger("relay.direct")


class DirectMessages:
    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.service = channels.service
        self.db = channels.db
        self.config = channels.config
        self.metrics = channels.metrics

    async def _allowed(self, group: GroupBinding, target: bytes) -> joins.JoinRow:
        """The owners' rule for the group now, and the target's admitted join request."""
        view = await self.channels.view(group.id)

        def read(conn: Conn) -> tuple[int, joins.JoinRow | None]:
            return joins.counts(conn, group.id).members, joins.by_member(conn, group.id, target)

        members, row = await self.db.transact(read)
        try:
            check_allowed(view.profile, members)
        except RemoteProtocolError as exc:
            self.metrics.inc("relay_direct_refusals_total", code=exc.code.value)
            raise
        if row is None or row.status is not JoinState.ADMITTED:
            raise RemoteProtocolError(
                ErrorCode.UNKNOWN_MEMBER, "that key is not an admitted member of the group"
            )
        return row

    async def member_card(self, group: GroupBinding, frame: MemberCardRequest) -> MemberCard:
        row = await self._allowed(group, frame.member)
        join = decode(row.request, Signed, limit=MAX_SIGNED_BODY * 4, what="stored join request")
        return MemberCard(join=join)

    async def invite(
        self, group: GroupBinding, member: bytes, frame: DirectInvite, session: bytes
    ) -> DirectInviteResult:
        """``member`` is the key the connection subscribed with: only it may send from here;
        ``session`` is the connection's challenge."""
        if not crypto.same_secret(frame.request.signer, member):
            raise RemoteProtocolError(
                ErrorCode.BAD_SIGNATURE, "a direct invitation must be signed by the subscribed member's key"
            )
        now = self.service.now()
        verified = verify_direct_invitation(
            frame.request,
            relay_fingerprint=self.service.identity.fingerprint,
            channel=group.channel,
            address_id=group.address_id,
            session=session,
            now=now,
            max_age=self.service.policy.policy.invitation_max_age,
        )
        target = verified.invitation.to
        await self._allowed(group, target)
        feed = self.channels.fanout.feed_of(group.id, target)
        if feed is not None and feed.push_control(
            prepared_message(encode(DirectInviteDelivery(request=frame.request)))
        ):
            self.metrics.inc("relay_direct_invitations_total", outcome="delivered")
            return DirectInviteResult(status="delivered")
        stored = encode(frame.request)
        limit = self.config.inbox_max
        kept = await self.db.transact(
            lambda conn: store.inbox_add(conn, group.id, target, stored, now, limit)
        )
        if not kept:
            self.metrics.inc("relay_bounds_hit_total", bound="direct_inbox")
            self.metrics.inc("relay_direct_refusals_total", code=ErrorCode.INBOX_FULL.value)
            log.warning("bound.hit", bound="direct_inbox", group=group.id, limit=limit)
            raise RemoteProtocolError(
                ErrorCode.INBOX_FULL, f"the member's inbox holds its maximum of {limit} invitations"
            )
        self.metrics.inc("relay_direct_invitations_total", outcome="stored")
        return DirectInviteResult(status="stored")
