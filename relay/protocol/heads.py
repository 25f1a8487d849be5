"""Relay-signed heads and discovery tags: how members catch a fork shown only to them.

A channel's discovery secret is derived (HKDF) from the channel id, which only
holders of the channel link know.  A relay's *tag* for a channel is the HMAC of
the relay's fingerprint under that secret: each relay sees its own tag, so tags
sent to one relay cannot be matched at another, and a relay recognises a tag
only if it serves the channel.  A relay signs its head (tag, sequence, id,
time, and its timeline's position and hash) with its identity key; two signed
heads with different ids at one sequence are proof of a fork.  Pure: the clock is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import ChainHead
from relay.protocol.messages import Head, Signed

DISCOVERY_INFO = b"chat-relay/v1/discovery"
MAX_HEAD_BYTES = 512


def discovery_secret(channel: bytes) -> bytes:
    """The channel's discovery key: known to whoever holds the channel link."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DISCOVERY_INFO).derive(channel)


def tag(channel: bytes, relay_fingerprint: bytes) -> bytes:
    """The channel's tag at one relay."""
    return hmac.new(discovery_secret(channel), relay_fingerprint, hashlib.sha256).digest()


def make_head(
    identity: ed25519.Ed25519PrivateKey,
    *,
    relay_fingerprint: bytes,
    channel: bytes,
    head: ChainHead,
    now: int,
    timeline_pos: int = 0,
    timeline_hash: bytes = bytes(32),
) -> Signed:
    """The relay's signed head: the owner chain's newest event and, for a group with member
    posts, its timeline's last place and running hash (0 and zeros: none)."""
    body = Head(
        relay=relay_fingerprint,
        tag=tag(channel, relay_fingerprint),
        seq=head.seq,
        id=head.id,
        time=now,
        timeline_pos=timeline_pos,
        timeline_hash=timeline_hash,
    )
    return crypto.signed(identity, crypto.Label.HEAD, encode(body))


@dataclass(frozen=True, slots=True)
class VerifiedHead:
    head: Head
    signed: Signed


def verify_head(signed: Signed, *, relay_key: bytes, channel: bytes) -> VerifiedHead:
    """Client side: signed by the pinned relay key, for this relay and this channel's tag
    (checked before the signature)."""
    if not crypto.same_secret(signed.signer, relay_key):
        raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "the head is not signed by this relay")
    head = decode(signed.body, Head, limit=MAX_HEAD_BYTES, what="head")
    fingerprint = crypto.fingerprint(relay_key)
    if not crypto.same_secret(head.relay, fingerprint):
        raise RemoteProtocolError(ErrorCode.WRONG_RELAY, "the head names another relay")
    if not crypto.same_secret(head.tag, tag(channel, fingerprint)):
        raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the head is for another channel")
    crypto.verify(relay_key, crypto.Label.HEAD, signed.body, signed.sig)
    return VerifiedHead(head=head, signed=signed)
