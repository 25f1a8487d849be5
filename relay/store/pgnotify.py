"""PostgreSQL's LISTEN/NOTIFY for a fleet of relay processes: one listening connection, one
sending connection, both driven from a worker thread.

:class:`Listener` holds a connection that has run ``LISTEN relay_fleet`` and hands back the
payloads that arrive (waiting at most a given time, so the thread driving it can stop).
:class:`Sender` holds an autocommit connection that sends payloads with ``pg_notify`` (for
what is told after a commit; what belongs to a transaction is announced inside it, by
``relay.store.fleet.announce``).  Both raise :class:`relay.store.errors.StoreUnavailable`
when the server cannot be reached or the connection is lost: the caller reconnects.

Must not: interpret payloads (``relay.server.fleet`` does), log a password, or be used from
more than one thread at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from relay.store.errors import StoreUnavailable
from relay.store.fleet import CHANNEL
from relay.store.postgres import connect

MAX_PAYLOAD = 7999  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        text = str(exc).strip()
        raise StoreUnavailable(text.splitlines()[0] if text else type(exc).__name__) from exc


class Listener:
    """A connection listening on the fleet's channel (opened by the constructor)."""

    def __init__(self, url: str) -> None:
        with _unavailable():
            self._conn: psycopg.Connection[Any] = connect(url)
            try:
                self._conn.execute(f"LISTEN {CHANNEL}")
            except BaseException:
                self._conn.close()
                raise

    def wait(self, timeout: float) -> list[str]:
        """The payloads that arrive within ``timeout`` seconds (returns soon after the first
        ones, with everything that came with them); raises StoreUnavailable if the connection
        is lost."""
        payloads: list[str] = []
        with _unavailable():
            for notify in self._conn.notifies(timeout=timeout, stop_after=1):
                payloads.append(notify.payload)
            if self._conn.closed or self._conn.broken:
                raise psycopg.OperationalError("the listening connection was closed")
        return payloads

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()


class Sender:
    """An autocommit connection that sends payloads on the fleet's channel."""

    def __init__(self, url: str) -> None:
        with _unavailable():
            self._conn: psycopg.Connection[Any] = connect(url)

    def send(self, payloads: Sequence[str]) -> None:
        """Send ``payloads`` in one transaction (delivered together, in this order)."""
        with _unavailable(), self._conn.transaction():
            for payload in payloads:
                self._conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload[:MAX_PAYLOAD]))

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
