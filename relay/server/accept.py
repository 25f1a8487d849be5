"""The relay's own accept loop: admission at the TCP accept, and no traceback when descriptors run out.

``trio.serve_listeners`` starts a task for every connection before anyone can look at it,
and reports a failed ``accept`` (the process out of file descriptors, the kernel out of
buffers) through the stdlib ``logging`` module as a traceback.  Here a connection is
first offered to ``admit`` (synchronous, with the peer's address the accept returned):
a refused one is closed at once, with no task, no read and nothing parsed.  An admitted
one gets its handler task in the connections nursery, with what ``admit`` returned.
Running out of descriptors (or kernel memory) is a ``bound.hit`` of bound ``fd_limit``
and a short pause; the loop goes on by itself when descriptors come back (the pending
connections wait in the listen backlog meanwhile).

Must not: read from a connection, or log a client's address.
"""

from __future__ import annotations

import errno
import resource
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from relay.server.bounds import Bounds

T = TypeVar("T")

# Out of descriptors (this process, or the whole system) or of kernel memory: wait, then retry.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The connection died between the kernel's accept and ours, or a firewall refused it: skip it.
# (The same set trio's SocketListener ignores.)
IGNORED_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.EAGAIN, errno.EWOULDBLOCK})
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0


def fd_limit() -> int:
    """The process's soft limit on open files (the ``limit`` of a ``fd_limit`` hit)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(
    listener: trio.SocketListener,
    *,
    admit: Callable[[object], T | None],
    handler: Callable[[trio.SocketStream, T], Awaitable[None]],
    nursery: trio.Nursery,
    bounds: Bounds,
) -> None:
    """Accept connections on ``listener`` until cancelled (see the module docstring)."""
    sock = listener.socket
    backoff = BACKOFF_FIRST
    while True:
        try:
            conn, address = await sock.accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                bounds.hit("fd_limit", fd_limit(), error=errno.errorcode.get(exc.errno or 0, "?"))
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            if exc.errno in IGNORED_ERRNOS:
                continue
            raise
        backoff = BACKOFF_FIRST
        ticket = admit(address)
        if ticket is None:
            conn.close()  # before any byte is read; the peer sees the connection end at once
            continue
        nursery.start_soon(handler, trio.SocketStream(conn), ticket)
