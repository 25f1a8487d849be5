"""Owner management: add and remove owner keys, and set up a co-owner's own state file.

Adding or removing an owner is a new profile version: the owner certs are the
chain the root key authorises (each cert signed by the root, or by an owner an
earlier cert authorised), published to every relay with the existing
``profile_update`` path (:func:`relay.client.owner.publish`).  The holder of the
root secret signs new certs with the root; a co-owner (whose file holds no root
secret) signs them with its own authorised key.

A co-owner is set up in three steps, and no secret ever travels: the new owner
makes a key (:func:`new_key`, ``relay owner new-key``) and hands its *public*
key to an existing owner; that owner authorises it (:func:`add_owner`) and
writes a share file (:func:`write_share`: the channel's public state, service
groups and recent events, no secret); the new owner adopts it (:func:`adopt`),
which turns its key file into a full owner state file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.client.errors import RelayError
from relay.client.owner import (
    OwnerState,
    PublishResult,
    RelayEntry,
    publish,
    signed_from_json,
    signed_to_json,
)
from relay.client.statefile import load_state, save_private
from relay.protocol import crypto
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ProtocolError
from relay.protocol.messages import OwnerCert, Signed
from relay.protocol.profile import MAX_SIGNED_BODY, verify_owner_chain

KEY_ONLY = "owner-key"  # the ``kind`` of a file that holds only a new owner's key


def new_key(path: Path) -> str:
    """Make a new owner key in a file of its own (mode 0600); returns the public key, b64."""
    key = ed25519.Ed25519PrivateKey.generate()
    save_private(path, {"kind": KEY_ONLY, "owner_secret": b64e(key.private_bytes_raw())})
    return b64e(crypto.public_bytes(key))


def _owner_key_of(cert: Signed) -> bytes:
    return decode(cert.body, OwnerCert, limit=MAX_SIGNED_BODY, what="owner cert").owner_key


def _key(text: str) -> bytes:
    try:
        return b64d(text, length=32, what="owner key")
    except ProtocolError as exc:
        raise RelayError(exc.reason, code=exc.code.value) from None


def _signing_key(state: OwnerState) -> ed25519.Ed25519PrivateKey:
    return state.root_key if state.has_root else state.owner_key


def _cert(state: OwnerState, owner_key: bytes) -> Signed:
    body = encode(OwnerCert(channel=state.channel, owner_key=owner_key, issued_at=int(time.time())))
    return crypto.signed(_signing_key(state), crypto.Label.OWNER_CERT, body)


async def add_owner(state: OwnerState, path: Path, owner_key: str, *, timeout: float = 15.0) -> PublishResult:
    """Authorise ``owner_key`` (b64) and publish the new profile version to every relay."""
    key = _key(owner_key)
    certs = state.owner_certs()
    if any(_owner_key_of(c) == key for c in certs):
        raise RelayError("that key is already an owner of this channel", code="already_owner")
    _set_certs(state, [*certs, _cert(state, key)])
    return await publish(state, path, timeout=timeout)


async def remove_owner(
    state: OwnerState, path: Path, owner_key: str, *, timeout: float = 15.0
) -> PublishResult:
    """Withdraw ``owner_key`` and publish the new profile version to every relay.

    Certs the removed owner signed for others are signed again by the root (only the root
    holder can do that); events the removed owner posted stay valid history, vouched for by
    the chain (docs/protocol.md, "Authorisation over time").
    """
    key = _key(owner_key)
    if key == crypto.public_bytes(state.owner_key):
        raise RelayError("this file signs with that key; remove it from another owner's file", code="own_key")
    certs = state.owner_certs()
    kept: list[Signed] = []
    found = False
    for cert in certs:
        subject = _owner_key_of(cert)
        if subject == key:
            found = True
            continue
        if cert.signer == key:
            if not state.has_root:
                raise RelayError(
                    "that owner authorised another owner; only the root holder can remove it",
                    code="needs_root",
                )
            cert = _cert(state, subject)
        kept.append(cert)
    if not found:
        raise RelayError("that key is not an owner of this channel", code="unknown_owner")
    _set_certs(state, kept)
    if owner_key not in state.former_owners:
        state.former_owners.append(owner_key)
    return await publish(state, path, timeout=timeout)


def _set_certs(state: OwnerState, certs: list[Signed]) -> None:
    try:
        owners = verify_owner_chain(state.channel, state.root_public_key, certs)
    except ProtocolError as exc:
        raise RelayError(exc.reason, code=exc.code.value) from None
    if crypto.public_bytes(state.owner_key) not in owners:
        raise RelayError("the new owner list would not include this file's own key", code="own_key")
    state.certs = [signed_to_json(c) for c in certs]


def write_share(state: OwnerState, path: Path) -> None:
    """The channel as a new owner needs it: everything in the state file except secrets."""
    share: dict[str, Any] = {
        "kind": state.kind,
        "name": state.name,
        "description": state.description,
        "root_public": b64e(state.root_public_key),
        "certs": [signed_to_json(c) for c in state.owner_certs()],
        "profile_version": state.profile_version,
        "direct_messages": state.direct_messages,
        "admission": state.admission,
        "max_members": state.max_members,
        "relays": [asdict(r) for r in state.relays],
        "history": list(state.history),
        "former_owners": list(state.former_owners),
    }
    save_private(path, share)


def adopt(path: Path, share_path: Path) -> OwnerState:
    """Turn the key file at ``path`` into a co-owner's state file for the shared channel."""
    raw = load_state(path, "owner key", "relay owner new-key")
    if raw.get("kind") != KEY_ONLY:
        raise RelayError(f"{path} is not a file made by 'relay owner new-key'", code="not_a_key_file")
    try:
        share = json.loads(share_path.read_text())
        mine = crypto.public_bytes(ed25519.Ed25519PrivateKey.from_private_bytes(b64d(raw["owner_secret"])))
        certs = [signed_from_json(c) for c in share["certs"]]
        root_public = b64d(share["root_public"], length=32, what="root key")
    except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
        raise RelayError(f"{share_path} is not a share file: {exc}", code="bad_share") from None
    own = [c for c in certs if _owner_key_of(c) == mine]
    if not own:
        raise RelayError(
            "the share does not authorise this key (was 'add-owner' run for it?)", code="not_an_owner"
        )
    try:
        verify_owner_chain(crypto.channel_id(root_public), root_public, certs)
    except ProtocolError as exc:
        raise RelayError(
            f"the share's owner chain does not verify: {exc.reason}", code=exc.code.value
        ) from None
    state = OwnerState(
        kind=share["kind"],
        name=share["name"],
        description=share["description"],
        root_secret="",
        owner_secret=raw["owner_secret"],
        owner_cert=signed_to_json(own[0]),
        profile_version=int(share["profile_version"]),
        direct_messages=bool(share["direct_messages"]),
        admission=share["admission"],
        max_members=int(share["max_members"]),
        relays=[RelayEntry(**r) for r in share["relays"]],
        certs=list(share["certs"]),
        root_public=share["root_public"],
        history=list(share.get("history", [])),
        former_owners=list(share.get("former_owners", [])),
    )
    state.save(path)
    return state
