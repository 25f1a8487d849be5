"""The first exchange on every connection: the relay proves it holds its identity key.

The client sends a fresh 32-byte nonce in ``hello``; the relay answers with a
:class:`RelayCard` signed by its identity key that echoes the nonce and lists its
HPKE public keys.  A client that pinned the relay's fingerprint (from the
contact or group address) therefore knows both that it talks to the right relay
and which sealing keys are really that relay's.  The card also carries the
relay's own random ``challenge`` for the connection, which every request the
client signs on it names as its ``session`` (so no signed request can be
replayed on another connection).  Pure code: the challenge is a parameter.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.messages import RelayCard, Welcome

MAX_CARD = 8 * 1024


def make_welcome(
    identity: ed25519.Ed25519PrivateKey,
    seal_keys: dict[str, bytes],
    nonce: bytes,
    challenge: bytes,
    now: int,
    software: str,
) -> Welcome:
    """The card for one connection: ``nonce`` is the client's, ``challenge`` the relay's."""
    body = encode(
        RelayCard(
            relay_key=crypto.public_bytes(identity),
            seal_keys=seal_keys,
            nonce=nonce,
            challenge=challenge,
            time=now,
            software=software,
        )
    )
    return Welcome(card=crypto.signed(identity, crypto.Label.WELCOME, body))


def verify_welcome(welcome: Welcome, *, fingerprint: bytes, nonce: bytes) -> RelayCard:
    """Client side: the card must be signed by the key whose hash is the pinned fingerprint.

    The cheap checks (pinned key, decoding, the echoed nonce) come before the signature.
    """
    signer = welcome.card.signer
    if not crypto.same_secret(crypto.fingerprint(signer), fingerprint):
        raise RemoteProtocolError(
            ErrorCode.WRONG_RELAY, "the relay's identity key does not match the pinned fingerprint"
        )
    card = decode(welcome.card.body, RelayCard, limit=MAX_CARD, what="relay card")
    if card.relay_key != signer or not crypto.same_secret(card.nonce, nonce):
        raise RemoteProtocolError(
            ErrorCode.BAD_SIGNATURE, "the relay card does not answer this connection's nonce"
        )
    crypto.verify(signer, crypto.Label.WELCOME, welcome.card.body, welcome.card.sig)
    return card
