"""What members may post in a group, and how fast: the owners' signed limits and the relay's floor.

:class:`PostingRules` reads a signed profile (and the relay's own floor) into the rules a relay
applies to each member message; :class:`Pacer` keeps each member's pace (a token bucket per
member, and slow mode), bounded.  Re-exported by :mod:`relay.protocol.timeline`.  Pure: the
clock is passed in, and nothing here does I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.messages import Profile


@dataclass(frozen=True, slots=True)
class PostingRules:
    """What a group's signed profile and the relay's floor allow members to post.

    ``max_bytes``: the smaller of the profile's ``max_message_bytes`` and the relay's;
    ``per_minute``: the smaller non-zero of the profile's and the relay's (0: no limit);
    ``slow_mode``: seconds between two messages of one member (0: none).
    """

    kind: str
    posts_allowed: bool
    max_bytes: int
    per_minute: int
    slow_mode: int

    @classmethod
    def of(cls, profile: Profile, *, floor_bytes: int, floor_per_minute: int) -> PostingRules:
        allowed = profile.kind == "group" or (profile.kind == "channel" and profile.comments)
        own = profile.max_message_bytes
        max_bytes = floor_bytes if own == 0 else min(own, floor_bytes)
        limits = [n for n in (profile.messages_per_minute, floor_per_minute) if n > 0]
        return cls(
            kind=profile.kind,
            posts_allowed=allowed,
            max_bytes=max_bytes,
            per_minute=min(limits, default=0),
            slow_mode=profile.slow_mode,
        )

    def check_posting(self) -> None:
        """Raise ``member_posts_off`` unless members post in this group at all."""
        if not self.posts_allowed:
            raise RemoteProtocolError(
                ErrorCode.MEMBER_POSTS_OFF,
                f"members do not post in this {self.kind} (its profile does not enable comments)",
            )

    def check_reply(self, kind: str, reply_to: bytes, is_owner_event: bool, exists: bool) -> None:
        """``kind``: the group's kind.  In a ``channel`` (with comments) a message must reply
        to an owner event; anywhere, ``reply_to`` must name something the relay holds."""
        if not reply_to:
            if kind != "group":
                raise RemoteProtocolError(ErrorCode.BAD_REPLY, "a comment replies to an owner's post")
            return
        if len(reply_to) != 32:
            raise RemoteProtocolError(ErrorCode.BAD_REPLY, "reply_to is an id (32 bytes) or empty")
        if not exists:
            raise RemoteProtocolError(ErrorCode.BAD_REPLY, "reply_to names nothing this relay holds")
        if kind != "group" and not is_owner_event:
            raise RemoteProtocolError(
                ErrorCode.BAD_REPLY, "a comment replies to an owner's post, not to a comment"
            )


@dataclass(slots=True)
class _Pace:
    tokens: float
    at: float
    last_post: float | None = None


@dataclass
class Pacer:
    """Per-member pace: a token bucket of ``rules.per_minute`` and ``rules.slow_mode``.

    Bounded to ``max_members`` members (the least recently seen is forgotten; ``evicted``
    counts them, for the relay's metric).  The clock is passed in: ``now`` in seconds.
    """

    rules: PostingRules
    max_members: int = 100_000
    evicted: int = 0
    _paces: OrderedDict[bytes, _Pace] = field(default_factory=OrderedDict)

    def check(self, member: bytes, now: float, *, rules: PostingRules | None = None) -> None:
        """Take one message of ``member`` at ``now``, or raise ``slow_mode`` / ``rate_limited``
        (nothing taken) with the seconds to wait in the reason.  ``rules``: this group's, when
        one pacer serves several."""
        rules = self.rules if rules is None else rules
        pace = self._paces.get(member)
        capacity = float(rules.per_minute)
        if pace is None:
            pace = _Pace(tokens=capacity, at=now)
        else:
            self._paces.move_to_end(member)
            if rules.per_minute:
                pace.tokens = min(capacity, pace.tokens + (now - pace.at) * capacity / 60.0)
            pace.at = max(pace.at, now)
        if rules.slow_mode and pace.last_post is not None:
            wait = pace.last_post + rules.slow_mode - now
            if wait > 0:
                self._keep(member, pace)
                raise RemoteProtocolError(
                    ErrorCode.SLOW_MODE, f"slow mode: post again in {math.ceil(wait)} s"
                )
        if rules.per_minute:
            if pace.tokens < 1.0:
                wait = (1.0 - pace.tokens) * 60.0 / capacity
                self._keep(member, pace)
                raise RemoteProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"{rules.per_minute} messages per minute: post again in {math.ceil(wait)} s",
                )
            pace.tokens -= 1.0
        pace.last_post = now
        self._keep(member, pace)

    def _keep(self, member: bytes, pace: _Pace) -> None:
        if member not in self._paces:
            self._paces[member] = pace
            while len(self._paces) > self.max_members:
                self._paces.popitem(last=False)
                self.evicted += 1

    def __len__(self) -> int:
        return len(self._paces)
