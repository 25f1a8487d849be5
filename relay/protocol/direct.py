"""Direct-message invitations between members: sealed by the sender, passed on by the relay.

Nothing is set up between members automatically (seed 002).  A member who wants
a direct conversation seals a :class:`DirectInvitationContent` to the other
member's X25519 ``seal_key`` (from that member's own signed join request) and
signs a :class:`DirectInvitation` around it, bound to the relay, the group
address and the sender's connection (``session``).  The relay checks the
binding, then the signature, and passes it on only if the owners' signed
profile allows direct messages for a channel of this size
(:func:`check_allowed`); it never sees the content.  Pure: the clock and the
member count are parameters.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from msgspec import Meta, Struct

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.invitation import check_fresh
from relay.protocol.membership import check_binding
from relay.protocol.messages import (
    Digest,
    DirectInvitation,
    DirectInvitationContent,
    Key,
    Profile,
    Signed,
)
from relay.protocol.profile import MAX_SIGNED_BODY

SEAL_PURPOSE = b"direct-invitation"
SUITE = crypto.SUITE_X25519.name


@dataclass(frozen=True, slots=True)
class VerifiedDirectInvitation:
    invitation: DirectInvitation
    signed: Signed

    @property
    def sender(self) -> bytes:
        return self.signed.signer


def _info(channel: bytes, to: bytes) -> bytes:
    # Bound to the channel and the recipient: a sealed payload cannot be re-sent to another.
    return crypto.seal_info(SEAL_PURPOSE, crypto.digest(channel + to))


def make_direct_invitation(
    sender_key: ed25519.Ed25519PrivateKey,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    to: bytes,
    to_seal_key: bytes,
    contact: str,
    note: str,
    session: bytes,
    now: int,
) -> Signed:
    """A sealed invitation to ``to``, sent on the connection whose challenge is ``session``."""
    content = DirectInvitationContent(sender=crypto.public_bytes(sender_key), contact=contact, note=note)
    sealed = crypto.seal(SUITE, to_seal_key, encode(content), _info(channel, to))
    body = encode(
        DirectInvitation(
            relay=relay_fingerprint,
            channel=channel,
            address=address_id,
            session=session,
            to=to,
            suite=SUITE,
            sealed=sealed,
            created_at=now,
            nonce=secrets.token_bytes(16),
        )
    )
    return crypto.signed(sender_key, crypto.Label.DIRECT_INVITATION, body)


def verify_direct_invitation(
    signed: Signed,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    session: bytes,
    now: int,
    max_age: int,
) -> VerifiedDirectInvitation:
    """Relay side: binding (relay, channel, address, session), freshness and the recipient,
    then the signature.  The relay cannot open ``sealed``."""
    invitation = decode(signed.body, DirectInvitation, limit=MAX_SIGNED_BODY, what="direct invitation")
    check_binding(invitation, relay_fingerprint, channel, address_id, session)
    check_fresh(invitation.created_at, now, max_age, "direct invitation", ErrorCode.REQUEST_STALE)
    if crypto.same_secret(invitation.to, signed.signer):
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, "a member cannot invite itself")
    crypto.verify(signed.signer, crypto.Label.DIRECT_INVITATION, signed.body, signed.sig)
    return VerifiedDirectInvitation(invitation=invitation, signed=signed)


def check_allowed(profile: Profile, members: int) -> None:
    """The owners' rule, from their signed profile: are direct invitations passed on now?"""
    if not profile.direct_messages:
        raise RemoteProtocolError(
            ErrorCode.DIRECT_MESSAGES_OFF, "the owners do not allow direct messages in this channel"
        )
    limit = profile.direct_messages_max_members
    if limit and members >= limit:
        raise RemoteProtocolError(
            ErrorCode.DIRECT_MESSAGES_OVER_THRESHOLD,
            f"the owners allow direct messages only below {limit} members; the channel has {members}",
        )


class _Delivered(Struct, frozen=True):
    """What the recipient reads of a direct invitation: the session it was sent on is the
    sender's business, so one kept in an inbox since protocol version 1 still opens."""

    channel: Digest
    to: Key
    sealed: Annotated[bytes, Meta(max_length=16384)]


def open_direct_invitation(
    signed: Signed, *, seal_key: x25519.X25519PrivateKey, member_key: bytes, channel: bytes
) -> DirectInvitationContent:
    """Recipient side: addressed to us, signed by the sender it names, and opens under our key.

    The address is checked before the signature, the signature before the (costlier) opening.
    """
    invitation = decode(signed.body, _Delivered, limit=MAX_SIGNED_BODY, what="direct invitation")
    if invitation.to != member_key or invitation.channel != channel:
        raise RemoteProtocolError(
            ErrorCode.CHANNEL_MISMATCH, "the invitation is for another member or channel"
        )
    crypto.verify(signed.signer, crypto.Label.DIRECT_INVITATION, signed.body, signed.sig)
    try:
        plain = crypto.SUITE_X25519.suite().decrypt(
            invitation.sealed, seal_key, info=_info(channel, member_key)
        )
    except (InvalidTag, ValueError):
        raise RemoteProtocolError(ErrorCode.SEAL_FAILED, "cannot open the invitation") from None
    content = decode(plain, DirectInvitationContent, limit=MAX_SIGNED_BODY, what="invitation content")
    if content.sender != signed.signer:
        raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "the sealed sender is not the signer")
    return content
