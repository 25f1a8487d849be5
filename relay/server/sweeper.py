"""One relay-wide task for every deadline a connection would otherwise need a timer for.

Members stay connected for days, and a task or a cancel scope per connection would be
most of an idle member's memory (benchmarks/README.md).  So the deadlines that run while
nothing happens on a connection are checked here, a few times per period, by walking what
the relay holds anyway:

- **Messages in progress** (the holders of :class:`relay.server.budgets.BufferBudget`): a
  message started ``message_timeout`` seconds ago and not complete ends its connection
  (error ``timeout``, close 1008).  Checked every tick (at most a second apart).
- **Subscribed sessions** (every feed of the fan-out): nothing heard for ``ping_interval``
  seconds gets a WebSocket Ping (``WebSocket.heard``, ``WebSocket.pinged``); nothing heard
  within ``pong_timeout`` after it ends the connection (error ``timeout``, close 1008).
  Walked every quarter of the shorter of the two, in slices, so that a relay with many
  members is not held up by one long walk.
- **Tables**: per-source entries whose buckets are full again are forgotten; the gauges
  of the source table and of the buffered bytes are set.
- **Memory**: after a spike of buffered bytes, or when connections went away in large
  numbers (each threshold one a single source can reach: a source holds at most a quarter of
  the buffered-bytes budget, and ``max_connections_per_ip`` connections), or whenever the C
  heap's free bytes rose ``TRIM_FREE`` above the fewest seen since the last trim, whatever
  freed them (a lagging member's backlog, a burst of any kind), the C allocator is asked to
  give free memory back (relay.server.memory).  Free bytes a trim cannot give back (pieces
  smaller than a page) stay the floor, so they do not make the sweeper trim again and again.

The sweeper only marks and wakes: each connection's own task logs why it ended, in its
own context.  Must not: wait on a connection (every write here is non-blocking).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode
from relay.protocol.messages import Error
from relay.server import memory
from relay.server.bounds import Bounds
from relay.server.budgets import SOURCES, BufferBudget, SourceBudgets
from relay.server.config import ServerConfig
from relay.server.fanout import FanOut, Feed
from relay.server.http import CLOSE_POLICY, PING, WebSocket, prepared_message
from relay.server.metrics import Metrics

log = structlog.get_logger("relay.sweeper")

SLICE = 1000  # feeds checked between two schedule points
PRUNE_EVERY = 5.0  # seconds between passes over the source table
TRIM_EVERY = 10.0  # seconds between two trims of the C heap at most
TRIM_AFTER = 16 * 1024 * 1024  # a peak of buffered bytes worth a trim once it has gone
TRIM_FREE = 2 * 1024 * 1024  # free bytes in the C heap, above their floor, worth a trim (a few ms)
TRIM_AFTER_CONNECTIONS = 1000  # connections gone since the last trim worth one


class Sweeper:
    def __init__(
        self,
        config: ServerConfig,
        *,
        fanout: FanOut,
        buffers: BufferBudget,
        sources: SourceBudgets,
        metrics: Metrics,
        bounds: Bounds,
        open_connections: Callable[[], int] = lambda: 0,
    ) -> None:
        self.config = config
        self.fanout = fanout
        self.buffers = buffers
        self.sources = sources
        self.metrics = metrics
        self.bounds = bounds
        self.feed_period = max(0.05, min(config.ping_interval, config.pong_timeout) / 4)
        self.tick = max(0.05, min(1.0, config.message_timeout / 4, self.feed_period))
        self._slow_message = self._goodbye(f"a message took more than {config.message_timeout:g} s")
        self._no_pong = self._goodbye(f"no answer to a ping within {config.pong_timeout:g} s")
        self._evicted = 0
        self._trimmed_at = 0.0
        self.open_connections = open_connections
        self._connections_peak = 0  # the most open connections seen since the last trim
        self._free_low: int | None = None  # the fewest free heap bytes seen since the last trim

    @staticmethod
    def _goodbye(reason: str) -> tuple[bytes, str]:
        return prepared_message(encode(Error(code=ErrorCode.TIMEOUT.value, reason=reason))), reason

    async def run(self) -> None:
        """Until cancelled (the daemon's acceptors nursery owns it)."""
        next_feeds = trio.current_time() + self.feed_period
        next_prune = trio.current_time() + PRUNE_EVERY
        while True:
            await trio.sleep(self.tick)
            now = trio.current_time()
            self.expire_messages(now)
            if now >= next_feeds:
                await self.sweep_feeds()
                next_feeds = trio.current_time() + self.feed_period
            if now >= next_prune:
                self.prune(now)
                next_prune = now + PRUNE_EVERY
            self.metrics.set("relay_buffered_bytes", self.buffers.used)
            self._connections_peak = max(self._connections_peak, self.open_connections())

    # --- messages in progress ---------------------------------------------------------

    def expire_messages(self, now: float) -> int:
        """End the connections whose message started more than ``message_timeout`` ago."""
        limit = self.config.message_timeout
        late = [holder for holder, started in self.buffers.holders.items() if now - started >= limit]
        goodbye, reason = self._slow_message
        for holder in late:
            assert isinstance(holder, WebSocket)
            self.buffers.holders.pop(holder, None)  # once: its bytes are given back as it ends
            holder.abort(goodbye, CLOSE_POLICY, ErrorCode.TIMEOUT.value, reason)
        return len(late)

    # --- subscribed sessions --------------------------------------------------------------

    async def sweep_feeds(self) -> tuple[int, int]:
        """Ping the silent feeds, end those that did not answer; returns (pinged, ended)."""
        interval, timeout = self.config.ping_interval, self.config.pong_timeout
        feeds: list[Feed] = [feed for hub in tuple(self.fanout.hubs.values()) for feed in hub.attached]
        goodbye, reason = self._no_pong
        pinged = ended = 0
        now = trio.current_time()
        for index, feed in enumerate(feeds):
            if index and not index % SLICE:
                await trio.sleep(0)
                now = trio.current_time()
            if feed.closed or feed.ending is not None:
                continue
            ws = feed.ws
            if ws.pinged:
                if ws.heard >= ws.pinged:
                    ws.pinged = 0.0  # answered (a Pong, or anything else)
                elif now - ws.pinged >= timeout:
                    ended += 1
                    ws.abort(goodbye, CLOSE_POLICY, ErrorCode.TIMEOUT.value, reason)
                continue
            if now - ws.heard >= interval and feed.push_ping(PING):
                ws.pinged = now
                pinged += 1
        if pinged:
            self.metrics.inc("relay_pings_total", pinged)
        if ended:
            self.metrics.inc("relay_ping_timeouts_total", ended)
        return pinged, ended

    # --- tables and memory ----------------------------------------------------------------

    def prune(self, now: float) -> None:
        self.sources.prune(now)
        if self.sources.evicted > self._evicted:
            self.bounds.hit(SOURCES, self.sources.max_idle, count=self.sources.evicted - self._evicted)
            self._evicted = self.sources.evicted
        self.metrics.set("relay_sources", len(self.sources))
        self.maybe_trim(now)

    def maybe_trim(self, now: float) -> bool:
        """Give free heap memory back to the system once a spike has gone (of bytes held in
        partly received messages, or of connections), or when the heap holds ``TRIM_FREE``
        bytes it does not use, more than before (at most one trim per ``TRIM_EVERY``)."""
        free = memory.free_bytes()
        if free is not None:
            self._free_low = free if self._free_low is None else min(self._free_low, free)
        if now - self._trimmed_at < TRIM_EVERY:
            return False
        buffers = self.buffers
        # Half a source's share: one source (it holds at most its share) can make a spike.
        held_after = min(TRIM_AFTER, buffers.per_source // 2)
        held_spike = buffers.peak >= held_after and buffers.used <= buffers.peak // 4
        open_now = self.open_connections()
        gone = self._connections_peak - open_now
        after = min(TRIM_AFTER_CONNECTIONS, self.sources.max_connections)
        connection_spike = gone >= after and open_now <= self._connections_peak // 2
        freed = free is not None and self._free_low is not None and free - self._free_low >= TRIM_FREE
        if not (held_spike or connection_spike or freed):
            return False
        self._free_low = free
        self._trimmed_at = now
        buffers.peak = buffers.used
        self._connections_peak = open_now
        return memory.trim()
