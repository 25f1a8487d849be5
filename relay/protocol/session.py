"""Per-connection rules: which frame may come when, on which kind of address.

Every connection starts with ``hello``; after that a contact address (``/r``)
takes invitations and owner requests, and a group address (``/g/ID``) takes
profile updates.  :class:`Session` decodes a frame (with the size limit) and
raises ``unexpected_message`` for a frame out of order.  Pure, like h11's
connection object: bytes in, typed frames out.
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
    LogRequest,
    ProfileUpdate,
)


class Endpoint(enum.StrEnum):
    CONTACT = "contact"
    GROUP = "group"


_ALLOWED: dict[Endpoint, tuple[type, ...]] = {
    Endpoint.CONTACT: (Invite, LogRequest),
    Endpoint.GROUP: (ProfileUpdate,),
}


class Session:
    """The state of one client connection, as far as the rules care."""

    def __init__(self, endpoint: Endpoint, *, max_frame: int) -> None:
        self.endpoint = endpoint
        self.max_frame = max_frame
        self.greeted = False

    def receive(self, data: bytes) -> ClientFrame:
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
