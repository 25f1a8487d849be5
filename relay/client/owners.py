"""Owner management: add and remove owner keys, and set up a co-owner's own state file.

Adding or removing an owner is a new profile version: the owner certs are the
chain the root key authorises (each cert signed by the root, or by an owner an
earlier cert authorised), published to every relay with the existing
``profile_update`` path (:func:`relay.client.owner.publish`).  New certs are
signed with the state file's own owner key, so the root key can stay offline; it
is needed only when removing an owner whose certs for others this key cannot
sign again (:func:`remove_owner`; :mod:`relay.client.rootkey`).  A key this
machine sees as an owner key of another channel is refused
(:mod:`relay.client.ownerkeys`), so one key never links two channels.

A co-owner is set up in three steps, and no secret ever travels: the new owner
makes a key (:func:`new_key`, ``relay owner new-key``) and hands its *public*
key to an existing owner; that owner authorises it (:func:`add_owner`) and
writes a share file (:func:`write_share`: the channel's public state, service
groups and recent events, no secret); the new owner adopts it (:func:`adopt`),
which turns its key file into a full owner state file.  This module must not
print, and must not put a secret in a share file or an error message.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.client import ownerkeys
from relay.client.errors import RelayError, translated
from relay.client.owner import (
    OwnerState,
    PublishResult,
    RelayEntry,
    publish,
    signed_from_json,
    signed_to_json,
)
from relay.client.rootkey import load_root
from relay.client.statefile import create_private, load_state, read_json, save_private
from relay.protocol import crypto
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ProtocolError
from relay.protocol.messages import OwnerCert, Signed
from relay.protocol.profile import MAX_SIGNED_BODY, verify_owner_chain

KEY_ONLY = "owner-key"  # the ``kind`` of a file that holds only a new owner's key


def new_key(path: Path) -> str:
    """Make a new owner key in a new file (mode 0600, never over an existing file);
    returns the public key, b64."""
    key = ed25519.Ed25519PrivateKey.generate()
    try:
        create_private(path, {"kind": KEY_ONLY, "owner_secret": b64e(key.private_bytes_raw())})
    except FileExistsError:
        raise RelayError(
            f"{path} already exists; it may hold another owner's secrets", code="exists"
        ) from None
    return b64e(crypto.public_bytes(key))


def _owner_key_of(cert: Signed) -> bytes:
    return decode(cert.body, OwnerCert, limit=MAX_SIGNED_BODY, what="owner cert").owner_key


def _key(text: str) -> bytes:
    with translated(from_relay=False):
        return b64d(text, length=32, what="owner key")


def _cert(signer: ed25519.Ed25519PrivateKey, channel: bytes, owner_key: bytes) -> Signed:
    body = encode(OwnerCert(channel=channel, owner_key=owner_key, issued_at=int(time.time())))
    return crypto.signed(signer, crypto.Label.OWNER_CERT, body)


async def add_owner(state: OwnerState, path: Path, owner_key: str, *, timeout: float = 15.0) -> PublishResult:
    """Authorise ``owner_key`` (b64) with this file's owner key and publish the new profile
    version to every relay.

    A key this machine sees as an owner key of another channel is refused (``key_in_use``)
    before anything changes; the key is recorded in the owner key registry before it is
    signed (:mod:`relay.client.ownerkeys`).
    """
    key = _key(owner_key)
    certs = state.owner_certs()
    if any(_owner_key_of(c) == key for c in certs):
        raise RelayError("that key is already an owner of this channel", code="already_owner")
    ownerkeys.refuse_if_in_use(key, state.channel, path.parent)
    ownerkeys.register([(key, state.channel), (crypto.public_bytes(state.owner_key), state.channel)])
    _set_certs(state, [*certs, _cert(state.owner_key, state.channel, key)])
    return await publish(state, path, timeout=timeout)


async def remove_owner(
    state: OwnerState, path: Path, owner_key: str, *, root: Path | None = None, timeout: float = 15.0
) -> PublishResult:
    """Withdraw ``owner_key`` and publish the new profile version to every relay.

    Certs the removed owner signed for others are signed again: with this file's owner key
    when its own authorisation does not come from the removed owner, else with the root key
    (from an old-layout state file that holds it, or from the root key file ``root``; without
    it, RelayError ``needs_root`` and nothing changes).  Events the removed owner posted stay
    valid history, vouched for by the chain (docs/protocol.md, "Authorisation over time").
    """
    key = _key(owner_key)
    if key == crypto.public_bytes(state.owner_key):
        raise RelayError("this file signs with that key; remove it from another owner's file", code="own_key")
    certs = state.owner_certs()
    if not any(_owner_key_of(c) == key for c in certs):
        raise RelayError("that key is not an owner of this channel", code="unknown_owner")
    kept = _resigned_by_owner(state, certs, key)
    if kept is None:
        signer = _root_for_removal(state, root)
        kept = [
            _cert(signer, state.channel, _owner_key_of(c)) if c.signer == key else c
            for c in certs
            if _owner_key_of(c) != key
        ]
    _set_certs(state, kept)
    if owner_key not in state.former_owners:
        state.former_owners.append(owner_key)
    return await publish(state, path, timeout=timeout)


def _resigned_by_owner(state: OwnerState, certs: list[Signed], removed: bytes) -> list[Signed] | None:
    """The chain without ``removed``, the certs it signed signed again by this file's key.

    A cert is placed once its signer is authorised by the certs placed before it (the chain
    rule), so a re-signed cert may move behind this file's own cert, its dependants with it.
    None when this file's key never gets authorised that way: its own authorisation comes
    from ``removed``, and only the root can sign those certs again.
    """
    mine = crypto.public_bytes(state.owner_key)
    root_public = state.root_public_key
    pending = [c for c in certs if _owner_key_of(c) != removed]
    placed: list[Signed] = []
    authorised: set[bytes] = set()
    while pending:
        waiting: list[Signed] = []
        for cert in pending:
            if cert.signer == removed and mine in authorised:
                cert = _cert(state.owner_key, state.channel, _owner_key_of(cert))
            elif cert.signer != root_public and cert.signer not in authorised:
                waiting.append(cert)
                continue
            placed.append(cert)
            authorised.add(_owner_key_of(cert))
        if len(waiting) == len(pending):
            return None
        pending = waiting
    return placed


def _root_for_removal(state: OwnerState, root: Path | None) -> ed25519.Ed25519PrivateKey:
    """The root key, to sign again the certs of owners the removed one authorised."""
    if state.has_root:
        return state.root_key  # an old-layout file still holds it
    why = (
        "withdrawing that owner needs the channel's root key, because that owner authorised "
        "this file's own key and only the root can sign the certs it signed again"
    )
    if root is None:
        raise RelayError(f"{why}; give the root key file with --root FILE", code="needs_root")
    try:
        return load_root(root, state)
    except RelayError as exc:
        if exc.code == "no_root":
            raise RelayError(
                f"{why}; there is no root key file at {root} (give it with --root FILE)", code="needs_root"
            ) from None
        raise


def _set_certs(state: OwnerState, certs: list[Signed]) -> None:
    with translated(from_relay=False):
        owners = verify_owner_chain(state.channel, state.root_public_key, certs)
    mine = crypto.public_bytes(state.owner_key)
    if mine not in owners:
        raise RelayError("the new owner list would not include this file's own key", code="own_key")
    state.certs = [signed_to_json(c) for c in certs]
    # this file's own cert may have been signed again (by the root) above
    state.owner_cert = next(signed_to_json(c) for c in certs if _owner_key_of(c) == mine)


def _is_share(raw: object) -> bool:
    return (
        isinstance(raw, dict)
        and "root_public" in raw
        and "certs" in raw
        and not any("secret" in str(k) for k in raw)
    )


def check_share_target(path: Path) -> None:
    """RelayError unless ``path`` is free or an old share file: a share must never replace a
    file that holds a key (``--share owner.json`` by mistake)."""
    if not (path.exists() or path.is_symlink()):
        return
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raw = None
    if not _is_share(raw):
        raise RelayError(f"{path} already exists and is not a share file; choose another name", code="exists")


def write_share(state: OwnerState, path: Path) -> None:
    """The channel as a new owner needs it: everything in the state file except secrets.

    The fields are listed one by one (never the state file copied and pruned), so a secret
    added to the state file later cannot leak into shares.  An existing file is replaced only
    if it is a share file itself (:func:`check_share_target`).
    """
    check_share_target(path)
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
        "comments": state.comments,
        "max_message_bytes": state.max_message_bytes,
        "messages_per_minute": state.messages_per_minute,
        "slow_mode": state.slow_mode,
        "member_certs": dict(state.member_certs),
        "last_issued_at": state.last_issued_at,
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
        mine = crypto.public_bytes(
            ed25519.Ed25519PrivateKey.from_private_bytes(b64d(raw["owner_secret"], length=32))
        )
    except (ValueError, KeyError, TypeError, ProtocolError):
        raise RelayError(f"{path} holds no valid owner key", code="not_a_key_file") from None
    share = read_json(share_path, what="share file", missing="'relay owner add-owner --share FILE' writes it")
    try:
        certs = [signed_from_json(c) for c in share["certs"]]
        root_public = b64d(share["root_public"], length=32, what="root key")
    except (ValueError, KeyError, TypeError, ProtocolError) as exc:
        if isinstance(exc, ProtocolError):
            why = exc.reason
        elif isinstance(exc, KeyError):
            why = f"it has no {exc.args[0]!r}"
        else:
            why = str(exc) or type(exc).__name__
        raise RelayError(f"{share_path} is not a share file ({why})", code="bad_share") from None
    channel = crypto.channel_id(root_public)
    try:
        verify_owner_chain(channel, root_public, certs)
    except ProtocolError as exc:
        raise RelayError(
            f"the share's owner chain does not verify: {exc.reason}", code=exc.code.value
        ) from None
    own = [c for c in certs if _owner_key_of(c) == mine]
    if not own:
        raise RelayError(
            "the share does not authorise this key (was 'add-owner' run for it?)", code="not_an_owner"
        )
    ownerkeys.refuse_if_in_use(mine, channel, path.parent, whose="this file's key")
    try:
        state = OwnerState(
            kind=share["kind"],
            name=share["name"],
            description=share["description"],
            owner_secret=raw["owner_secret"],
            owner_cert=signed_to_json(own[0]),
            profile_version=int(share["profile_version"]),
            direct_messages=bool(share["direct_messages"]),
            admission=share["admission"],
            max_members=int(share["max_members"]),
            comments=bool(share.get("comments", False)),
            max_message_bytes=int(share.get("max_message_bytes", 0)),
            messages_per_minute=int(share.get("messages_per_minute", 0)),
            slow_mode=int(share.get("slow_mode", 0)),
            member_certs=dict(share.get("member_certs", {})),
            last_issued_at=int(share.get("last_issued_at", 0)),
            relays=[RelayEntry(**r) for r in share["relays"]],
            certs=list(share["certs"]),
            root_public=share["root_public"],
            history=list(share.get("history", [])),
            former_owners=list(share.get("former_owners", [])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RelayError(f"{share_path} is not a share file: {exc}", code="bad_share") from None
    ownerkeys.register([(mine, channel)])
    state.save(path)
    return state
