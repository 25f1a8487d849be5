"""Service-group invitations (owner -> relay) and the relay's signed address grant.

An invitation is signed by an owner key, carries the signed profile, and is
sealed with HPKE to one relay: ``info`` names the purpose and the relay's
fingerprint, and the signed body names the relay again, so an invitation can be
opened and accepted only by the relay it was made for.  It also names the
connection's challenge (``session``), like the owners' requests here, so that a
captured one is refused on any other connection.  The relay answers with an
:class:`AddressGrant` signed by its identity key.  Every verifier makes its cheap
checks (binding, session, freshness, structure) before any signature.  Pure
code: the clock and the limits are parameters.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.messages import AddressGrant, Invitation, OwnerRequest, Signed
from relay.protocol.profile import (
    MAX_OWNER_CERTS,
    MAX_SIGNED_BODY,
    VerifiedProfile,
    check_profile,
)

SEAL_PURPOSE = b"invitation"
CLOCK_SKEW = 120  # seconds a peer's clock may run ahead of ours


@dataclass(frozen=True, slots=True)
class VerifiedInvitation:
    invitation: Invitation
    signed: Signed
    profile: VerifiedProfile


def make_invitation(
    *,
    owner_key: ed25519.Ed25519PrivateKey,
    relay_fingerprint: bytes,
    service_group: bytes,
    profile: Signed,
    channel: bytes,
    session: bytes,
    now: int,
) -> bytes:
    """The plaintext to seal: an owner-signed invitation, encoded.

    ``session`` is the challenge of the connection it will be sent on (``RelayCard.challenge``).
    """
    body = encode(
        Invitation(
            relay=relay_fingerprint,
            channel=channel,
            service_group=service_group,
            session=session,
            profile=profile,
            created_at=now,
            nonce=secrets.token_bytes(16),
        )
    )
    return encode(crypto.signed(owner_key, crypto.Label.INVITATION, body))


def check_fresh(
    created_at: int, now: int, max_age: int, what: str, code: ErrorCode = ErrorCode.INVITATION_STALE
) -> None:
    """A signed request older than ``max_age`` (or from the future) is refused: a captured
    request cannot be replayed later."""
    if created_at > now + CLOCK_SKEW:
        raise RemoteProtocolError(code, f"the {what} is dated {created_at - now} s in the future")
    if now - created_at > max_age:
        raise RemoteProtocolError(code, f"the {what} is {now - created_at} s old; the limit is {max_age} s")


def check_session(signed_session: bytes, session: bytes, what: str) -> None:
    """A per-request signed body must name this connection's challenge (``wrong_session``).

    The challenge is the relay's secret for the connection until the client uses it; compared
    in constant time all the same.
    """
    if not crypto.same_secret(signed_session, session):
        raise RemoteProtocolError(
            ErrorCode.WRONG_SESSION,
            f"the {what} was signed for another connection; sign it with this connection's challenge",
        )


def verify_invitation(
    plaintext: bytes,
    *,
    relay_fingerprint: bytes,
    session: bytes,
    now: int,
    max_age: int,
    max_owners: int = MAX_OWNER_CERTS,
) -> VerifiedInvitation:
    """Verify an opened invitation, the cheap checks before any signature.

    Decode the ``Signed`` and the ``Invitation``; the relay binding, the connection's
    ``session`` and freshness; decode the profile and check its structure (at most
    ``max_owners`` certs, no duplicate, a chain that hangs together); the profile's channel;
    that the invitation's signer is one of the owners the profile claims.  Only then the
    signatures: the invitation's, each cert's and the profile's, once each.
    """
    signed = decode(plaintext, Signed, limit=MAX_SIGNED_BODY * 2, what="sealed invitation")
    invitation = decode(signed.body, Invitation, limit=MAX_SIGNED_BODY * 2, what="invitation")
    if not crypto.same_secret(invitation.relay, relay_fingerprint):
        raise RemoteProtocolError(ErrorCode.WRONG_RELAY, "the invitation names another relay")
    check_session(invitation.session, session, "invitation")
    check_fresh(invitation.created_at, now, max_age, "invitation")
    checked = check_profile(invitation.profile, max_owners=max_owners)
    if checked.profile.channel != invitation.channel:
        raise RemoteProtocolError(
            ErrorCode.CHANNEL_MISMATCH, "the invitation and its profile name different channels"
        )
    if signed.signer not in checked.owners:
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORISED_OWNER,
            "the invitation is signed by a key the channel's root never authorised",
        )
    crypto.verify(signed.signer, crypto.Label.INVITATION, signed.body, signed.sig)
    profile = checked.verify()
    return VerifiedInvitation(invitation=invitation, signed=signed, profile=profile)


def make_grant(
    identity: ed25519.Ed25519PrivateKey, invitation: Invitation, address: str, issued_at: int
) -> Signed:
    body = encode(
        AddressGrant(
            relay=invitation.relay,
            channel=invitation.channel,
            service_group=invitation.service_group,
            address=address,
            issued_at=issued_at,
        )
    )
    return crypto.signed(identity, crypto.Label.ADDRESS_GRANT, body)


def verify_grant(signed: Signed, *, relay_key: bytes, channel: bytes, service_group: bytes) -> AddressGrant:
    """Client side: the grant must come from the pinned relay key, for this channel.

    The binding is checked before the signature.
    """
    if not crypto.same_secret(signed.signer, relay_key):
        raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "the grant is not signed by this relay")
    grant = decode(signed.body, AddressGrant, limit=MAX_SIGNED_BODY, what="address grant")
    if grant.channel != channel or grant.service_group != service_group:
        raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the grant is for another channel")
    if grant.relay != crypto.fingerprint(relay_key):
        raise RemoteProtocolError(ErrorCode.WRONG_RELAY, "the grant names another relay")
    crypto.verify(relay_key, crypto.Label.ADDRESS_GRANT, signed.body, signed.sig)
    return grant


ACTION_READ_LOG = "read_log"
ACTION_LIST_PENDING = "list_pending"
ACTION_APPROVE_MEMBER = "approve_member"
ACTION_REFUSE_MEMBER = "refuse_member"
ACTION_SUSPEND_ADMISSION = "suspend_admission"
ACTION_RESUME_ADMISSION = "resume_admission"
# Groups: admitted members whose key has no current owner cert (``pending`` lists them).
ACTION_LIST_UNCERTIFIED = "list_uncertified"
OWNER_COMMANDS = frozenset(
    {
        ACTION_LIST_PENDING,
        ACTION_LIST_UNCERTIFIED,
        ACTION_APPROVE_MEMBER,
        ACTION_REFUSE_MEMBER,
        ACTION_SUSPEND_ADMISSION,
        ACTION_RESUME_ADMISSION,
    }
)


def make_owner_request(
    owner_key: ed25519.Ed25519PrivateKey,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    service_group: bytes,
    action: str,
    session: bytes,
    now: int,
    subject: bytes = b"",
    note: str = "",
) -> Signed:
    """An owner command for the connection whose challenge is ``session``."""
    body = encode(
        OwnerRequest(
            relay=relay_fingerprint,
            channel=channel,
            service_group=service_group,
            session=session,
            action=action,
            created_at=now,
            nonce=secrets.token_bytes(16),
            subject=subject,
            note=note,
        )
    )
    return crypto.signed(owner_key, crypto.Label.OWNER_REQUEST, body)


def verify_owner_request(
    signed: Signed,
    *,
    actions: Collection[str],
    relay_fingerprint: bytes,
    session: bytes,
    now: int,
    max_age: int,
) -> OwnerRequest:
    """Action, relay binding, session and freshness, then the signature; the caller checks the
    signer is an owner.

    The action is signed so that a request captured for one command cannot be replayed as
    another: it must be one of ``actions``, those the frame it came in may carry.  The session
    is signed so that it cannot be replayed at all: a captured ``suspend_admission`` is
    refused on every other connection (``wrong_session``).
    """
    request = decode(signed.body, OwnerRequest, limit=MAX_SIGNED_BODY, what="owner request")
    if request.action not in actions:
        raise RemoteProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE,
            f"the request was signed for {request.action!r}, not {' or '.join(sorted(actions))!r}",
        )
    if not crypto.same_secret(request.relay, relay_fingerprint):
        raise RemoteProtocolError(ErrorCode.WRONG_RELAY, "the request names another relay")
    check_session(request.session, session, "owner request")
    check_fresh(request.created_at, now, max_age, "owner request")
    crypto.verify(signed.signer, crypto.Label.OWNER_REQUEST, signed.body, signed.sig)
    return request
