"""Budgets a hostile client must not exhaust for others: per source, and for held bytes.

:class:`SourceBudgets` keeps, per source (relay.server.sources: an IPv4 address or an IPv6
prefix), the connections it has open, a token bucket of new connections and one of
requests (shared by all its connections).  The table is bounded: an entry exists while
its source has a connection open, and goes once it has none and both buckets are full
again (a source that has come and gone is then indistinguishable from a new one).  Entries
of sources without a connection are kept in the order they went idle, at most
``max(1024, max_connections)`` of them: the oldest is evicted first (its source gets fresh
buckets, which only ever errs on the lenient side).

:class:`BufferBudget` counts the bytes held in partly received WebSocket messages over all
connections, and remembers when each connection's message started (the sweeper closes the
ones that take longer than ``message_timeout``).  One source may hold at most a quarter of
it, so a single host cannot spend it all.

Pure bookkeeping: the caller passes the time (trio's clock), nothing here waits or logs,
and a source key (a client address) goes nowhere but into these tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.server.config import ServerConfig

# Bound names (``bound.hit``, ``relay_bounds_hit_total{bound=...}``).
CONNECTIONS_PER_IP = "connections_per_ip"
CONNECTION_RATE_PER_IP = "connection_rate_per_ip"
REQUESTS_PER_IP = "requests_per_ip"
SOURCES = "sources"
BUFFERED_BYTES = "buffered_bytes"
BUFFERED_BYTES_PER_IP = "buffered_bytes_per_ip"

MIN_IDLE_SOURCES = 1024
SOURCE_SHARE = 4  # one source holds at most 1/SOURCE_SHARE of the buffered-bytes budget


class Source:
    """One source's budgets; also its share of the buffered bytes (a WebSocket holds it)."""

    __slots__ = (
        "budget",
        "buffered",
        "conn_last",
        "conn_tokens",
        "connections",
        "idle_since",
        "req_last",
        "req_tokens",
    )

    def __init__(self, budget: BufferBudget, now: float, conn_burst: float, req_burst: float) -> None:
        self.budget = budget
        self.connections = 0
        self.conn_tokens = conn_burst
        self.conn_last = now
        self.req_tokens = req_burst
        self.req_last = now
        self.idle_since = now
        self.buffered = 0  # bytes this source's connections hold in partly received messages

    # --- the WebSocket's side of the buffered-bytes budget (see relay.server.http) -------

    def take(self, holder: object, size: int, now: float) -> str | None:
        """Hold ``size`` more bytes for ``holder``; the name of the bound refusing it, or None."""
        budget = self.budget
        if budget.used + size > budget.limit:
            return BUFFERED_BYTES
        if self.buffered + size > budget.per_source:
            return BUFFERED_BYTES_PER_IP
        self.buffered += size
        budget.used += size
        budget.holders.setdefault(holder, now)
        if budget.used > budget.peak:
            budget.peak = budget.used
        return None

    def give(self, holder: object, size: int) -> None:
        """``holder`` no longer holds its ``size`` bytes (its message is complete, or it ended)."""
        self.budget.holders.pop(holder, None)
        self.buffered -= size
        self.budget.used -= size


class BufferBudget:
    """Bytes in partly received messages, over all connections, and who holds them since when."""

    __slots__ = ("holders", "limit", "peak", "per_source", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_source = max(1, limit // SOURCE_SHARE)
        self.used = 0
        self.peak = 0  # the most held since the sweeper last looked (it resets it)
        # holder (a WebSocket) -> when its message started; only connections mid-message.
        self.holders: dict[object, float] = {}


def _refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    return min(burst, tokens + max(0.0, now - last) * rate)


class SourceBudgets:
    """Connections and request rates per source, in a bounded table (one per relay)."""

    def __init__(self, config: ServerConfig, buffers: BufferBudget) -> None:
        self.max_connections = config.max_connections_per_ip
        self.conn_rate = config.connections_per_ip_per_second
        self.conn_burst = float(config.connection_burst_per_ip)
        self.req_rate = config.requests_per_ip_per_second
        self.req_burst = float(config.request_burst_per_ip)
        self.buffers = buffers
        self.max_idle = max(MIN_IDLE_SOURCES, config.max_connections)
        self.sources: dict[str, Source] = {}
        # Sources with no connection open, oldest first (a dict keeps insertion order).
        self._idle: dict[str, None] = {}
        self.evicted = 0  # idle entries dropped before their buckets were full (the caller reports)

    def __len__(self) -> int:
        return len(self.sources)

    def admit(self, key: str, now: float) -> Source | str:
        """A new connection from ``key``: its entry (the connection is counted), or the bound refusing it."""
        source = self.sources.get(key)
        if source is None:
            source = self.sources[key] = Source(self.buffers, now, self.conn_burst, self.req_burst)
        elif source.connections >= self.max_connections:
            return CONNECTIONS_PER_IP
        tokens = _refill(source.conn_tokens, source.conn_last, now, self.conn_rate, self.conn_burst)
        source.conn_last = now
        if tokens < 1:  # never for a new entry (its bucket starts full): no table change here
            source.conn_tokens = tokens
            return CONNECTION_RATE_PER_IP
        source.conn_tokens = tokens - 1
        if source.connections == 0:
            self._idle.pop(key, None)
        source.connections += 1
        return source

    def release(self, key: str, now: float) -> None:
        """A connection from ``key`` ended."""
        source = self.sources.get(key)
        if source is None:
            return
        source.connections -= 1
        if source.connections <= 0:
            source.connections = 0
            if self._full(source, now):
                del self.sources[key]
            else:
                self._went_idle(key, source, now)

    def share(self, key: str) -> Source | None:
        """The entry of a source with a connection open: its connections' share of held bytes."""
        return self.sources.get(key)

    def charge_request(self, key: str, now: float) -> bool:
        """One request from ``key``: True if its bucket had a token."""
        source = self.sources.get(key)
        if source is None:
            return True  # no entry: a connection not admitted through this table
        tokens = _refill(source.req_tokens, source.req_last, now, self.req_rate, self.req_burst)
        source.req_last = now
        if tokens < 1:
            source.req_tokens = tokens
            return False
        source.req_tokens = tokens - 1
        return True

    def prune(self, now: float) -> int:
        """Forget idle sources whose buckets are full again; returns how many were dropped."""
        dropped = 0
        for key in list(self._idle):
            source = self.sources.get(key)
            if source is None or source.connections:
                self._idle.pop(key, None)
                continue
            if self._full(source, now):
                del self._idle[key]
                del self.sources[key]
                dropped += 1
        return dropped

    def _went_idle(self, key: str, source: Source, now: float) -> None:
        source.idle_since = now
        self._idle.pop(key, None)
        self._idle[key] = None
        while len(self._idle) > self.max_idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            if self.sources.get(oldest) is not None and not self.sources[oldest].connections:
                del self.sources[oldest]
                self.evicted += 1

    def _full(self, source: Source, now: float) -> bool:
        return (
            source.buffered == 0
            and _refill(source.conn_tokens, source.conn_last, now, self.conn_rate, self.conn_burst)
            >= self.conn_burst
            and _refill(source.req_tokens, source.req_last, now, self.req_rate, self.req_burst)
            >= self.req_burst
        )
