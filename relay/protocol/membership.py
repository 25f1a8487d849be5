"""Members' signed requests: the join request and the status question, made and verified.

A join request is signed by the member's key (one per channel, so a member's
channels cannot be linked) and names the relay, the channel and the group
address: a request captured at one relay or group is refused at any other
(``wrong_relay``, ``channel_mismatch``), and a stale one everywhere
(``request_stale``).  The member profile travels as bytes inside the signed
body; the relay stores the signed bytes exactly.  Pure code: the clock is a
parameter and policy limits are arguments.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.invitation import check_fresh
from relay.protocol.messages import DirectInvitation, JoinRequest, MemberProfile, MemberRequest, Signed
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
    now: int,
) -> Signed:
    body = encode(
        JoinRequest(
            relay=relay_fingerprint,
            channel=channel,
            address=address_id,
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
    now: int,
    max_age: int,
    max_profile_bytes: int,
) -> VerifiedJoin:
    """Signature first, then what the signed body binds: relay, channel, address, age, size."""
    crypto.verify(signed.signer, crypto.Label.JOIN_REQUEST, signed.body, signed.sig)
    request = decode(signed.body, JoinRequest, limit=MAX_SIGNED_BODY * 2, what="join request")
    check_binding(request, relay_fingerprint, channel, address_id)
    check_fresh(request.created_at, now, max_age, "join request", ErrorCode.REQUEST_STALE)
    if len(request.member_profile) > max_profile_bytes:
        raise RemoteProtocolError(
            ErrorCode.MEMBER_PROFILE_TOO_LARGE,
            f"the member profile has {len(request.member_profile)} bytes; the limit is {max_profile_bytes}",
        )
    profile = decode(request.member_profile, MemberProfile, limit=max_profile_bytes, what="member profile")
    return VerifiedJoin(request=request, signed=signed, profile=profile)


def make_member_request(
    member_key: ed25519.Ed25519PrivateKey,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
    now: int,
    action: str = ACTION_STATUS,
) -> Signed:
    body = encode(
        MemberRequest(
            relay=relay_fingerprint,
            channel=channel,
            address=address_id,
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
    now: int,
    max_age: int,
    action: str = ACTION_STATUS,
) -> MemberRequest:
    """A member's signed request about itself (its status, or a subscription).

    The action is signed, so a request captured for one purpose cannot be replayed as another.
    """
    crypto.verify(signed.signer, crypto.Label.MEMBER_REQUEST, signed.body, signed.sig)
    request = decode(signed.body, MemberRequest, limit=MAX_SIGNED_BODY, what="member request")
    if request.action != action:
        raise RemoteProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE, f"the request was signed for {request.action!r}, not {action!r}"
        )
    check_binding(request, relay_fingerprint, channel, address_id)
    check_fresh(request.created_at, now, max_age, f"{action} request", ErrorCode.REQUEST_STALE)
    return request


def check_binding(
    request: JoinRequest | MemberRequest | DirectInvitation,
    relay_fingerprint: bytes,
    channel: bytes,
    address_id: str,
) -> None:
    if not crypto.same_secret(request.relay, relay_fingerprint):
        raise RemoteProtocolError(ErrorCode.WRONG_RELAY, "the request names another relay")
    if request.channel != channel or not crypto.same_secret(request.address.encode(), address_id.encode()):
        raise RemoteProtocolError(
            ErrorCode.CHANNEL_MISMATCH, "the request is for another channel or group address"
        )


def stored_join(blob: bytes) -> VerifiedJoin:
    """A join request as the relay stored it after verifying it on arrival.

    Decoded again, not verified again: a row that no longer decodes (a damaged database) is a
    ``malformed`` error, which the queue worker counts as a failed attempt.
    """
    signed = decode(blob, Signed, limit=MAX_SIGNED_BODY * 4, what="stored join request")
    request = decode(signed.body, JoinRequest, limit=MAX_SIGNED_BODY * 2, what="stored join request")
    profile = decode(request.member_profile, MemberProfile, limit=MAX_SIGNED_BODY, what="member profile")
    return VerifiedJoin(request=request, signed=signed, profile=profile)
