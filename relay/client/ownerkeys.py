"""Which channels an owner key belongs to, as far as this machine can tell.

Owner keys are per channel so that nothing a relay stores links two channels of
one person.  A key authorised in two channels would show up in both channels'
profiles on any relay that serves both, and link them; so ``add-owner`` and
``adopt`` refuse a key this module sees in another channel (``key_in_use``).
What it sees, and nothing else (the answer depends only on these files):

1. the files in the folder of the state file: every owner state file and every
   share file there names its channel's owner keys (its certs, its own cert and
   the former owners it lists).  A key file made by ``relay owner new-key``
   belongs to no channel until it is adopted, so it never makes a key in use;
2. the registry, a small per-user file of (owner public key, channel id) pairs
   that this tool records when it creates a channel, adds an owner, or adopts a
   share: ``$CHAT_RELAY_OWNER_KEYS`` if set, else
   ``$XDG_DATA_HOME/chat-relay/owner-keys.json`` (``~/.local/share`` when
   ``XDG_DATA_HOME`` is unset), mode 0600 in a 0700 folder.

This module must not hold or write secrets: it reads only the public parts of
the files it looks at, and the registry holds public keys and channel ids only.
It must not talk to relays.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.client.errors import RelayError
from relay.client.statefile import save_private
from relay.protocol.encoding import b64d, b64e, decode
from relay.protocol.errors import ProtocolError
from relay.protocol.messages import OwnerCert
from relay.protocol.profile import MAX_SIGNED_BODY

ENV = "CHAT_RELAY_OWNER_KEYS"
REGISTRY_KIND = "owner-key-registry"
# A channel file with a full history is about 22 MiB (256 events of 64 KiB, base64);
# anything much larger is not one of ours and is not read.
MAX_SCANNED_FILE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Sighting:
    """``key`` is an owner key of ``channel``, as ``where`` (a file) says."""

    channel: bytes
    where: str


def registry_path() -> Path:
    """The registry file: ``$CHAT_RELAY_OWNER_KEYS``, else under ``$XDG_DATA_HOME``."""
    explicit = os.environ.get(ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "chat-relay" / "owner-keys.json"


def _read_registry(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise RelayError(
            f"cannot read the owner key registry {path}; fix or remove it (set {ENV} to use another)",
            code="bad_registry",
        ) from None
    keys = raw.get("keys") if isinstance(raw, dict) and raw.get("kind") == REGISTRY_KIND else None
    if not isinstance(keys, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in keys.values()
    ):
        raise RelayError(
            f"{path} is not an owner key registry; fix or remove it (set {ENV} to use another)",
            code="bad_registry",
        )
    return keys


def register(pairs: Iterable[tuple[bytes, bytes]]) -> None:
    """Record that each ``(owner key, channel)`` pair is an owner key of that channel.

    Called *before* the change it records is made, so a registry that cannot be written
    stops the command while nothing has changed yet.
    """
    wanted = [(b64e(key), b64e(channel)) for key, channel in pairs]
    path = registry_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise RelayError(
            f"cannot write the owner key registry {path}: {exc.strerror} (set {ENV} to use another)",
            code="bad_registry",
        ) from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # two commands at once must not lose a pair
        keys = _read_registry(path)
        changed = False
        for key, channel in wanted:
            channels = keys.setdefault(key, [])
            if channel not in channels:
                channels.append(channel)
                changed = True
        if changed:
            data: dict[str, Any] = {
                "kind": REGISTRY_KIND,
                "about": "owner public keys (b64) and the channels (ids, b64) they are owners of; "
                "'relay owner add-owner' and 'adopt' refuse a key of another channel",
                "keys": keys,
            }
            try:
                save_private(path, data)
            except RelayError as exc:
                raise RelayError(
                    f"{exc.reason} (the owner key registry; set {ENV} to use another)", code="bad_registry"
                ) from None
    finally:
        os.close(lock_fd)


def _cert_pairs(certs: Iterable[Any]) -> Iterator[tuple[bytes, bytes]]:
    """(owner key, channel) for every cert (JSON form) that decodes; others are skipped."""
    for cert in certs:
        try:
            body = decode(b64d(cert["body"]), OwnerCert, limit=MAX_SIGNED_BODY, what="owner cert")
        except (KeyError, TypeError, ProtocolError):
            continue
        yield body.owner_key, body.channel


def _channel_file_pairs(raw: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The owner keys an owner state file or a share file names, with their channel."""
    certs = raw.get("certs")
    certs = list(certs) if isinstance(certs, list) else []
    if isinstance(raw.get("owner_cert"), dict):
        certs.append(raw["owner_cert"])
    pairs = list(_cert_pairs(certs))
    channels = {channel for _, channel in pairs}
    former = raw.get("former_owners")
    if len(channels) == 1 and isinstance(former, list):
        [channel] = channels
        for text in former:
            try:
                pairs.append((b64d(text, length=32), channel))
            except (TypeError, ProtocolError):
                continue
    return pairs


def _folder_files(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every JSON object file of at most MAX_SCANNED_FILE bytes in ``folder``, by name."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        path = folder / name
        try:
            if not path.is_file() or path.stat().st_size > MAX_SCANNED_FILE:
                continue
            with path.open("rb") as f:
                if f.read(64).lstrip()[:1] != b"{":
                    continue
                f.seek(0)
                raw = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict):
            yield path, raw


def sightings(key: bytes, folder: Path) -> list[Sighting]:
    """Where this machine sees ``key`` as an owner key: the folder's files, then the registry."""
    found: list[Sighting] = []
    for path, raw in _folder_files(folder):
        if "certs" not in raw and "owner_cert" not in raw:
            continue  # key files, root key files, member files, anything else
        found += [Sighting(channel, str(path)) for owner, channel in _channel_file_pairs(raw) if owner == key]
    registry = registry_path()
    for text in _read_registry(registry).get(b64e(key), []):
        try:
            found.append(Sighting(b64d(text, length=32), f"the owner key registry {registry}"))
        except ProtocolError:
            continue  # not a channel id: nothing this tool wrote
    return found


def refuse_if_in_use(key: bytes, channel: bytes, folder: Path, *, whose: str = "that key") -> None:
    """RelayError(``key_in_use``) if ``key`` is seen as an owner key of a channel other than
    ``channel``."""
    for seen in sightings(key, folder):
        if seen.channel != channel:
            raise RelayError(
                f"{whose} is already an owner key of another channel ({b64e(seen.channel)[:8]}..., "
                f"seen in {seen.where}); one key in two channels would let their relays link "
                "them: use a key made for this channel with 'relay owner new-key'",
                code="key_in_use",
            )
