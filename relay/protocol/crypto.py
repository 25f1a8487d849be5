"""Signatures, fingerprints and HPKE sealing: thin, typed wrappers over ``cryptography`` and libsodium.

Every signature is made over ``b"chat-relay/v1/" + label + b"\\x00" + body`` so
that bytes signed for one purpose can never be replayed as another.  No
home-made primitives live here, and nothing here does I/O.

Signatures are *checked* by libsodium (PyNaCl), not OpenSSL, for two reasons:
it refuses small-order public keys and signature points, which OpenSSL accepts
(the identity point "signs" every message), and it verifies in half the CPU
time, which is most of what a join costs the relay (``benchmarks/verify.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from relay.protocol.encoding import b64e
from relay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from relay.protocol.messages import Signed

SIGNATURE_PREFIX = b"chat-relay/v1/"
SEAL_INFO_PREFIX = b"chat-relay/v1/seal/"

ED25519_KEY_LEN = 32
ED25519_SIG_LEN = 64


class Label:
    """Domain-separation labels, one per kind of signed object."""

    OWNER_CERT = b"owner-cert"
    PROFILE = b"profile"
    INVITATION = b"invitation"
    ADDRESS_GRANT = b"address-grant"
    WELCOME = b"welcome"
    OWNER_REQUEST = b"owner-request"
    JOIN_REQUEST = b"join-request"
    MEMBER_REQUEST = b"member-request"
    EVENT = b"event"
    HEAD = b"head"
    DIRECT_INVITATION = b"direct-invitation"
    MEMBER_CERT = b"member-cert"
    MEMBER_MESSAGE = b"member-message"
    MODERATION = b"moderation"


def signing_input(label: bytes, body: bytes) -> bytes:
    return SIGNATURE_PREFIX + label + b"\x00" + body


def sign(key: ed25519.Ed25519PrivateKey, label: bytes, body: bytes) -> bytes:
    return key.sign(signing_input(label, body))


def signed(key: ed25519.Ed25519PrivateKey, label: bytes, body: bytes) -> Signed:
    """``body`` as it travels: the exact bytes, the signer's public key and the signature."""
    return Signed(body=body, signer=public_bytes(key), sig=sign(key, label, body))


_thread_rules = threading.local()


@contextmanager
def verify_forbidden(why: str) -> Iterator[None]:
    """While inside, any :func:`verify` on the calling thread is a bug, raised as ``internal``.

    The relay's database writer runs inside this: every group waits on that one thread, so
    a signature check there (about 42 us each, and a profile can hold a few dozen) would
    let one client's request slow every other.  Checks belong before the transaction.
    """
    _thread_rules.forbidden = why
    try:
        yield
    finally:
        _thread_rules.forbidden = None  # the thread goes back to a pool: leave it as found


def verify(public_key: bytes, label: bytes, body: bytes, signature: bytes) -> None:
    """Raise ``bad_signature`` unless ``signature`` is ``public_key``'s over ``body``."""
    forbidden = getattr(_thread_rules, "forbidden", None)
    if forbidden is not None:
        raise LocalProtocolError(
            ErrorCode.INTERNAL, f"signature check on a thread that forbids it: {forbidden}"
        )
    if len(public_key) != ED25519_KEY_LEN or len(signature) != ED25519_SIG_LEN:
        raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "signature or key has the wrong length")
    try:
        # libsodium's detached verify is not in PyNaCl's public bindings; ``open``
        # runs the same check on signature + message and costs one copy.
        crypto_sign_open(signature + signing_input(label, body), public_key)
    except BadSignatureError:
        raise RemoteProtocolError(
            ErrorCode.BAD_SIGNATURE, f"{label.decode()} signature does not verify"
        ) from None


def public_bytes(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def fingerprint(identity_key: bytes) -> bytes:
    """The relay's fingerprint: SHA-256 of its Ed25519 identity key."""
    return hashlib.sha256(identity_key).digest()


def channel_id(root_key: bytes) -> bytes:
    """A channel is named by the SHA-256 of its root public key."""
    return hashlib.sha256(root_key).digest()


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def same_secret(a: bytes, b: bytes) -> bool:
    """Constant-time equality for secrets and pinned fingerprints."""
    return hmac.compare_digest(a, b)


def short_key(key: bytes) -> str:
    """A key shortened for logs: never log a whole key."""
    return b64e(key)[:8]


# ---------------------------------------------------------------------------
# HPKE (RFC 9180)


@dataclass(frozen=True, slots=True)
class SealSuite:
    """One HPKE suite the relay offers, by its wire name."""

    name: str
    kem: hpke.KEM
    strength: int  # higher is stronger; the client picks the strongest shared suite

    def suite(self) -> hpke.Suite:
        return hpke.Suite(self.kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


SUITE_X25519 = SealSuite("x25519-sha256-chacha20poly1305", hpke.KEM.X25519, 1)
SUITE_HYBRID = SealSuite("mlkem768x25519-sha256-chacha20poly1305", hpke.KEM.MLKEM768_X25519, 2)
SUITES: dict[str, SealSuite] = {s.name: s for s in (SUITE_X25519, SUITE_HYBRID)}

X25519_KEY_LEN = 32
MLKEM768_PUBLIC_LEN = 1184
MLKEM768_SEED_LEN = 64


@dataclass(frozen=True, slots=True)
class SealKeys:
    """The relay's HPKE private keys: one X25519 key and one ML-KEM-768 seed.

    The hybrid suite uses the ML-KEM key together with the same X25519 key, so
    the relay keeps two secrets and offers two suites.
    """

    x25519_key: x25519.X25519PrivateKey
    mlkem_key: mlkem.MLKEM768PrivateKey

    @classmethod
    def generate(cls) -> SealKeys:
        return cls(x25519.X25519PrivateKey.generate(), mlkem.MLKEM768PrivateKey.generate())

    @classmethod
    def from_secrets(cls, x25519_secret: bytes, mlkem_seed: bytes) -> SealKeys:
        return cls(
            x25519.X25519PrivateKey.from_private_bytes(x25519_secret),
            mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed),
        )

    def secrets(self) -> tuple[bytes, bytes]:
        return self.x25519_key.private_bytes_raw(), self.mlkem_key.private_bytes_raw()

    def public_keys(self) -> dict[str, bytes]:
        """Public key bytes per suite name, as advertised in the relay card."""
        x_pub = self.x25519_key.public_key().public_bytes_raw()
        m_pub = self.mlkem_key.public_key().public_bytes_raw()
        return {SUITE_X25519.name: x_pub, SUITE_HYBRID.name: m_pub + x_pub}

    def open(self, suite_name: str, sealed: bytes, info: bytes) -> bytes:
        suite = SUITES.get(suite_name)
        if suite is None:
            raise RemoteProtocolError(ErrorCode.UNSUPPORTED_SUITE, f"unknown suite {suite_name!r}")
        private: x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
        if suite is SUITE_X25519:
            private = self.x25519_key
        else:
            private = hpke.MLKEM768X25519PrivateKey(self.mlkem_key, self.x25519_key)
        try:
            return suite.suite().decrypt(sealed, private, info=info)
        except (InvalidTag, ValueError):
            raise RemoteProtocolError(
                ErrorCode.SEAL_FAILED,
                "cannot open the sealed payload (sealed to another relay, or corrupted)",
            ) from None


def seal(suite_name: str, public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    """Seal ``plaintext`` to a relay's advertised public key for ``suite_name``."""
    suite = SUITES.get(suite_name)
    if suite is None:
        raise RemoteProtocolError(ErrorCode.UNSUPPORTED_SUITE, f"unknown suite {suite_name!r}")
    recipient: x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
    try:
        if suite is SUITE_X25519:
            recipient = x25519.X25519PublicKey.from_public_bytes(public_key)
        else:
            if len(public_key) != MLKEM768_PUBLIC_LEN + X25519_KEY_LEN:
                raise ValueError("hybrid public key has the wrong length")
            recipient = hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(public_key[:MLKEM768_PUBLIC_LEN]),
                x25519.X25519PublicKey.from_public_bytes(public_key[MLKEM768_PUBLIC_LEN:]),
            )
        # A low-order X25519 key parses but fails here; it comes from the peer's card.
        return suite.suite().encrypt(plaintext, recipient, info=info)
    except ValueError as exc:
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"bad {suite_name} public key: {exc}") from None


def seal_info(purpose: bytes, relay_fingerprint: bytes) -> bytes:
    """HPKE ``info``: a label and the relay id, so a payload opens only for its purpose and relay."""
    return SEAL_INFO_PREFIX + purpose + b"\x00" + relay_fingerprint


def strongest_suite(offered: list[str]) -> str:
    """The strongest suite both sides know, or ``unsupported_suite``."""
    known = [SUITES[name] for name in offered if name in SUITES]
    if not known:
        raise RemoteProtocolError(ErrorCode.UNSUPPORTED_SUITE, "no HPKE suite in common")
    return max(known, key=lambda s: s.strength).name
