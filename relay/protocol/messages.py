"""Wire types: every frame, and every signed body, as an immutable msgspec Struct.

A frame is one MessagePack map with a ``type`` tag.  Signed content travels as
:class:`Signed` — the exact ``body`` bytes that were signed, the signer's key and
the signature — so that nobody ever re-encodes what was signed.  Verifiers decode
``body`` first (with a size limit), make every check that costs nothing, and
check the signature last, so that a request that fails a cheap check costs no
signature.  Field constraints (lengths, ranges) are declared here and enforced
by msgspec while decoding (``bad_type``), except the key and signature lengths of
a :class:`Signed`, which are ``bad_signature``.  docs/protocol.md has a field table
for every struct here, and tests/test_protocol_doc.py holds the two together.  No
I/O, no policy: those live in the modules that use these types.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from relay.protocol.errors import ErrorCode, RemoteProtocolError

# Version 2 bound every per-request signed body to its connection (``session``); a version 1
# client is told ``unsupported_version`` at ``hello`` rather than failing on its first request.
PROTOCOL_VERSION = 2

Key = Annotated[bytes, Meta(min_length=32, max_length=32)]
Digest = Annotated[bytes, Meta(min_length=32, max_length=32)]
Id16 = Annotated[bytes, Meta(min_length=16, max_length=16)]
Nonce = Annotated[bytes, Meta(min_length=32, max_length=32)]
# A connection's challenge (``RelayCard.challenge``), named in every per-request signed body.
SessionId = Annotated[bytes, Meta(min_length=32, max_length=32)]
Timestamp = Annotated[int, Meta(ge=0, le=2**40)]
ShortText = Annotated[str, Meta(max_length=4096)]
Address = Annotated[str, Meta(max_length=512)]


ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64


class Signed(Struct, frozen=True):
    """Bytes as signed: ``sig`` is ``signer``'s Ed25519 signature over a label and ``body``.

    ``signer`` and ``sig`` are plain ``bytes`` to msgspec, and their lengths are checked here,
    as soon as a ``Signed`` is decoded: a key or signature of the wrong length inside an
    otherwise well-formed envelope is ``bad_signature``, like any other signature that cannot
    verify, and is refused before any other check (a length constraint on the field would
    make it ``bad_type``, and only where the field is decoded).
    """

    body: bytes
    signer: bytes
    sig: bytes

    def __post_init__(self) -> None:
        # Not a ValueError: msgspec would turn that into a ValidationError (``bad_type``).
        if len(self.signer) != ED25519_KEY_BYTES:
            raise RemoteProtocolError(
                ErrorCode.BAD_SIGNATURE,
                f"the signer key is {len(self.signer)} bytes; an Ed25519 key is {ED25519_KEY_BYTES}",
            )
        if len(self.sig) != ED25519_SIGNATURE_BYTES:
            raise RemoteProtocolError(
                ErrorCode.BAD_SIGNATURE,
                f"the signature is {len(self.sig)} bytes; an Ed25519 signature is {ED25519_SIGNATURE_BYTES}",
            )


# --- signed bodies ---------------------------------------------------------


class OwnerCert(Struct, frozen=True):
    """The root key (or an already authorised owner) authorises ``owner_key`` for ``channel``."""

    channel: Digest
    owner_key: Key
    issued_at: Timestamp


class Profile(Struct, frozen=True):
    """The channel's owner-signed profile; ``relays`` is the delegate section."""

    channel: Digest
    root_key: Key
    version: Annotated[int, Meta(ge=1, le=2**53)]
    kind: Annotated[str, Meta(max_length=32)]
    name: ShortText
    description: ShortText
    owners: Annotated[list[Signed], Meta(max_length=256)]
    relays: Annotated[list[Address], Meta(max_length=64)]
    updated_at: Timestamp
    direct_messages: bool = False
    # Admission rules the owners sign, so that no relay can change them: "auto" admits at
    # once, "approval" asks the owners; ``max_members`` 0 means no limit of the owners' own.
    admission: Annotated[str, Meta(max_length=16)] = "auto"
    max_members: Annotated[int, Meta(ge=0, le=2**40)] = 0
    # Direct-message invitations pass only while the channel has fewer members than this
    # (0: no threshold); ignored unless ``direct_messages`` is set.
    direct_messages_max_members: Annotated[int, Meta(ge=0, le=2**40)] = 0
    # Member messages (docs/protocol.md, "Groups: member messages"): in a ``group`` every
    # certified member posts; in a ``channel`` only with ``comments``, and only as a reply to
    # an owner event.  The limits are the owners' own; each relay also applies its floor.
    comments: bool = False
    max_message_bytes: Annotated[int, Meta(ge=0, le=2**20)] = 0  # 0: the relay's limit
    messages_per_minute: Annotated[int, Meta(ge=0, le=2**20)] = 0  # per member; 0: the relay's
    slow_mode: Annotated[int, Meta(ge=0, le=86400)] = 0  # seconds between one member's messages


class Invitation(Struct, frozen=True):
    """An owner asks ``relay`` to serve ``channel`` through the service group.

    ``session`` is the challenge of the connection it is sent on: a captured invitation is
    refused on any other connection (``wrong_session``).
    """

    relay: Digest
    channel: Digest
    service_group: Id16
    session: SessionId
    profile: Signed
    created_at: Timestamp
    nonce: Id16


class AddressGrant(Struct, frozen=True):
    """The relay's signed promise: this is the channel's address on this relay."""

    relay: Digest
    channel: Digest
    service_group: Id16
    address: Address
    issued_at: Timestamp


class RelayCard(Struct, frozen=True):
    """What a relay proves about itself on every connection (signed over the client's nonce).

    ``challenge`` is 32 random bytes the relay picked for this connection: every request the
    client signs on it names the challenge as its ``session``.
    """

    relay_key: Key
    seal_keys: dict[str, Annotated[bytes, Meta(max_length=2048)]]
    nonce: Nonce
    challenge: Nonce
    time: Timestamp
    software: ShortText


class OwnerRequest(Struct, frozen=True, omit_defaults=True):
    """An owner's signed command in the service group (read the log, approve a member, ...).

    ``subject`` names the member a decision is about; ``note`` is the owners' reason for a
    refusal.  Both are left out of the encoding when empty.  ``session``: the connection's
    challenge, so a captured command cannot be replayed on another connection.
    """

    relay: Digest
    channel: Digest
    service_group: Id16
    session: SessionId
    action: Annotated[str, Meta(max_length=32)]
    created_at: Timestamp
    nonce: Id16
    subject: Annotated[bytes, Meta(max_length=32)] = b""
    note: Annotated[str, Meta(max_length=500)] = ""


class MemberProfile(Struct, frozen=True):
    """What a member tells the owners about themselves when asking to join.

    ``seal_key`` is the member's X25519 public key for sealed direct-message invitations
    (empty: the member takes none).  Signed inside the join request, so a relay that hands
    it to another member cannot swap it.
    """

    name: ShortText
    about: ShortText = ""
    seal_key: Annotated[bytes, Meta(max_length=32)] = b""


class JoinRequest(Struct, frozen=True):
    """A member (the signer) asks ``relay`` to admit them to ``channel``.

    It names the relay, the group address and the connection's challenge (``session``), so it
    cannot be replayed at another relay, group or connection; ``member_profile`` is an encoded
    :class:`MemberProfile`, kept as bytes so that the relay stores exactly what was signed.
    """

    relay: Digest
    channel: Digest
    address: Annotated[str, Meta(max_length=64)]
    session: SessionId
    member_profile: Annotated[bytes, Meta(max_length=65536)]
    created_at: Timestamp
    nonce: Id16


class MemberRequest(Struct, frozen=True):
    """A member's signed request about itself: ``action`` "status" (its join request) or
    "subscribe", bound like a join request to relay, group address and connection."""

    relay: Digest
    channel: Digest
    address: Annotated[str, Meta(max_length=64)]
    session: SessionId
    action: Annotated[str, Meta(max_length=32)]
    created_at: Timestamp
    nonce: Id16


class OwnerEvent(Struct, frozen=True):
    """One owner event (a post) in the channel's hash chain.

    ``prev`` is the id (:func:`relay.protocol.events.event_id`) of event ``seq - 1``, and 32
    zero bytes for ``seq`` 1: an event commits to the whole history before it, so a relay
    cannot alter, reorder or drop one without the chain showing it.
    """

    channel: Digest
    seq: Annotated[int, Meta(ge=1, le=2**53)]
    prev: Digest
    created_at: Timestamp
    content_type: Annotated[str, Meta(min_length=1, max_length=64)]
    body: bytes


class Head(Struct, frozen=True):
    """A relay's signed statement of the newest event it holds for a channel.

    ``tag`` is the channel's discovery tag for this relay (:func:`relay.protocol.heads.tag`),
    never the channel id, so a head shown to one party says nothing another relay can match.
    ``seq`` 0 with an all-zero ``id`` is an empty channel.
    """

    relay: Digest
    tag: Digest
    seq: Annotated[int, Meta(ge=0, le=2**53)]
    id: Digest
    time: Timestamp
    # The group's timeline of member messages at this relay (0 and zeros: empty, or a channel
    # without comments): its last place and the running hash up to it.
    timeline_pos: Annotated[int, Meta(ge=0, le=2**53)] = 0
    timeline_hash: Digest = bytes(32)


class DirectInvitation(Struct, frozen=True):
    """A member (the signer) asks the relay to pass a sealed invitation to member ``to``.

    ``sealed`` is HPKE-sealed to ``to``'s ``MemberProfile.seal_key``: the relay passes it on
    and cannot read it.  Bound to relay, channel, group address and connection like a join
    request.
    """

    relay: Digest
    channel: Digest
    address: Annotated[str, Meta(max_length=64)]
    session: SessionId
    to: Key
    suite: Annotated[str, Meta(max_length=64)]
    sealed: Annotated[bytes, Meta(max_length=16384)]
    created_at: Timestamp
    nonce: Id16


class MemberCert(Struct, frozen=True):
    """An owner certifies that ``member`` is a member of ``channel`` (label ``member-cert``).

    Readers accept a member message only from a key certified this way, by an owner of the
    channel's verified profile, so a relay can neither invent a member nor swap one's key.
    ``name`` is the name the owners certified (from the member's own join request).  ``role``
    "moderator" lets the member remove messages and ban members; a newer cert for the same
    member (a later ``issued_at``) replaces an older one, which is how the role is withdrawn.
    """

    channel: Digest
    member: Key
    name: ShortText
    role: Annotated[str, Meta(max_length=16)]  # "member" | "moderator"
    issued_at: Timestamp


class MemberMessage(Struct, frozen=True):
    """One message of a certified member (the signer), in the member's own hash chain.

    ``seq`` counts the author's messages in this group from 1, and ``prev`` is the id
    (:func:`relay.protocol.timeline.message_id`, over the body and its signer) of the author's
    message ``seq - 1`` (32 zero bytes for 1): a relay that alters, reorders or leaves out one
    of a member's messages breaks the chain.  ``reply_to`` is the id of an owner event or
    member message (empty: none); in a channel with comments it must name an owner event.
    """

    channel: Digest
    seq: Annotated[int, Meta(ge=1, le=2**53)]
    prev: Digest
    created_at: Timestamp
    content_type: Annotated[str, Meta(min_length=1, max_length=64)]
    body: bytes
    reply_to: Annotated[bytes, Meta(max_length=32)] = b""


class Moderation(Struct, frozen=True):
    """An owner or moderator (the signer) acts on a message or a member (label ``moderation``).

    ``action``: "remove_message" (``subject``: the message id; every relay stops serving its
    content), "remove_member" (``subject``: the member key; its cert no longer counts, a newer
    cert admits it again) or "ban" (the same, and the relays refuse its join requests too).
    """

    channel: Digest
    action: Annotated[str, Meta(max_length=32)]
    subject: Digest
    reason: ShortText
    issued_at: Timestamp
    nonce: Id16


class TimelineItem(Struct, frozen=True):
    """One place in a group's timeline at one relay: what the relay assigned, and the entry.

    ``pos`` counts from 1 per group and relay; ``after`` is the owner event sequence number
    the entry was placed after (0: before any); ``kind`` is "cert", "message" or
    "moderation"; ``id`` the entry's id.  ``entry`` is the signed entry exactly as its
    signer sent it, or None for a removed message (its id stays, so the timeline's hash
    still checks).  The relay signs the running hash of its timeline in its head.
    """

    pos: Annotated[int, Meta(ge=1, le=2**53)]
    after: Annotated[int, Meta(ge=0, le=2**53)]
    kind: Annotated[str, Meta(max_length=16)]
    id: Digest
    entry: Signed | None = None


class DirectInvitationContent(Struct, frozen=True):
    """What a sealed direct invitation holds: who asks, and where to reach them."""

    sender: Key
    contact: Address
    note: ShortText = ""


# --- frames ----------------------------------------------------------------


class Hello(Struct, frozen=True, tag="hello", tag_field="type"):
    version: int
    nonce: Nonce


class Welcome(Struct, frozen=True, tag="welcome", tag_field="type"):
    card: Signed


class Invite(Struct, frozen=True, tag="invite", tag_field="type"):
    suite: Annotated[str, Meta(max_length=64)]
    sealed: bytes


class InviteResult(Struct, frozen=True, tag="invite_result", tag_field="type"):
    status: str  # "accepted" | "pending_approval" | "refused"
    state: str
    grant: Signed | None = None
    code: str | None = None
    reason: str | None = None


class ProfileUpdate(Struct, frozen=True, tag="profile_update", tag_field="type"):
    profile: Signed


class ProfileResult(Struct, frozen=True, tag="profile_result", tag_field="type"):
    state: str
    version: int


class LogRequest(Struct, frozen=True, tag="log_request", tag_field="type"):
    request: Signed


class LogEntry(Struct, frozen=True):
    seq: int
    at: int
    event: str
    detail: str


class LogResult(Struct, frozen=True, tag="log_result", tag_field="type"):
    state: str
    entries: list[LogEntry]


class ProfileRequest(Struct, frozen=True, tag="profile_request", tag_field="type"):
    """A member asks a group address for the owner-signed profile it holds."""


class ProfileAnswer(Struct, frozen=True, tag="profile", tag_field="type"):
    profile: Signed
    state: str


class Join(Struct, frozen=True, tag="join", tag_field="type"):
    request: Signed  # a JoinRequest signed by the member key


class JoinStatus(Struct, frozen=True, tag="join_status", tag_field="type"):
    """Ask for the decision on one's join request; wait up to ``wait`` seconds for one."""

    request: Signed  # a MemberRequest signed by the member key
    wait: Annotated[float, Meta(ge=0, le=3600)] = 0.0


class JoinResult(Struct, frozen=True, tag="join_result", tag_field="type"):
    status: str  # "held" | "pending_approval" | "admitted" | "refused"
    code: str | None = None
    reason: str | None = None
    received_at: int | None = None
    decided_at: int | None = None


class OwnerCommand(Struct, frozen=True, tag="owner_command", tag_field="type"):
    """An owner command on the contact address: list pending members, decide, pause admission."""

    request: Signed  # an OwnerRequest signed by an owner key


class PendingMember(Struct, frozen=True):
    member: bytes  # the member's key: owners decide about it by this key
    name: str
    about: str
    received_at: int
    # The member's own signed join request: owners certify the name the member signed
    # (relay.protocol.membership.verify_member_card), not the one a relay lists.
    join: Signed | None = None


class OwnerCommandResult(Struct, frozen=True, tag="owner_result", tag_field="type"):
    state: str
    admission: str  # "open" | "suspended"
    members: int
    pending: list[PendingMember]
    detail: str = ""


class Post(Struct, frozen=True, tag="post", tag_field="type"):
    """An owner publishes one event on the group address."""

    event: Signed  # an OwnerEvent signed by an owner key


class PostResult(Struct, frozen=True, tag="post_result", tag_field="type"):
    status: str  # "stored" | "duplicate" (the same bytes again: a retry)
    seq: int
    id: bytes


class Subscribe(Struct, frozen=True, tag="subscribe", tag_field="type"):
    """An admitted member asks for history, then live events, on this connection.

    ``since``: the events after this sequence number; None: the relay's latest history.
    """

    request: Signed  # a MemberRequest with action "subscribe", signed by the member key
    since: Annotated[int, Meta(ge=0, le=2**53)] | None = None
    # The timeline places after this one (None: the relay's latest history of it).
    timeline_since: Annotated[int, Meta(ge=0, le=2**53)] | None = None


class MemberPost(Struct, frozen=True, tag="member_post", tag_field="type"):
    """A certified member publishes one message on the group address.

    ``cert``: the member's own cert, for a relay that has not seen it yet (certs travel with
    their members, so owners need not reach every relay).
    """

    message: Signed  # a MemberMessage signed by the member key
    cert: Signed | None = None  # a MemberCert signed by an owner


class MemberPostResult(Struct, frozen=True, tag="member_post_result", tag_field="type"):
    status: str  # "stored" | "duplicate" (the same bytes again: a retry)
    pos: int  # its place in this relay's timeline
    id: bytes


class Publish(Struct, frozen=True, tag="publish", tag_field="type"):
    """Hand the relay an owner-signed cert or an owner's or moderator's signed moderation."""

    entry: Signed  # a MemberCert or a Moderation
    kind: Annotated[str, Meta(max_length=16)]  # "cert" | "moderation"


class PublishResult(Struct, frozen=True, tag="publish_result", tag_field="type"):
    status: str  # "stored" | "duplicate"
    pos: int
    id: bytes


class TimelineFrame(Struct, frozen=True, tag="timeline", tag_field="type"):
    """One timeline place pushed to a subscribed member (history first, then live)."""

    item: TimelineItem


class Subscribed(Struct, frozen=True, tag="subscribed", tag_field="type"):
    """The answer to ``subscribe``; the ``event`` frames follow, oldest first.

    ``first_seq`` is the oldest event the relay still keeps (retention); ``head_seq`` the newest.
    """

    head_seq: int
    first_seq: int
    profile_version: int
    # The timeline (groups, and channels with comments): its last place, and the oldest kept.
    timeline_pos: int = 0
    timeline_first: int = 0


class EventFrame(Struct, frozen=True, tag="event", tag_field="type"):
    """One event pushed to a subscribed member: the owner's signed bytes, untouched."""

    event: Signed


class HeadRequest(Struct, frozen=True, tag="head_request", tag_field="type"):
    """Ask a group address for the relay's signed head (and the event at the head)."""


class HeadAnswer(Struct, frozen=True, tag="head", tag_field="type"):
    head: Signed  # a Head signed by the relay's identity key
    event: Signed | None = None  # the event at head.seq, so an owner can chain onto it


class Discover(Struct, frozen=True, tag="discover", tag_field="type"):
    """Which of these channel tags does the relay serve?  Asked on the contact address."""

    tags: Annotated[list[Digest], Meta(max_length=32)]


class Discovered(Struct, frozen=True, tag="discovered", tag_field="type"):
    heads: list[Signed]  # a signed Head per recognised tag; unknown tags are left out


class MemberCardRequest(Struct, frozen=True, tag="member_card_request", tag_field="type"):
    """A subscribed member asks for another member's own signed join request (its seal key)."""

    member: Key


class MemberCard(Struct, frozen=True, tag="member_card", tag_field="type"):
    join: Signed  # the member's JoinRequest, exactly as that member signed it


class DirectInvite(Struct, frozen=True, tag="direct_invite", tag_field="type"):
    request: Signed  # a DirectInvitation signed by the sending member


class DirectInviteResult(Struct, frozen=True, tag="direct_invite_result", tag_field="type"):
    status: str  # "delivered" (pushed to the member now) | "stored" (kept until it subscribes)


class DirectInviteDelivery(Struct, frozen=True, tag="direct_invitation", tag_field="type"):
    """A sealed invitation pushed to the member it is for."""

    request: Signed


class Error(Struct, frozen=True, tag="error", tag_field="type"):
    code: str
    reason: str


ClientFrame = (
    Hello
    | Invite
    | ProfileUpdate
    | LogRequest
    | ProfileRequest
    | Join
    | JoinStatus
    | OwnerCommand
    | Post
    | Subscribe
    | HeadRequest
    | Discover
    | MemberCardRequest
    | DirectInvite
    | MemberPost
    | Publish
)
RelayFrame = (
    Welcome
    | InviteResult
    | ProfileResult
    | LogResult
    | ProfileAnswer
    | JoinResult
    | OwnerCommandResult
    | PostResult
    | Subscribed
    | EventFrame
    | HeadAnswer
    | Discovered
    | MemberCard
    | DirectInviteResult
    | DirectInviteDelivery
    | MemberPostResult
    | PublishResult
    | TimelineFrame
    | Error
)
