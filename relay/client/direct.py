"""Direct-message invitations between members: send one, sealed; received ones arrive on a read.

Nothing is set up between members automatically (seed 002): a member who wants
a direct conversation asks a relay for the other member's card (that member's
own signed join request, whose profile carries its X25519 seal key), checks the
signature and the channel, seals the invitation to that key and sends it
signed.  The relay passes it on only if the owners' profile allows direct
messages; the recipient sees it on its next read (relay.client.reader).  One
relay that takes it is enough: the invitation is sent once.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import trio

from relay.client.connection import RelaySession, open_session
from relay.client.errors import RelayError, RelayProtocolError, translated
from relay.client.member import MemberState
from relay.client.progress import waiting
from relay.protocol import crypto
from relay.protocol.addresses import RelayAddress, parse_address
from relay.protocol.direct import make_direct_invitation
from relay.protocol.encoding import b64d
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.membership import ACTION_SUBSCRIBE, make_member_request, verify_member_card
from relay.protocol.messages import (
    DirectInvite,
    DirectInviteDelivery,
    DirectInviteResult,
    Error,
    EventFrame,
    MemberCard,
    MemberCardRequest,
    ProfileAnswer,
    RelayFrame,
    Subscribe,
    Subscribed,
)

T = TypeVar("T")
PUSHES = (EventFrame, ProfileAnswer, DirectInviteDelivery)


async def invite(
    state: MemberState, member: str, *, contact: str, note: str = "", timeout: float = 15.0
) -> dict[str, Any]:
    """Send ``member`` (its member key, b64) a sealed invitation through the first relay that takes it."""
    with translated(from_relay=False):
        to = b64d(member, length=32, what="member id")
    errors: list[RelayError] = []
    for entry in state.relays:
        if entry.status != "admitted":
            continue
        try:
            address = parse_address(entry.address)
            async with open_session(address, timeout=timeout) as session:
                with translated(where=session.where):
                    status = await _invite_through(session, state, address, to, contact, note)
            return {"relay": entry.address, "delivery": status}
        except RelayError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    raise RelayError("no relay has admitted this member yet", code="not_a_member")


async def _invite_through(
    session: RelaySession, state: MemberState, address: RelayAddress, to: bytes, contact: str, note: str
) -> str:
    assert address.address_id is not None
    channel = state.parsed_link.channel
    request = make_member_request(
        state.member_key,
        relay_fingerprint=address.fingerprint,
        channel=channel,
        address_id=address.address_id,
        session=session.challenge,
        now=int(time.time()),
        action=ACTION_SUBSCRIBE,
    )
    # Only a subscribed member may ask for cards and send invitations; the history that
    # follows is not read here (``relay member read`` does that).
    await session.send(Subscribe(request=request, since=None))
    await _answer(session, Subscribed)
    await session.send(MemberCardRequest(member=to))
    card = await _answer(session, MemberCard)
    seal_key = _seal_key(card, to, channel)
    signed = make_direct_invitation(
        state.member_key,
        relay_fingerprint=address.fingerprint,
        channel=channel,
        address_id=address.address_id,
        to=to,
        to_seal_key=seal_key,
        contact=contact,
        note=note,
        session=session.challenge,
        now=int(time.time()),
    )
    await session.send(DirectInvite(request=signed))
    return (await _answer(session, DirectInviteResult)).status


def _seal_key(card: MemberCard, to: bytes, channel: bytes) -> bytes:
    """The target's seal key, from its own signed join request: the relay cannot swap it."""
    if not crypto.same_secret(card.join.signer, to):
        raise RelayProtocolError("the relay sent another member's card", code="bad_signature")
    try:
        profile = verify_member_card(card.join, member=to, channel=channel).profile
    except ProtocolError as exc:
        if exc.code is ErrorCode.CHANNEL_MISMATCH:
            raise RelayProtocolError("the member card is for another channel", code=exc.code.value) from None
        raise RelayProtocolError(
            f"the member card does not verify: {exc.reason}", code=exc.code.value
        ) from None
    if len(profile.seal_key) != crypto.X25519_KEY_LEN:
        raise RelayError("that member takes no direct invitations (no seal key)", code="no_seal_key")
    return profile.seal_key


async def _answer(session: RelaySession, kind: type[T]) -> T:
    """The answer of ``kind``, skipping the feed's pushes; an ``error`` frame is raised."""
    deadline = trio.current_time() + session.timeout
    with waiting(f"an answer from {session.where}"):
        while True:
            frame: RelayFrame = await session.receive(timeout=max(0.0, deadline - trio.current_time()))
            if isinstance(frame, kind):
                return frame
            if isinstance(frame, Error):
                raise RelayError(frame.reason, code=frame.code)
            if not isinstance(frame, PUSHES):
                raise RelayProtocolError(f"expected {kind.__name__}, got {type(frame).__name__}")
