"""Members' signed requests: the join request and the status question, made and verified.

A join request is signed by the member's key (one per channel, so a member's
channels cannot be linked) and names the relay, the channel, the group address
and the connection's challenge: a request captured at one relay or group is
refused at any other (``wrong_relay``, ``channel_mismatch``), on any other
connection (``wrong_session``), and a stale one everywhere (``request_stale``).
Every check that costs nothing comes before the signature.  The member profile
travels as bytes inside the signed body; the relay stores the signed bytes
exactly.  Pure code: the clock is a parameter and policy limits are arguments.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519
from msgspec import Struct

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.invitation import check_fresh, check_session
from relay.protocol.messages import (
    Digest,
    DirectInvitation,
    JoinRequest,
    MemberProfile,
    MemberRequest,
    Signed,
)
from relay.protocol.profile import MAX_SIGNED_BODY

ACTION_STATUS = "status"
ACTION_SUBSCRIBE = "subscribe"


@dataclass(frozen=True, slots=True)
class VerifiedJoin:
    """A join request whose signature, binding and freshness checked out."""

    request: JoinRequest
    signed: Signed
    profile: MemberProfile

    @property
    def member_key(self) -> bytes:
        return self.signed.signer


def make_join_request(
    member_key: ed25519.Ed25519PrivateKey,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    profile: MemberProfile,
    session: bytes,
    now: int,
) -> Signed:
    """A join request for the connection whose challenge is ``session``."""
    body = encode(
        JoinRequest(
            relay=relay_fingerprint,
            channel=channel,
            address=address_id,
            session=session,
            member_profile=encode(profile),
            created_at=now,
            nonce=secrets.token_bytes(16),
        )
    )
    return crypto.signed(member_key, crypto.Label.JOIN_REQUEST, body)


def verify_join_request(
    signed: Signed,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    session: bytes,
    now: int,
    max_age: int,
    max_profile_bytes: int,
) -> VerifiedJoin:
    """What the signed body binds (relay, channel, address, session), its age and the member
    profile's size and form, then the signature."""
    request = decode(signed.body, JoinRequest, limit=MAX_SIGNED_BODY * 2, what="join request")
    check_binding(request, relay_fingerprint, channel, address_id, session)
    check_fresh(request.created_at, now, max_age, "join request", ErrorCode.REQUEST_STALE)
    if len(request.member_profile) > max_profile_bytes:
        raise RemoteProtocolError(
            ErrorCode.MEMBER_PROFILE_TOO_LARGE,
            f"the member profile has {len(request.member_profile)} bytes; the limit is {max_profile_bytes}",
        )
    profile = decode(request.member_profile, MemberProfile, limit=max_profile_bytes, what="member profile")
    crypto.verify(signed.signer, crypto.Label.JOIN_REQUEST, signed.body, signed.sig)
    return VerifiedJoin(request=request, signed=signed, profile=profile)


def make_member_request(
    member_key: ed25519.Ed25519PrivateKey,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    session: bytes,
    now: int,
    action: str = ACTION_STATUS,
) -> Signed:
    """A status (or subscribe) request for the connection whose challenge is ``session``."""
    body = encode(
        MemberRequest(
            relay=relay_fingerprint,
            channel=channel,
            address=address_id,
            session=session,
            action=action,
            created_at=now,
            nonce=secrets.token_bytes(16),
        )
    )
    return crypto.signed(member_key, crypto.Label.MEMBER_REQUEST, body)


def verify_member_request(
    signed: Signed,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    session: bytes,
    now: int,
    max_age: int,
    action: str = ACTION_STATUS,
) -> MemberRequest:
    """A member's signed request about itself (its status, or a subscription).

    The action is signed, so a request captured for one purpose cannot be replayed as another;
    the session too, so it cannot be replayed on another connection (a captured ``subscribe``
    would otherwise take the member's inbox of direct invitations).  Cheap checks first, then
    the signature.
    """
    request = decode(signed.body, MemberRequest, limit=MAX_SIGNED_BODY, what="member request")
    if request.action != action:
        raise RemoteProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE, f"the request was signed for {request.action!r}, not {action!r}"
        )
    check_binding(request, relay_fingerprint, channel, address_id, session)
    check_fresh(request.created_at, now, max_age, f"{action} request", ErrorCode.REQUEST_STALE)
    crypto.verify(signed.signer, crypto.Label.MEMBER_REQUEST, signed.body, signed.sig)
    return request


def check_binding(
    request: JoinRequest | MemberRequest | DirectInvitation,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    session: bytes,
) -> None:
    """Relay, channel, group address and connection: what a member's request is bound to."""
    if not crypto.same_secret(request.relay, relay_fingerprint):
        raise RemoteProtocolError(ErrorCode.WRONG_RELAY, "the request names another relay")
    if request.channel != channel or not crypto.same_secret(request.address.encode(), address_id.encode()):
        raise RemoteProtocolError(
            ErrorCode.CHANNEL_MISMATCH, "the request is for another channel or group address"
        )
    check_session(request.session, session, "request")


class _JoinView(Struct, frozen=True):
    """The fields of a join request that its later readers need, and nothing else.

    A join request stays stored (and is handed out as a member card) for as long as the
    membership lasts; read through this view, one signed under protocol version 1, before
    ``session`` existed, still decodes.
    """

    channel: Digest
    member_profile: bytes


@dataclass(frozen=True, slots=True)
class StoredJoin:
    """A join request as the relay stored it (or another member relays it): the signed bytes
    and the member profile inside."""

    signed: Signed
    channel: bytes
    profile: MemberProfile

    @property
    def member_key(self) -> bytes:
        return self.signed.signer


def stored_join(blob: bytes) -> StoredJoin:
    """A join request as the relay stored it after verifying it on arrival.

    Decoded again, not verified again: a row that no longer decodes (a damaged database) is a
    ``malformed`` error, which the queue worker counts as a failed attempt.
    """
    signed = decode(blob, Signed, limit=MAX_SIGNED_BODY * 4, what="stored join request")
    return _read_join(signed, "stored join request")


def _read_join(signed: Signed, what: str) -> StoredJoin:
    view = decode(signed.body, _JoinView, limit=MAX_SIGNED_BODY * 2, what=what)
    profile = decode(view.member_profile, MemberProfile, limit=MAX_SIGNED_BODY, what="member profile")
    return StoredJoin(signed=signed, channel=view.channel, profile=profile)


def verify_member_card(join: Signed, *, member: bytes, channel: bytes) -> StoredJoin:
    """Member side: another member's own join request, as a relay handed it out.

    It must be signed by ``member`` (``bad_signature``), for ``channel``
    (``channel_mismatch``), and verify; the session it was bound to is not ours to check.
    """
    if not crypto.same_secret(join.signer, member):
        raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "the card is signed by another member")
    card = _read_join(join, "member card")
    if not crypto.same_secret(card.channel, channel):
        raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the member card is for another channel")
    crypto.verify(join.signer, crypto.Label.JOIN_REQUEST, join.body, join.sig)
    return card
