"""The relay's clock: wall time for dates, trio's clock for waits.

Two kinds of time run through the relay, and mixing them up is a bug either way:

- **Dates** go on the wire or into the database: when a request was received, a group's
  activation deadline, a failed request's next attempt, a post's storage time.  They must
  survive a restart and mean the same thing to every party, so they are wall time,
  seconds (or milliseconds) since the epoch: :meth:`Clock.now`, :meth:`Clock.now_ms`.
- **Waits** (a back-off, a sweep interval, a token bucket's refill) are measured on trio's
  clock: :meth:`Clock.monotonic` and ``trio.sleep``/``move_on_after``, which never jump
  when the system's wall clock is set.

One :class:`Clock` is made by the daemon and passed to every component that dates or
waits on something (the service, and through it the join worker, the activation sweep,
the pruner and the invitation budgets; the bounds' log limiter).  The sweeper and the
connections read trio's clock directly, which is the same clock.  Tests run those components on trio's
``MockClock``, which drives the waits, with a wall clock that follows it
(``Clock(wall=lambda: start + trio.current_time())``): virtual hours pass in
milliseconds, and dates move with them.

Must not: sleep, or read trio's clock outside a trio run (``monotonic`` needs one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


class Clock:
    """Wall time from ``wall`` (``time.time`` unless a test gives another), waits on trio's."""

    __slots__ = ("_wall",)

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall

    def time(self) -> float:
        """Seconds since the epoch, as a float."""
        return self._wall()

    def now(self) -> int:
        """Whole seconds since the epoch: the dates the relay stores and signs."""
        return int(self._wall())

    def now_ms(self) -> int:
        """Milliseconds since the epoch (the join queue's back-off deadlines)."""
        return int(self._wall() * 1000)

    @staticmethod
    def monotonic() -> float:
        """trio's clock, in seconds: for intervals and rates (what ``MockClock`` drives)."""
        return trio.current_time()
