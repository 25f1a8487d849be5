"""What the client is waiting for, told to whoever listens (the command line's status line).

The library marks each wait on the network (a connection, an answer, a decision) with
:func:`waiting`; a listener set with :func:`listen` hears when each begins and ends, and
decides what to show.  With no listener a wait costs a function call.  This module must
not print or read the clock itself: showing waits is the listener's business.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Listener(Protocol):
    def begin(self, what: str) -> object:
        """A wait for ``what`` began; returns a token for :meth:`end`."""

    def end(self, token: object) -> None:
        """The wait of ``token`` ended (answered, failed or cancelled)."""


_listener: Listener | None = None


def listen(listener: Listener | None) -> None:
    """Tell ``listener`` about every wait from now on (None: nobody)."""
    global _listener
    _listener = listener


@contextmanager
def waiting(what: str) -> Iterator[None]:
    """Mark the block as a wait for ``what`` ("an answer from 127.0.0.1:7300", ...)."""
    listener = _listener
    if listener is None:
        yield
        return
    token = listener.begin(what)
    try:
        yield
    finally:
        listener.end(token)
