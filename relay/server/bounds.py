"""One way to report a bound that was hit: a metric series and a ``bound.hit`` log event.

Every queue, buffer, table and budget of the relay is bounded (docs/security.md lists
them); when one refuses something, the operator sees it twice: the counter
``relay_bounds_hit_total{bound=...}`` counts every hit, and a ``bound.hit`` warning names
the bound and its limit.  The log line is rate-limited per bound (one per
``LOG_INTERVAL`` seconds, carrying how many hits it stands for), because a flood
against a bound must not become a flood in the log.

Must not: log who hit the bound (no client address, no whole key).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from relay.server.metrics import Metrics

log = structlog.get_logger("relay.bounds")

LOG_INTERVAL = 10.0


class LogThrottle:
    """At most one log line per key every ``interval`` seconds, each saying how many
    occurrences it stands for: what a client can make happen at will (a refusal, a bound
    hit) is counted in full by its metric but must not become a flood in the log.

    Keys must come from a small, fixed set (bound names, error codes, reasons): the table
    is not bounded otherwise.
    """

    def __init__(
        self, interval: float = LOG_INTERVAL, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def due(self, key: str, count: int = 1) -> int:
        """0 if this occurrence is not logged; else how many the line stands for (this
        ``count`` and those not logged since the last line)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._unlogged[key] = self._unlogged.get(key, 0) + count
            return 0
        self._last[key] = now
        return self._unlogged.pop(key, 0) + count


class Bounds:
    """The relay's reporter of bounds hit (one per process, made at start-up)."""

    def __init__(
        self, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic, interval: float = LOG_INTERVAL
    ) -> None:
        self.metrics = metrics
        self._throttle = LogThrottle(interval, clock=clock)
        self._lock = threading.Lock()
        self._deferred: list[tuple[str, float, int, dict[str, object]]] = []

    def hit_from_thread(self, bound: str, limit: float, count: int = 1, **fields: object) -> None:
        """Like :meth:`hit`, from the database thread: told at the next :meth:`flush`.

        Metrics and logs belong to the trio thread; the relay flushes after every commit, so
        a bound hit inside a transaction is reported once that transaction is done.
        """
        with self._lock:
            self._deferred.append((bound, limit, count, fields))

    def flush(self) -> None:
        """Report the hits queued by :meth:`hit_from_thread` (on the trio thread)."""
        with self._lock:
            deferred, self._deferred = self._deferred, []
        for bound, limit, count, fields in deferred:
            self.hit(bound, limit, count, **fields)

    def hit(self, bound: str, limit: float, count: int = 1, **fields: object) -> None:
        """``bound`` refused ``count`` things at its ``limit``; ``fields`` add context (no addresses).

        On the trio thread only (see :meth:`hit_from_thread`).
        """
        self.metrics.inc("relay_bounds_hit_total", count, bound=bound)
        hits = self._throttle.due(bound, count)
        if hits:
            log.warning("bound.hit", bound=bound, limit=limit, hits=hits, **fields)
