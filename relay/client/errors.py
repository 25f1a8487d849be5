"""One exception hierarchy for every client failure, so a caller can catch :class:`RelayError`.

- :class:`RelayUnreachable`: no connection (refused, DNS, time-out, closed early).
- :class:`RelayIdentityError`: the relay could not prove it holds the pinned key.
- :class:`RelayRefused`: the relay answered with a typed error (``code``, ``reason``).
- :class:`RelayProtocolError`: the relay sent something the protocol forbids.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the client library raises."""

    code: str = "error"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class RelayUnreachable(RelayError):
    code = "unreachable"


class RelayIdentityError(RelayError):
    code = "wrong_relay"


class RelayRefused(RelayError):
    """The relay refused the request; ``code`` is the wire error code."""

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class RelayProtocolError(RelayError):
    code = "protocol_error"
