"""Contact addresses, group addresses and channel links: formatting and strict parsing.

- contact address: ``http://HOST:PORT/r#FINGERPRINT``
- group address:   ``http://HOST:PORT/g/ADDRESS_ID#FINGERPRINT``
- channel link:    ``chat-relay:/c/CHANNEL_ID?relay=GROUP_ADDRESS&relay=...``
  (``/g/`` instead of ``/c/`` for a group)

Binary values are unpadded base64url.  The fingerprint after ``#`` is what
clients pin.  Pure code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit

from relay.protocol.encoding import b64d, b64e
from relay.protocol.errors import ErrorCode, RemoteProtocolError

LINK_SCHEME = "chat-relay"
_ADDRESS_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """A parsed contact (``address_id is None``) or group address."""

    base: str  # scheme://host:port
    fingerprint: bytes
    address_id: str | None = None

    @property
    def websocket_url(self) -> str:
        scheme = "wss" if self.base.startswith("https:") else "ws"
        path = "/r" if self.address_id is None else f"/g/{self.address_id}"
        return scheme + self.base[self.base.index(":") :] + path

    def __str__(self) -> str:
        path = "/r" if self.address_id is None else f"/g/{self.address_id}"
        return f"{self.base}{path}#{b64e(self.fingerprint)}"


def contact_address(base: str, fingerprint: bytes) -> str:
    return str(RelayAddress(base.rstrip("/"), fingerprint))


def group_address(base: str, fingerprint: bytes, address_id: str) -> str:
    return str(RelayAddress(base.rstrip("/"), fingerprint, address_id))


def _split_base(text: str, what: str) -> SplitResult:
    """``text`` split as a URL whose base is ``http(s)://HOST:PORT``, the port written out."""
    try:
        parts = urlsplit(text)
        port = parts.port  # urllib checks the port only when asked, with a ValueError
    except ValueError:
        port = None
    if port is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"not {what}: {text!r}")
    return parts


def parse_base(text: str) -> str:
    """A public base URL, ``http(s)://HOST:PORT`` and nothing after it (a trailing ``/`` aside)."""
    parts = _split_base(text, "http(s)://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"not http(s)://HOST:PORT with no path: {text!r}")
    return f"{parts.scheme}://{parts.netloc}"


def parse_address(text: str) -> RelayAddress:
    """Parse a contact or group address; anything else is ``bad_type`` with the reason."""
    parts = _split_base(text, "a relay address (need http(s)://HOST:PORT/...#KEY)")
    fingerprint = b64d(parts.fragment, length=32, what="relay fingerprint")
    base = f"{parts.scheme}://{parts.netloc}"
    if parts.path == "/r":
        return RelayAddress(base, fingerprint)
    if parts.path.startswith("/g/") and _ADDRESS_ID.match(parts.path[3:]):
        return RelayAddress(base, fingerprint, parts.path[3:])
    raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"not a contact or group address: {text!r}")


@dataclass(frozen=True, slots=True)
class ChannelLink:
    kind: str  # "channel" | "group"
    channel: bytes
    relays: tuple[str, ...]

    def __str__(self) -> str:
        letter = "c" if self.kind == "channel" else "g"
        query = urlencode([("relay", r) for r in self.relays], quote_via=quote)
        return f"{LINK_SCHEME}:/{letter}/{b64e(self.channel)}?{query}"


def parse_link(text: str) -> ChannelLink:
    try:
        parts = urlsplit(text)
    except ValueError:
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"not a channel link: {text!r}") from None
    if parts.scheme != LINK_SCHEME or not re.match(r"^/[cg]/", parts.path):
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"not a channel link: {text!r}")
    kind = "channel" if parts.path[1] == "c" else "group"
    channel = b64d(parts.path[3:], length=32, what="channel id")
    relays = tuple(v for k, v in parse_qsl(parts.query) if k == "relay")
    for relay in relays:
        if parse_address(relay).address_id is None:
            raise RemoteProtocolError(
                ErrorCode.BAD_TYPE, f"a channel link names group addresses, not a contact address: {relay!r}"
            )
    return ChannelLink(kind, channel, relays)
