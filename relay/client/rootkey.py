"""The channel's root key in a file of its own, which the owner can keep offline.

The root key is what makes a channel: its hash is the channel id and it signs the
first owner cert.  After that the owner key does the daily work (profiles, posts,
owner commands, new owners' certs); the root is needed again only to re-sign the
certs of owners whose authorisation came from an owner being removed, when the
remover's own key cannot (see :func:`relay.client.owners.remove_owner`) -- for
example to withdraw a lost or stolen owner key that authorised the others.  So
``relay owner create`` writes it here, beside the state file (``owner.json`` ->
``owner.root.json``), and the state file keeps only its public half.

A root key file is written once (never replacing a file), mode 0600, and names
its channel, so the wrong channel's root is refused.  Nothing of the secret goes
into an error message, a ``repr`` or a command's answer; this module must not
print or log, and must not write the secret anywhere but the one new file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.client.errors import RelayError, file_error
from relay.client.owner import OwnerState
from relay.client.statefile import create_private
from relay.protocol import crypto
from relay.protocol.encoding import b64d, b64e
from relay.protocol.errors import ProtocolError

ROOT_KIND = "owner-root"  # the ``kind`` of a root key file

# What the owner is told, by ``create`` and ``export-root`` and in the file itself.
WHEN_NEEDED = (
    "only to withdraw the owner key that authorised yours (directly or through other owners), "
    "for example a lost or stolen one: 'relay owner remove-owner --state FILE KEY --root ROOT_FILE'; "
    "posting, publishing, relays, adding owners and any other withdrawal never need it"
)
KEEP_OFFLINE = (
    "Move it off this machine (a USB stick, a password manager; keep a backup): it is what takes "
    "the channel back from a lost or stolen owner key."
)


def default_root_path(state: Path) -> Path:
    """Where ``create`` puts the root key of the channel whose state is ``state``."""
    stem = state.stem if state.suffix == ".json" else state.name
    return state.with_name(f"{stem}.root.json")


def _root_file(root: ed25519.Ed25519PrivateKey, name: str) -> dict[str, Any]:
    public = crypto.public_bytes(root)
    return {
        "kind": ROOT_KIND,
        "about": f"The root key of the channel {name!r}, needed {WHEN_NEEDED}.",
        "channel": b64e(crypto.channel_id(public)),
        "root_public": b64e(public),
        "root_secret": b64e(root.private_bytes_raw()),
    }


def save_new_channel(state: OwnerState, path: Path, root_path: Path) -> None:
    """Write a state fresh from :func:`relay.client.owner.create_channel` as two new files.

    The root secret goes to ``root_path`` and the state, without it, to ``path``; both are
    created (never replaced), mode 0600.  If either name is taken nothing is left behind
    and RelayError(code="exists") says which.
    """
    if not state.has_root:
        raise RelayError("this state holds no root key to write", code="no_root")
    if path.resolve() == root_path.resolve():
        raise RelayError("the root key needs a file of its own, not the state file", code="usage")
    for taken in (path, root_path):
        if taken.exists() or taken.is_symlink():
            raise RelayError(f"{taken} already exists; it may hold another channel's secrets", code="exists")
    root = state.root_key
    try:
        create_private(root_path, _root_file(root, state.name))
    except FileExistsError:
        raise RelayError(f"{root_path} already exists", code="exists") from None
    split = _without_root(state)
    try:
        split.create(path)
    except BaseException:
        root_path.unlink(missing_ok=True)  # ours: created above, nothing else can be at that name
        raise
    _forget_root(state, split)


def export_root(state: OwnerState, path: Path, root_path: Path) -> None:
    """Move the root secret of an old-layout state file at ``path`` to a new file ``root_path``.

    The root file is written first; only then is the state rewritten without the secret,
    so a failure in between leaves the secret in both files, never in neither.
    """
    if not state.has_root:
        raise RelayError(
            f"{path} holds no root key (it is in a file of its own already, or this is a co-owner's file)",
            code="no_root",
        )
    if path.resolve() == root_path.resolve():
        raise RelayError("the root key needs a file of its own, not the state file", code="usage")
    try:
        create_private(root_path, _root_file(state.root_key, state.name))
    except FileExistsError:
        raise RelayError(
            f"{root_path} already exists; choose another file with --root", code="exists"
        ) from None
    split = _without_root(state)
    try:
        split.save(path)
    except RelayError as exc:
        raise RelayError(
            f"wrote {root_path}, but cannot rewrite the state without the root key: {exc.reason}",
            code=exc.code,
        ) from None
    _forget_root(state, split)


def _without_root(state: OwnerState) -> OwnerState:
    return replace(state, root_secret="", root_public=b64e(state.root_public_key))


def _forget_root(state: OwnerState, split: OwnerState) -> None:
    """The caller's state object drops the secret too: it now matches the file."""
    state.root_public = split.root_public
    state.root_secret = ""
    state.__dict__.pop("root_key", None)  # drop the cached_property's key object as well


def load_root(path: Path, state: OwnerState) -> ed25519.Ed25519PrivateKey:
    """The root key in ``path``, checked to be the root of ``state``'s channel."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise RelayError(f"no root key file at {path}", code="no_root") from None
    except OSError as exc:
        raise file_error(exc, path, doing="read", what="root key file") from None
    except ValueError:
        raise RelayError(f"{path} is not a root key file", code="bad_root") from None
    if not (isinstance(raw, dict) and raw.get("kind") == ROOT_KIND):
        raise RelayError(f"{path} is not a root key file", code="bad_root")
    try:
        root = ed25519.Ed25519PrivateKey.from_private_bytes(b64d(raw["root_secret"], length=32))
    except (KeyError, TypeError, ValueError, ProtocolError):
        raise RelayError(f"{path} is not a root key file", code="bad_root") from None
    if crypto.public_bytes(root) != state.root_public_key:
        raise RelayError(f"{path} holds the root key of another channel", code="wrong_root")
    return root
