"""The helper tasks of one connection, run in a nursery that every connection shares.

A subscribed member's connection needs a second task now and then: the fan-out's
sender, while the member has a backlog.  A nursery of its own per connection would
own it neatly, but a subscribed member waits for days and a nursery (with its cancel
scope, cancel status and parking lot) is about 1.3 KiB per connection, most of an idle
member's cost.  So the helpers run in the relay's connections nursery, and this small
object keeps what the nursery would have: every helper runs inside its own cancel scope
(made when it starts, gone when it ends), the connection cancels them and waits for
them before it closes, a helper that fails is logged and ends only its connection, and
a helper can end its connection (cancel the other helpers and wake the reader).

Must not: let a helper outlive its connection, or let one helper's bug reach the shared
nursery (it would stop every connection).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

log = structlog.get_logger("relay.public")


class ConnectionTasks:
    """One connection's helper tasks; ``end_connection`` wakes the connection's reader."""

    __slots__ = ("_done", "_end_connection", "_nursery", "_scopes", "closed")

    def __init__(self, nursery: trio.Nursery, end_connection: Callable[[], None]) -> None:
        self._nursery = nursery
        self._end_connection = end_connection
        self._scopes: set[trio.CancelScope] | None = None  # the helpers running (made on demand)
        self._done: trio.Event | None = None  # set when the last helper ends, once closing
        self.closed = False

    def start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` as a helper (in the caller's context, like ``Nursery.start_soon``)."""
        if self.closed:
            return
        scope = trio.CancelScope()
        if self._scopes is None:
            self._scopes = set()
        self._scopes.add(scope)
        self._nursery.start_soon(self._run, scope, fn)

    async def _run(self, scope: trio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            with scope:
                await fn()
        except Exception:
            # As if it had failed in the connection's own nursery: this connection alone ends.
            log.exception("connection.internal_error")
            self.end_connection()
        finally:
            assert self._scopes is not None
            self._scopes.discard(scope)
            if not self._scopes:
                self._scopes = None  # an empty set is 216 bytes, kept for days by an idle member
                if self._done is not None:
                    self._done.set()

    def end_connection(self) -> None:
        """Cancel every helper and wake the connection's reader, which then ends it."""
        self.cancel()
        self._end_connection()

    def cancel(self) -> None:
        for scope in self._scopes or ():
            scope.cancel()

    async def aclose(self) -> None:
        """By the connection's task as it ends: no new helper, the running ones cancelled and
        waited for (they only need to reach their next checkpoint)."""
        self.closed = True
        self.cancel()
        if self._scopes:
            self._done = trio.Event()
            with trio.CancelScope(shield=True):
                await self._done.wait()
