"""The systemd notification protocol (sd_notify), with the standard library only.

systemd (``Type=notify``) passes ``$NOTIFY_SOCKET``, a Unix datagram socket; the
daemon sends newline-separated ``KEY=VALUE`` assignments to it: ``READY=1``
once it serves, ``STOPPING=1`` when shutdown begins, ``WATCHDOG=1`` as a
heartbeat when ``$WATCHDOG_USEC`` asks for one, ``STATUS=...`` for humans.
An abstract socket name starts with ``@`` (a leading NUL byte on the wire).

Without ``$NOTIFY_SOCKET`` (a shell, a container, the tests) every call is a
no-op.  This module must not raise into the daemon: a notification that cannot
be delivered is dropped, since systemd then reports it (a start time-out or a
watchdog kill) better than a crash would.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import trio


class Notifier:
    """Sends sd_notify messages to the socket named in the environment (if any)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket; anything else must be an absolute path.
        if address.startswith("@"):
            self._address: str | bytes | None = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        else:
            self._address = None
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (``send(READY=1, STATUS="serving")``); True if delivered."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def stopping(self, status: str = "draining connections") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    async def watchdog(self) -> None:
        """Heartbeat for ``WatchdogSec=``: ``WATCHDOG=1`` every half period, until cancelled.

        Runs as a task on the trio loop, so a stuck loop stops the heartbeat and
        systemd restarts the relay, which is the point of the watchdog.
        """
        if self.watchdog_seconds is None or not self.enabled:
            return
        while True:
            self.send(WATCHDOG=1)
            await trio.sleep(self.watchdog_seconds / 2)


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog period, if systemd asked *this* process for heartbeats."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (a wrapper that exec'd us would pass its own)
    return usec / 1_000_000
