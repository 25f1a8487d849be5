"""Per-connection rules: which frame may come when, on which kind of address.

Every connection starts with ``hello``; after that a contact address (``/r``)
takes invitations and owner requests, and a group address (``/g/ID``) takes
profile updates and members' requests.  :class:`Session` decodes a frame (with
the size limit), raises ``unexpected_message`` for a frame out of order and
``rate_limited`` for a connection sending faster than its token bucket allows.
Pure, like h11's connection object: bytes and the time in, typed frames out.
"""

from __future__ import annotations

import enum

from relay.protocol.encoding import decode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    ClientFrame,
    Hello,
    Invite,
    Join,
    JoinStatus,
    LogRequest,
    OwnerCommand,
    ProfileRequest,
    ProfileUpdate,
)


class Endpoint(enum.StrEnum):
    CONTACT = "contact"
    GROUP = "group"


_ALLOWED: dict[Endpoint, tuple[type, ...]] = {
    Endpoint.CONTACT: (Invite, LogRequest, OwnerCommand),
    Endpoint.GROUP: (ProfileUpdate, ProfileRequest, Join, JoinStatus),
}


class TokenBucket:
    """``rate`` requests per second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Session:
    """The state of one client connection, as far as the rules care."""

    def __init__(self, endpoint: Endpoint, *, max_frame: int, rate: float = 0, burst: float = 0) -> None:
        self.endpoint = endpoint
        self.max_frame = max_frame
        self.greeted = False
        self.bucket = TokenBucket(rate, max(burst, 1)) if rate > 0 else None

    def receive(self, data: bytes, now: float = 0.0) -> ClientFrame:
        # Checked before decoding: a flood should cost the relay as little as possible.
        if self.greeted and self.bucket is not None and not self.bucket.take(now):
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED,
                f"too many requests on this connection (at most {self.bucket.rate:g}/s); slow down",
            )
        frame: ClientFrame = decode(data, ClientFrame, limit=self.max_frame, what="frame")  # type: ignore[arg-type]
        if not self.greeted:
            if not isinstance(frame, Hello):
                raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "the first frame must be hello")
            if frame.version != PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"protocol version {frame.version} is not supported (this relay speaks "
                    f"{PROTOCOL_VERSION})",
                )
            self.greeted = True
            return frame
        if not isinstance(frame, _ALLOWED[self.endpoint]):
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"{type(frame).__name__.lower()} is not accepted here on a {self.endpoint.value} address",
            )
        return frame
