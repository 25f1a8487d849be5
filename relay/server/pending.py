"""Each source's budget for invitations, and for groups waiting for their owners' activation.

Anyone can invite a relay: a fresh root key costs nothing.  Opening a sealed
invitation and checking its owner chain costs the relay a key agreement and a few
dozen signature checks, and every accepted group that is never activated holds a
row and a slot of ``policy.max_groups`` until its activation deadline.  Two budgets
per source (:mod:`relay.server.sources`: an IPv4 address or an IPv6 /64) bound both:

- invitations per minute, a token bucket checked before the sealed invitation is
  even opened (the cheapest point to say no);
- groups pending at once (``invited`` or ``accepted``, not yet active): a source at
  its limit gets no new group until one of its groups is activated or closed.  A
  repeated invitation for a group that exists is not a new group and always passes.

Counts are kept in memory only: nothing the relay stores names the network address
a channel came from (two channels added from one address must not be linkable from
the database).  A restart starts them empty, which an attacker cannot cause.

Must not: log or store a source key.
"""

from __future__ import annotations

from collections import OrderedDict

from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.session import TokenBucket
from relay.server.bounds import Bounds

MAX_SOURCES = 65_536  # invitation buckets kept; the least recently used go first


class InvitationBudgets:
    def __init__(self, *, per_minute: float, max_pending: int, bounds: Bounds) -> None:
        self.per_minute = per_minute
        self.max_pending = max_pending
        self.bounds = bounds
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._pending: dict[str, set[int]] = {}  # source -> its groups waiting for activation
        self._source_of: dict[int, str] = {}  # group -> the source that created it

    def configure(self, *, per_minute: float, max_pending: int) -> None:
        """New limits (SIGHUP); buckets and counts carry on."""
        self.per_minute, self.max_pending = per_minute, max_pending
        for bucket in self._buckets.values():
            bucket.rate, bucket.burst = per_minute / 60, max(per_minute, 1)

    def charge(self, source: str, now: float) -> None:
        """One invitation from ``source``; ``rate_limited`` when its bucket is empty."""
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.per_minute / 60, max(self.per_minute, 1))
            if len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        if not bucket.take(now):
            self.bounds.hit("invitations_per_ip", self.per_minute)
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED,
                f"too many invitations from this network address (at most {self.per_minute:g} a minute)",
            )

    def may_create(self, source: str) -> bool:
        """Whether ``source`` may have one more group waiting for activation."""
        return len(self._pending.get(source, ())) < self.max_pending

    def refuse_new(self) -> RemoteProtocolError:
        """The refusal of a new group for a source at its limit.  Called inside the transaction
        that would have created it, on the database thread: the bound is told after the commit."""
        self.bounds.hit_from_thread("pending_groups_per_ip", self.max_pending)
        return RemoteProtocolError(
            ErrorCode.RATE_LIMITED,
            f"this network address has {self.max_pending} channels waiting for activation here; "
            "publish a profile listing the relay for one of them, or wait until they expire",
        )

    def created(self, source: str, group_id: int) -> None:
        """A new group from ``source`` waits for activation."""
        self._pending.setdefault(source, set()).add(group_id)
        self._source_of[group_id] = source

    def settled(self, group_id: int) -> None:
        """The group is active or closed: it no longer counts against its source."""
        source = self._source_of.pop(group_id, None)
        if source is None:
            return
        groups = self._pending[source]
        groups.discard(group_id)
        if not groups:
            del self._pending[source]

    @property
    def pending(self) -> int:
        return len(self._source_of)
