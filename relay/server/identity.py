"""The relay's long-term keys, in the data folder: created once, then only read.

``identity.key`` (mode 0600) holds the Ed25519 identity secret, the X25519
secret and the ML-KEM-768 seed as one MessagePack map.  The fingerprint of the
identity public key is what every client pins.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.protocol import crypto
from relay.protocol.encoding import b64e

KEY_FILE = "identity.key"


class _KeyFile(msgspec.Struct):
    ed25519: bytes
    x25519: bytes
    mlkem768_seed: bytes


@dataclass(frozen=True)
class Identity:
    signing_key: ed25519.Ed25519PrivateKey
    seal_keys: crypto.SealKeys

    # Derived once: every join request is checked against the fingerprint (measured 2-3 % of
    # a join's CPU when it was derived per call).
    @cached_property
    def public_key(self) -> bytes:
        return crypto.public_bytes(self.signing_key)

    @cached_property
    def fingerprint(self) -> bytes:
        return crypto.fingerprint(self.public_key)

    @property
    def fingerprint_text(self) -> str:
        return b64e(self.fingerprint)


def load(data_dir: Path) -> Identity:
    """The identity in ``data_dir``, which must exist (FileNotFoundError otherwise).  A damaged
    file raises msgspec's or cryptography's errors (see relay.server.datadir)."""
    keys = msgspec.msgpack.decode((data_dir / KEY_FILE).read_bytes(), type=_KeyFile)
    return Identity(
        ed25519.Ed25519PrivateKey.from_private_bytes(keys.ed25519),
        crypto.SealKeys.from_secrets(keys.x25519, keys.mlkem768_seed),
    )


def load_or_create(data_dir: Path) -> tuple[Identity, bool]:
    """Load the identity from ``data_dir``, creating it on first use; returns (identity, created)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / KEY_FILE
    if path.exists():
        return load(data_dir), False
    signing = ed25519.Ed25519PrivateKey.generate()
    seal_keys = crypto.SealKeys.generate()
    x_secret, seed = seal_keys.secrets()
    blob = msgspec.msgpack.encode(_KeyFile(signing.private_bytes_raw(), x_secret, seed))
    # A temporary name of its own (pid and random: containers sharing the volume are all pid 1):
    # the processes of a fleet may start at once.
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    # link() fails if another process created the key meanwhile: first writer wins.
    try:
        os.link(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create(data_dir)
    os.unlink(tmp)
    return Identity(signing, seal_keys), True
