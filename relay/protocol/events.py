"""Owner events: made, verified, and checked against the chain they extend.

An event is an :class:`OwnerEvent` signed by an owner key (label ``event``).
Its id is the SHA-256 of its signed body, so an event is named by what the
owner signed, and each event's ``prev`` is the id of the one before: the chain
of ids is what lets a member see a relay that alters, reorders or drops events.

The relay and the member apply the same rules, with one difference written in
:func:`check_append`: the relay also refuses timestamps out of line with its own
clock.  Pure: the caller passes ``now`` and the owner keys in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.messages import OwnerEvent, Signed

GENESIS = bytes(32)  # ``prev`` of event 1
ID_PREFIX = b"chat-relay/v1/event-id\x00"
MAX_EVENT_BODY = 64 * 1024  # the default; the relay's [events] max_body_bytes may lower it
EVENT_OVERHEAD = 512  # the signed envelope and fields around the body, generously
CLOCK_SKEW = 120  # seconds an owner's clock may run ahead of the relay's
CONTENT_TEXT = "text/plain"


def event_id(body: bytes) -> bytes:
    """The id of an event: the SHA-256 of exactly the bytes its owner signed."""
    return hashlib.sha256(ID_PREFIX + body).digest()


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    """An event whose signature and signer checked out; ``signed`` holds the exact bytes."""

    event: OwnerEvent
    signed: Signed
    id: bytes

    @property
    def seq(self) -> int:
        return self.event.seq

    @property
    def prev(self) -> bytes:
        return self.event.prev

    @property
    def created_at(self) -> int:
        return self.event.created_at


class ChainLink(Protocol):
    """One verified entry of a hash chain: an owner event, or a member's message."""

    @property
    def seq(self) -> int: ...
    @property
    def id(self) -> bytes: ...
    @property
    def prev(self) -> bytes: ...
    @property
    def created_at(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest event of a chain as far as one party knows it (seq 0: empty)."""

    seq: int = 0
    id: bytes = GENESIS
    created_at: int = 0

    @classmethod
    def of(cls, link: ChainLink) -> Self:
        return cls(link.seq, link.id, link.created_at)

    def following(self, now: int) -> tuple[int, bytes, int]:
        """``seq``, ``prev`` and ``created_at`` of the entry signed after this head: its time
        never goes back past the head's."""
        return self.seq + 1, self.id, max(now, self.created_at)


def make_event(
    owner_key: ed25519.Ed25519PrivateKey,
    *,
    channel: bytes,
    after: ChainHead,
    body: bytes,
    now: int,
    content_type: str = CONTENT_TEXT,
) -> Signed:
    """Sign the event that follows ``after``; its time never goes back past ``after``'s."""
    seq, prev, created_at = after.following(now)
    event = OwnerEvent(
        channel=channel,
        seq=seq,
        prev=prev,
        created_at=created_at,
        content_type=content_type,
        body=body,
    )
    return crypto.signed(owner_key, crypto.Label.EVENT, encode(event))


def verify_event(
    signed: Signed, *, channel: bytes, owners: frozenset[bytes], max_body: int = MAX_EVENT_BODY
) -> VerifiedEvent:
    """Signer, size, channel and the chain's first link, then the signature: everything an
    event proves on its own.

    The signer is checked first, so that an event signed by a key the root never
    authorised is named as such (``unauthorised_owner``), not as a bad signature; every
    check that costs nothing comes before the signature.
    """
    if signed.signer not in owners:
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORISED_OWNER, "the event is signed by a key that is not an owner of the channel"
        )
    event = decode_sized(
        signed,
        OwnerEvent,
        max_body=max_body,
        overhead=EVENT_OVERHEAD,
        code=ErrorCode.EVENT_TOO_LARGE,
        noun="event",
        what="event",
    )
    if not crypto.same_secret(event.channel, channel):
        raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the event is for another channel")
    check_first_link(event.seq, event.prev, "event")
    crypto.verify(signed.signer, crypto.Label.EVENT, signed.body, signed.sig)
    return VerifiedEvent(event=event, signed=signed, id=event_id(signed.body))


class _WithBody(Protocol):
    @property
    def body(self) -> bytes: ...


B = TypeVar("B", bound=_WithBody)


def decode_sized(
    signed: Signed, type_: type[B], *, max_body: int, overhead: int, code: ErrorCode, noun: str, what: str
) -> B:
    """Decode a signed entry whose ``body`` may hold ``max_body`` bytes: the whole is measured
    first (``max_body`` + ``overhead``), so that nothing larger is decoded, then the body.
    ``code`` refuses either; ``noun`` names the entry in the reasons, ``what`` in decoding's."""
    if len(signed.body) > max_body + overhead:
        raise RemoteProtocolError(
            code, f"the {noun} is {len(signed.body)} bytes; the limit is {max_body} for its body"
        )
    entry = decode(signed.body, type_, limit=max_body + overhead, what=what)
    if len(entry.body) > max_body:
        raise RemoteProtocolError(
            code, f"the {noun} body is {len(entry.body)} bytes; the limit is {max_body}"
        )
    return entry


def check_first_link(seq: int, prev: bytes, what: str) -> None:
    """Only entry 1 of a chain follows the empty chain (``chain_broken``); ``what`` names it."""
    if (seq == 1) != (prev == GENESIS):
        raise RemoteProtocolError(ErrorCode.CHAIN_BROKEN, f"only {what} 1 may follow the empty chain")


def stored_event(signed: Signed) -> VerifiedEvent:
    """An event as the relay stored it after verifying it: decoded again, not verified again."""
    event = decode(signed.body, OwnerEvent, limit=MAX_EVENT_BODY + EVENT_OVERHEAD, what="stored event")
    return VerifiedEvent(event=event, signed=signed, id=event_id(signed.body))


class Append(Enum):
    """What to do with a verified event, given the head and what sits at its sequence number."""

    NEW = "stored"
    DUPLICATE = "duplicate"  # the same bytes again: a retry, answered as before


def check_append(
    head: ChainHead,
    event: VerifiedEvent,
    *,
    existing_id: bytes | None,
    now: int | None = None,
    max_backdate: int = 0,
) -> Append:
    """The chain rules for one more event.

    ``existing_id`` is the id already held at ``event.seq`` (None if none).  A different
    event at a taken sequence number is ``equivocation`` (the caller keeps both as proof);
    a jump ahead is ``event_gap``; a ``prev`` that is not the head's id is ``chain_broken``;
    a time before the previous event's is ``bad_timestamp``.  With ``now`` (the relay's
    clock), an event dated more than ``CLOCK_SKEW`` ahead, or more than ``max_backdate``
    seconds behind, is ``bad_timestamp`` too.
    """
    return check_link(head, event, existing_id=existing_id, now=now, max_backdate=max_backdate)


def check_link(
    head: ChainHead,
    link: ChainLink,
    *,
    existing_id: bytes | None,
    now: int | None = None,
    max_backdate: int = 0,
    what: str = "event",
) -> Append:
    """:func:`check_append`'s rules on any hash-chained entry: owner events, and each
    member's own chain of messages (:func:`relay.protocol.timeline.check_author_append`);
    ``what`` names the entry in the reasons."""
    seq, id, prev, created_at = link.seq, link.id, link.prev, link.created_at
    if existing_id is not None:
        if crypto.same_secret(existing_id, id):
            return Append.DUPLICATE
        raise RemoteProtocolError(
            ErrorCode.EQUIVOCATION,
            f"{what} {seq} already exists with different content; both are kept as proof",
        )
    if seq <= head.seq:
        # Only reachable when the entry at that sequence was pruned by retention.
        raise RemoteProtocolError(
            ErrorCode.EVENT_GAP, f"{what} {seq} is older than what this relay keeps (head {head.seq})"
        )
    if seq > head.seq + 1:
        raise RemoteProtocolError(
            ErrorCode.EVENT_GAP,
            f"{what} {seq} does not follow the head {head.seq}; send {head.seq + 1} first",
        )
    if prev != head.id:
        raise RemoteProtocolError(
            ErrorCode.CHAIN_BROKEN,
            f"{what} {seq} does not chain onto {what} {head.seq} (prev hash differs)",
        )
    if created_at < head.created_at:
        raise RemoteProtocolError(ErrorCode.BAD_TIMESTAMP, f"{what} {seq} is dated before {what} {head.seq}")
    if now is not None:
        if created_at > now + CLOCK_SKEW:
            raise RemoteProtocolError(
                ErrorCode.BAD_TIMESTAMP, f"the {what} is dated {created_at - now} s in the future"
            )
        if now - created_at > max_backdate:
            raise RemoteProtocolError(
                ErrorCode.BAD_TIMESTAMP,
                f"the {what} is dated {now - created_at} s in the past; the limit is {max_backdate} s",
            )
    return Append.NEW
