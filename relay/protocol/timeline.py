"""Member messages, member certs and moderation: ids, the timeline hash, and the rules of each.

A group that allows member posts (``kind == "group"``, or a channel whose profile sets
``comments``) has at each relay a *timeline*: places 1, 2, 3 ... that the relay assigns,
each holding one signed entry — a :class:`MemberCert` an owner signed, a
:class:`MemberMessage` a certified member signed, or a :class:`Moderation` an owner or a
moderator signed.  The relay chains its places into a running hash and signs the newest one
in its head.  Every rule here is shared by the relay (which refuses what breaks one) and by
the readers (which report a relay that served it, :mod:`relay.protocol.timeline_reader`):
docs/protocol.md, "Groups: member messages".

Pure: no trio, no sqlite, no clock reads (``now`` is a parameter); the :class:`Roster` and
:class:`Pacer` are plain bounded in-memory state their caller owns.  :class:`PostingRules`
and :class:`Pacer` live in :mod:`relay.protocol.pace` and are re-exported here; the reader's
rules are :mod:`relay.protocol.timeline_reader`'s.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import Append, ChainHead, check_first_link, check_link, decode_sized
from relay.protocol.messages import MemberCert, MemberMessage, Moderation, Signed
from relay.protocol.pace import Pacer as Pacer
from relay.protocol.pace import PostingRules as PostingRules

KIND_CERT = "cert"
KIND_MESSAGE = "message"
KIND_MODERATION = "moderation"
ENTRY_KINDS = (KIND_CERT, KIND_MESSAGE, KIND_MODERATION)

ROLE_MEMBER = "member"
ROLE_MODERATOR = "moderator"
ROLES = (ROLE_MEMBER, ROLE_MODERATOR)

ACTION_REMOVE_MESSAGE = "remove_message"
ACTION_REMOVE_MEMBER = "remove_member"
ACTION_BAN = "ban"
MODERATION_ACTIONS = (ACTION_REMOVE_MESSAGE, ACTION_REMOVE_MEMBER, ACTION_BAN)

ID_PREFIX = b"chat-relay/v1/"
TIMELINE_PREFIX = b"chat-relay/v1/timeline\x00"
TIMELINE_GENESIS = bytes(32)  # th_0: the hash of the empty timeline
MAX_MESSAGE_BODY = 64 * 1024  # the wire's ceiling; a profile and the relay's floor set lower ones
MESSAGE_OVERHEAD = 512  # the fields around a message's body, generously
MAX_CERT_BYTES = 8 * 1024  # a cert: two digests, a name (ShortText) and a role
MAX_MODERATION_BYTES = 8 * 1024
CONTENT_TEXT = "text/plain"


def entry_id(kind: str, body: bytes, signer: bytes) -> bytes:
    """The id of a timeline entry: SHA-256 over its kind, its signer and exactly the bytes
    signed.

    The signer is in it because a member message's body does not name its author: two
    members who sign the same first message in the same second sign the same bytes, and
    their messages must still be two.
    """
    if kind not in ENTRY_KINDS:
        raise RemoteProtocolError(
            ErrorCode.BAD_TYPE, f"a timeline entry is one of {', '.join(ENTRY_KINDS)}, not {kind!r}"
        )
    return hashlib.sha256(ID_PREFIX + kind.encode() + b"-id\x00" + signer + body).digest()


def message_id(body: bytes, signer: bytes) -> bytes:
    """The id of a member message (what ``prev``, ``reply_to`` and a removal name)."""
    return entry_id(KIND_MESSAGE, body, signer)


def signed_id(kind: str, signed: Signed) -> bytes:
    """:func:`entry_id` of a signed entry."""
    return entry_id(kind, signed.body, signed.signer)


def timeline_hash(prev: bytes, pos: int, after: int, kind: str, id: bytes) -> bytes:
    """The running hash of a timeline after the place ``pos`` (``prev``: the hash before it)."""
    return hashlib.sha256(
        TIMELINE_PREFIX
        + prev
        + pos.to_bytes(8, "big")
        + after.to_bytes(8, "big")
        + kind.encode()
        + b"\x00"
        + id
    ).digest()


# --- certs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedCert:
    """A member cert whose signer is an owner and whose signature checked out."""

    cert: MemberCert
    signed: Signed
    id: bytes

    @property
    def member(self) -> bytes:
        return self.cert.member


def make_cert(
    owner_key: ed25519.Ed25519PrivateKey,
    *,
    channel: bytes,
    member: bytes,
    name: str,
    role: str = ROLE_MEMBER,
    now: int,
) -> Signed:
    """An owner certifies ``member`` (its key for this group) under ``name`` and ``role``."""
    cert = MemberCert(channel=channel, member=member, name=name, role=role, issued_at=now)
    return crypto.signed(owner_key, crypto.Label.MEMBER_CERT, encode(cert))


def check_cert(signed: Signed, *, channel: bytes, owners: frozenset[bytes]) -> MemberCert:
    """Everything :func:`verify_cert` checks except the signature."""
    if signed.signer not in owners:
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORISED_OWNER, "the member cert is signed by a key that is not an owner"
        )
    cert = decode(signed.body, MemberCert, limit=MAX_CERT_BYTES, what="member cert")
    if not crypto.same_secret(cert.channel, channel):
        raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the member cert is for another channel")
    if cert.role not in ROLES:
        raise RemoteProtocolError(
            ErrorCode.BAD_TYPE, f"a member's role is one of {', '.join(ROLES)}, not {cert.role!r}"
        )
    return cert


def verify_cert(signed: Signed, *, channel: bytes, owners: frozenset[bytes]) -> VerifiedCert:
    """Signer (``unauthorised_owner``), decoding, channel (``channel_mismatch``), role
    (``bad_type``), then the signature (``bad_signature``)."""
    cert = check_cert(signed, channel=channel, owners=owners)
    crypto.verify(signed.signer, crypto.Label.MEMBER_CERT, signed.body, signed.sig)
    return VerifiedCert(cert=cert, signed=signed, id=signed_id(KIND_CERT, signed))


def stored_cert(signed: Signed) -> VerifiedCert:
    """A cert as the relay stored it after verifying it: decoded again, not verified again."""
    cert = decode(signed.body, MemberCert, limit=MAX_CERT_BYTES, what="stored member cert")
    return VerifiedCert(cert=cert, signed=signed, id=signed_id(KIND_CERT, signed))


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedMessage:
    """A member message whose signature checked out; ``author`` is its signer."""

    message: MemberMessage
    signed: Signed
    id: bytes

    @property
    def author(self) -> bytes:
        return self.signed.signer

    @property
    def seq(self) -> int:
        return self.message.seq

    @property
    def prev(self) -> bytes:
        return self.message.prev

    @property
    def created_at(self) -> int:
        return self.message.created_at


@dataclass(frozen=True, slots=True)
class AuthorHead(ChainHead):
    """A member's newest message in one group as far as one party knows it (seq 0: none yet):
    a member's messages chain as an owner's events do."""


def make_message(
    member_key: ed25519.Ed25519PrivateKey,
    *,
    channel: bytes,
    after: AuthorHead,
    body: bytes,
    now: int,
    content_type: str = CONTENT_TEXT,
    reply_to: bytes = b"",
) -> Signed:
    """Sign the member's message that follows ``after``; its time never goes back past ``after``'s."""
    seq, prev, created_at = after.following(now)
    message = MemberMessage(
        channel=channel,
        seq=seq,
        prev=prev,
        created_at=created_at,
        content_type=content_type,
        body=body,
        reply_to=reply_to,
    )
    return crypto.signed(member_key, crypto.Label.MEMBER_MESSAGE, encode(message))


def check_message(signed: Signed, *, channel: bytes, max_body: int = MAX_MESSAGE_BODY) -> MemberMessage:
    """Everything :func:`verify_message` checks except the signature."""
    message = decode_sized(
        signed,
        MemberMessage,
        max_body=max_body,
        overhead=MESSAGE_OVERHEAD,
        code=ErrorCode.MESSAGE_TOO_LARGE,
        noun="message",
        what="member message",
    )
    if not crypto.same_secret(message.channel, channel):
        raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the message is for another channel")
    check_first_link(message.seq, message.prev, "a member's message")
    if len(message.reply_to) not in (0, 32):
        raise RemoteProtocolError(ErrorCode.BAD_REPLY, "reply_to is an id (32 bytes) or empty")
    return message


def verify_message(signed: Signed, *, channel: bytes, max_body: int = MAX_MESSAGE_BODY) -> VerifiedMessage:
    """Size (``message_too_large``), decoding, channel (``channel_mismatch``), the first link
    (``chain_broken``), ``reply_to``'s length (``bad_reply``), then the signature.

    Whether the signer is a certified member is the :class:`Roster`'s question, not this one's.
    """
    message = check_message(signed, channel=channel, max_body=max_body)
    crypto.verify(signed.signer, crypto.Label.MEMBER_MESSAGE, signed.body, signed.sig)
    return VerifiedMessage(message=message, signed=signed, id=signed_id(KIND_MESSAGE, signed))


def stored_message(signed: Signed) -> VerifiedMessage:
    """A message as the relay stored it after verifying it: decoded again, not verified again."""
    message = decode(
        signed.body, MemberMessage, limit=MAX_MESSAGE_BODY + MESSAGE_OVERHEAD, what="stored member message"
    )
    return VerifiedMessage(message=message, signed=signed, id=signed_id(KIND_MESSAGE, signed))


def check_author_append(
    head: AuthorHead,
    msg: VerifiedMessage,
    *,
    existing_id: bytes | None,
    now: int | None = None,
    max_backdate: int = 0,
) -> Append:
    """The member's own chain: the rules and codes of :func:`relay.protocol.events.check_append`
    (``equivocation``, ``event_gap``, ``chain_broken``, ``bad_timestamp``), on the author's
    head and the id already held at ``msg.seq`` for this author (None if none)."""
    return check_link(head, msg, existing_id=existing_id, now=now, max_backdate=max_backdate, what="message")


# --- moderation --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedModeration:
    """A moderation whose signer may act on its subject and whose signature checked out."""

    moderation: Moderation
    signed: Signed
    id: bytes

    @property
    def action(self) -> str:
        return self.moderation.action

    @property
    def subject(self) -> bytes:
        return self.moderation.subject


def make_moderation(
    key: ed25519.Ed25519PrivateKey,
    *,
    channel: bytes,
    action: str,
    subject: bytes,
    reason: str = "",
    now: int,
    nonce: bytes | None = None,
) -> Signed:
    """An owner or moderator acts on ``subject`` (a message id, or a member key)."""
    moderation = Moderation(
        channel=channel,
        action=action,
        subject=subject,
        reason=reason,
        issued_at=now,
        nonce=secrets.token_bytes(16) if nonce is None else nonce,
    )
    return crypto.signed(key, crypto.Label.MODERATION, encode(moderation))


def check_moderation(
    signed: Signed,
    *,
    channel: bytes,
    owners: frozenset[bytes],
    moderators: frozenset[bytes],
    author: bytes | None = None,
) -> Moderation:
    """Everything :func:`verify_moderation` checks except the signature."""
    by_owner = signed.signer in owners
    if not by_owner and signed.signer not in moderators:
        raise RemoteProtocolError(
            ErrorCode.NOT_A_MODERATOR, "the moderation is signed by a key that is neither owner nor moderator"
        )
    moderation = decode(signed.body, Moderation, limit=MAX_MODERATION_BYTES, what="moderation")
    if not crypto.same_secret(moderation.channel, channel):
        raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the moderation is for another channel")
    if moderation.action not in MODERATION_ACTIONS:
        raise RemoteProtocolError(
            ErrorCode.BAD_TYPE,
            f"a moderation's action is one of {', '.join(MODERATION_ACTIONS)}, not {moderation.action!r}",
        )
    if not by_owner:
        target = author if moderation.action == ACTION_REMOVE_MESSAGE else moderation.subject
        if target is not None and (target in owners or target in moderators):
            raise RemoteProtocolError(
                ErrorCode.NOT_A_MODERATOR, "only an owner acts on an owner's or a moderator's key or message"
            )
    return moderation


def verify_moderation(
    signed: Signed,
    *,
    channel: bytes,
    owners: frozenset[bytes],
    moderators: frozenset[bytes],
    author: bytes | None = None,
) -> VerifiedModeration:
    """The signer may moderate (an owner; or a moderator, but not against an owner's or a
    moderator's key, nor their message when its ``author`` is given: ``not_a_moderator``),
    decoding, channel, action (``bad_type``), then the signature."""
    moderation = check_moderation(
        signed, channel=channel, owners=owners, moderators=moderators, author=author
    )
    crypto.verify(signed.signer, crypto.Label.MODERATION, signed.body, signed.sig)
    return VerifiedModeration(moderation=moderation, signed=signed, id=signed_id(KIND_MODERATION, signed))


def stored_moderation(signed: Signed) -> VerifiedModeration:
    """A moderation as the relay stored it after verifying it: decoded again, not verified again."""
    moderation = decode(signed.body, Moderation, limit=MAX_MODERATION_BYTES, what="stored moderation")
    return VerifiedModeration(moderation=moderation, signed=signed, id=signed_id(KIND_MODERATION, signed))


# --- the roster: who may post, who moderates ---------------------------------------------


@dataclass(slots=True)
class RosterEntry:
    """What a group knows of one member key: its current cert (None once voided), and the
    newest removal or ban against it (0: none)."""

    member: bytes
    cert: VerifiedCert | None = None
    removed_at: int = 0  # certs issued at or before this are void
    banned_at: int = 0  # nonzero: every cert is void, whenever issued

    @property
    def role(self) -> str | None:
        return None if self.cert is None else self.cert.cert.role

    @property
    def name(self) -> str | None:
        return None if self.cert is None else self.cert.cert.name


@dataclass
class Roster:
    """The group's members as certs and moderations made them, in the order they were placed.

    The relay and each reader keep one (a reader: one per relay, since each relay orders its
    own timeline).  ``max_removed`` bounds the remembered removed message ids (oldest go
    first); the members themselves are bounded by the certs the owners signed.
    """

    max_removed: int = 65536
    _members: dict[bytes, RosterEntry] = field(default_factory=dict)
    _removed: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def entry(self, member: bytes) -> RosterEntry | None:
        return self._members.get(member)

    def put(self, entry: RosterEntry) -> None:
        """Load what a store kept of one member (the relay rebuilds only the rows it needs)."""
        self._members[entry.member] = entry

    def apply_cert(self, cert: VerifiedCert) -> Append:
        """Admit (or re-admit, or change the role of) ``cert.member``.

        The same cert again is ``DUPLICATE``; a cert issued at or before the member's current
        one, or at or before a removal, is ``superseded``; any cert of a banned key is
        ``banned``.
        """
        entry = self._members.get(cert.member)
        if entry is None:
            entry = self._members[cert.member] = RosterEntry(cert.member)
        if entry.cert is not None and crypto.same_secret(entry.cert.id, cert.id):
            return Append.DUPLICATE
        if entry.banned_at:
            raise RemoteProtocolError(ErrorCode.BANNED, "the member is banned: no cert admits it again")
        issued = cert.cert.issued_at
        if entry.cert is not None and issued <= entry.cert.cert.issued_at:
            raise RemoteProtocolError(
                ErrorCode.SUPERSEDED, "the member holds a cert issued at the same time or later"
            )
        if issued <= entry.removed_at:
            raise RemoteProtocolError(
                ErrorCode.SUPERSEDED, "the cert was issued before the member's removal, which voids it"
            )
        entry.cert = cert
        return Append.NEW

    def apply_moderation(self, moderation: VerifiedModeration) -> Append:
        """Remember a removed message, or void a member's certs (and, for a ban, for good).

        A removal is idempotent: the same one again (or an older one) is ``DUPLICATE``.
        """
        action, subject, issued = moderation.action, moderation.subject, moderation.moderation.issued_at
        if action == ACTION_REMOVE_MESSAGE:
            if subject in self._removed:
                return Append.DUPLICATE
            self._removed[subject] = None
            while len(self._removed) > self.max_removed:
                self._removed.popitem(last=False)
            return Append.NEW
        entry = self._members.get(subject)
        if entry is None:
            entry = self._members[subject] = RosterEntry(subject)
        if action == ACTION_BAN:
            if entry.banned_at:
                return Append.DUPLICATE
            entry.banned_at = max(issued, 1)
            entry.cert = None
            return Append.NEW
        if issued <= entry.removed_at:
            return Append.DUPLICATE
        entry.removed_at = issued
        if entry.cert is not None and entry.cert.cert.issued_at <= issued:
            entry.cert = None
        return Append.NEW

    def may_post(self, member: bytes) -> None:
        """Raise ``banned`` or ``not_certified`` unless ``member`` holds a current cert."""
        entry = self._members.get(member)
        if entry is not None and entry.banned_at:
            raise RemoteProtocolError(ErrorCode.BANNED, "the member is banned from this group")
        if entry is None or entry.cert is None:
            raise RemoteProtocolError(ErrorCode.NOT_CERTIFIED, "no current owner cert names this key")

    def moderators(self) -> frozenset[bytes]:
        return frozenset(m for m, e in self._members.items() if e.role == ROLE_MODERATOR)

    def removed(self, message_id: bytes) -> bool:
        return message_id in self._removed
