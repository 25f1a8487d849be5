"""Wire types: every frame, and every signed body, as an immutable msgspec Struct.

A frame is one MessagePack map with a ``type`` tag.  Signed content travels as
:class:`Signed` — the exact ``body`` bytes that were signed, the signer's key and
the signature — so that nobody ever re-encodes what was signed: verifiers check
the signature over ``body`` first and only then decode it.  Field constraints
(lengths, ranges) are declared here and enforced by msgspec while decoding.
No I/O, no policy: those live in the modules that use these types.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

PROTOCOL_VERSION = 1

Key = Annotated[bytes, Meta(min_length=32, max_length=32)]
Digest = Annotated[bytes, Meta(min_length=32, max_length=32)]
Signature = Annotated[bytes, Meta(min_length=64, max_length=64)]
Id16 = Annotated[bytes, Meta(min_length=16, max_length=16)]
Nonce = Annotated[bytes, Meta(min_length=32, max_length=32)]
Timestamp = Annotated[int, Meta(ge=0, le=2**40)]
ShortText = Annotated[str, Meta(max_length=4096)]
Address = Annotated[str, Meta(max_length=512)]


class Signed(Struct, frozen=True):
    """Bytes as signed: ``sig`` is ``signer``'s Ed25519 signature over a label and ``body``."""

    body: bytes
    signer: Key
    sig: Signature


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


class Invitation(Struct, frozen=True):
    """An owner asks ``relay`` to serve ``channel`` through the service group."""

    relay: Digest
    channel: Digest
    service_group: Id16
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
    """What a relay proves about itself on every connection (signed over the client's nonce)."""

    relay_key: Key
    seal_keys: dict[str, Annotated[bytes, Meta(max_length=2048)]]
    nonce: Nonce
    time: Timestamp
    software: ShortText


class OwnerRequest(Struct, frozen=True):
    """An owner's signed command in the service group (read the log, ...)."""

    relay: Digest
    channel: Digest
    service_group: Id16
    action: Annotated[str, Meta(max_length=32)]
    created_at: Timestamp
    nonce: Id16


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


class Error(Struct, frozen=True, tag="error", tag_field="type"):
    code: str
    reason: str


ClientFrame = Hello | Invite | ProfileUpdate | LogRequest
RelayFrame = Welcome | InviteResult | ProfileResult | LogResult | Error
