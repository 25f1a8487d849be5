"""Per-connection rules: which frame may come when, on which kind of address.

Every connection starts with ``hello``; after that a contact address (``/r``)
takes invitations and owner requests, and a group address (``/g/ID``) takes
profile updates and members' requests.  :class:`Session` decodes a frame (with
the size limit), raises ``unexpected_message`` for a frame out of order and
``rate_limited`` for a connection sending faster than its token bucket allows.
Posts (owners' events, members' messages, certs and moderations) have a bucket
of their own (they come far more often than anything else), and discovery one
more on top of the common bucket.  Only a subscribed connection may ask for
member cards or send direct invitations.
Pure, like h11's connection object: bytes and the time in, typed frames out.
"""

from __future__ import annotations

import enum

from relay.protocol.encoding import decode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    ClientFrame,
    DirectInvite,
    Discover,
    HeadRequest,
    Hello,
    Invite,
    Join,
    JoinStatus,
    LogRequest,
    MemberCardRequest,
    MemberPost,
    OwnerCommand,
    Post,
    ProfileRequest,
    ProfileUpdate,
    Publish,
    Subscribe,
)


class ConnectionRateLimited(RemoteProtocolError):
    """A connection sends faster than its own token bucket allows (``rate_limited``).

    A type of its own so that the relay reports the per-connection bound (``request_rate``)
    for these only; budgets shared by many connections report their own bound.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, reason)


class Endpoint(enum.StrEnum):
    CONTACT = "contact"
    GROUP = "group"


_ALLOWED: dict[Endpoint, tuple[type, ...]] = {
    Endpoint.CONTACT: (Invite, LogRequest, OwnerCommand, Discover),
    Endpoint.GROUP: (
        ProfileUpdate,
        ProfileRequest,
        Join,
        JoinStatus,
        Post,
        Subscribe,
        HeadRequest,
        MemberCardRequest,
        DirectInvite,
        MemberPost,
        Publish,
    ),
}
# Posting frames share the post bucket: owners' events, members' messages, owners' certs and
# moderations (each carries its own signature, so none needs a subscribe first).
_POSTING = (Post, MemberPost, Publish)
_SUBSCRIBED_ONLY = (MemberCardRequest, DirectInvite)


class TokenBucket:
    """``rate`` requests per second on average, bursts of up to ``burst``."""

    __slots__ = ("burst", "last", "rate", "tokens")  # one per connection, kept while it is open

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

    # One per connection, and members' connections stay open for days: no per-object dict.
    __slots__ = (
        "_discover_limits",
        "_post_limits",
        "bucket",
        "discover_bucket",
        "endpoint",
        "greeted",
        "max_frame",
        "post_bucket",
        "subscribed",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        max_frame: int,
        rate: float = 0,
        burst: float = 0,
        post_rate: float = 0,
        post_burst: float = 0,
        discover_rate: float = 0,
        discover_burst: float = 0,
    ) -> None:
        self.endpoint = endpoint
        self.max_frame = max_frame
        self.greeted = False
        self.subscribed = False  # set by the relay once a subscribe succeeded
        self.bucket = TokenBucket(rate, max(burst, 1)) if rate > 0 else None
        self._post_limits = (post_rate, max(post_burst, 1))
        self._discover_limits = (discover_rate, max(discover_burst, 1))
        # Made on first use: most connections never post nor discover.
        self.post_bucket: TokenBucket | None = None
        self.discover_bucket: TokenBucket | None = None

    def receive(self, data: bytes, now: float = 0.0) -> ClientFrame:
        # Decoded first, so that each kind of frame is charged to its own bucket.  The size
        # limit is still checked before parsing.
        frame: ClientFrame = decode(data, ClientFrame, limit=self.max_frame, what="frame")  # type: ignore[arg-type]
        if self.greeted:
            self._charge(frame, now)
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
        if isinstance(frame, _SUBSCRIBED_ONLY) and not self.subscribed:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"{type(frame).__name__.lower()} needs a subscribe first"
            )
        if isinstance(frame, Subscribe) and self.subscribed:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "this connection is already subscribed")
        return frame

    def _charge(self, frame: ClientFrame, now: float) -> None:
        if isinstance(frame, _POSTING):
            rate, burst = self._post_limits
            if rate <= 0:
                return
            if self.post_bucket is None:
                self.post_bucket = TokenBucket(rate, burst)
            if not self.post_bucket.take(now):
                raise ConnectionRateLimited(
                    f"too many posts on this connection (at most {rate:g}/s); slow down",
                )
            return
        if self.bucket is not None and not self.bucket.take(now):
            raise ConnectionRateLimited(
                f"too many requests on this connection (at most {self.bucket.rate:g}/s); slow down",
            )
        if isinstance(frame, Discover):
            rate, burst = self._discover_limits
            if rate <= 0:
                return
            if self.discover_bucket is None:
                self.discover_bucket = TokenBucket(rate, burst)
            if not self.discover_bucket.take(now):
                raise ConnectionRateLimited(
                    f"too many discovery requests on this connection (at most {rate:g}/s); slow down",
                )
