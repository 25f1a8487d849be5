"""One exception hierarchy for every client failure, and the one place other errors become it.

- :class:`RelayError`: the base; ``code`` (a short word) and ``reason`` (one line for people).
- :class:`RelayUnreachable`: no connection (refused, DNS, TLS, closed early), or a peer that
  stopped answering (``code`` ``timeout``).
- :class:`RelayIdentityError`: the relay could not prove it holds the pinned key.
- :class:`RelayRefused`: the relay answered with a typed error (``code``, ``reason``).
- :class:`RelayProtocolError`: the relay sent something the protocol forbids.

:func:`translate` (and :func:`translated` around a block) turns what the transports raise
-- trio-websocket's closed connections and refused handshakes, ``OSError``, TLS errors,
trio's time-outs, httpx's errors, local :class:`~relay.protocol.errors.ProtocolError`\\ s --
into these, each with a reason that is never empty; :func:`file_error` does the same for a
state or key file that cannot be read or written.  Nothing else in ``relay.client`` catches
a transport's exceptions.  This module must not print, and must not put a secret in a reason.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.protocol.errors import ProtocolError


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


def _os_reason(exc: OSError) -> str:
    """An OSError in words: its strerror, else its errno's name, else its class."""
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if exc.errno:
        return os.strerror(exc.errno)  # not exc.strerror: trio puts the socket address tuple in it
    if exc.strerror:
        return str(exc.strerror)
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):  # trio's "all attempts to connect ... failed"
        reasons = dict.fromkeys(_os_reason(e) for e in cause.exceptions if isinstance(e, OSError))
        if reasons:
            return ", ".join(reasons)
    if isinstance(cause, OSError):
        return _os_reason(cause)
    return str(exc) or type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause or context: what httpx and trio wrap (an OSError, an SSLError)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def translate(
    exc: BaseException, *, where: str = "the relay", timeout: float | None = None, from_relay: bool = True
) -> RelayError | None:
    """``exc`` as a :class:`RelayError` about ``where`` (a relay's or port's address), or None
    for an exception that is not a failure of the peer or the network (a bug stays itself).

    ``timeout``: the bound that a :class:`trio.TooSlowError` ran into, named in the reason.
    ``from_relay``: a :class:`ProtocolError` came from what the relay sent
    (:class:`RelayProtocolError`) rather than from the user's own input (plain :class:`RelayError`).
    """
    bound = f" within {timeout:g} s" if timeout is not None else " in time"
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, ProtocolError):
        if from_relay:
            return RelayProtocolError(exc.reason, code=exc.code.value)
        return RelayError(exc.reason, code=exc.code.value)
    trio = sys.modules.get("trio")  # only a loaded trio (or trio-websocket) can have raised its errors
    if trio is not None and isinstance(exc, trio.TooSlowError):
        return _silent(where, bound)
    if "trio_websocket" in sys.modules and (error := _websocket_error(exc, where)) is not None:
        return error
    if type(exc).__module__.partition(".")[0] in ("h11", "wsproto") and type(exc).__name__.endswith(
        "ProtocolError"
    ):
        return RelayUnreachable(
            f"{where} broke the WebSocket protocol ({exc}): is that a chat-relay address?",
            code="protocol_error",
        )
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        why = " ".join(str(part) for part in (exc.reason, getattr(exc, "verify_message", None)) if part)
        return RelayUnreachable(f"no TLS with {where}: {why or exc}")
    if trio is not None and isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        inner = _root_cause(exc)
        if inner is not exc:
            return translate(inner, where=where, timeout=timeout, from_relay=from_relay)
        return RelayUnreachable(f"{where} closed the connection")
    if isinstance(exc, TimeoutError):
        return _silent(where, bound)
    if isinstance(exc, OSError):
        return RelayUnreachable(
            f"cannot reach {where}: {_os_reason(exc)} (is it running, and is the address right?)"
        )
    httpx = sys.modules.get("httpx")  # only a loaded httpx can have raised one of its errors
    if httpx is not None and isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        if isinstance(exc, httpx.TimeoutException):
            return _silent(where, bound)
        if isinstance(exc, httpx.ProtocolError):
            return RelayUnreachable(
                f"{where} did not answer in HTTP as the operator port does ({exc}): is that the operator "
                "port (admin_listen), not another one?",
                code="protocol_error",
            )
        inner = _root_cause(exc)
        if inner is not exc and (translated := translate(inner, where=where, timeout=timeout)) is not None:
            return translated
        if isinstance(exc, httpx.InvalidURL):
            return RelayError(f"{where} is not an address ({exc})", code="bad_address")
        return RelayUnreachable(f"cannot reach {where}: {str(exc) or type(exc).__name__}")
    return None


def _websocket_error(exc: BaseException, where: str) -> RelayError | None:
    """trio-websocket's errors (it is loaded: a session was opened)."""
    from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        why = f" ({reason.code}{': ' + reason.reason if reason and reason.reason else ''})" if reason else ""
        return RelayUnreachable(f"{where} closed the connection{why}")
    if isinstance(exc, ConnectionRejected):
        return RelayUnreachable(
            f"{where} answered HTTP {exc.status_code} instead of a WebSocket: is that a chat-relay address?"
        )
    if isinstance(exc, HandshakeError):
        return RelayUnreachable(f"{where} closed the connection during the WebSocket handshake")
    return None


def _silent(where: str, bound: str) -> RelayUnreachable:
    return RelayUnreachable(
        f"{where} did not answer{bound} (is the address right, and the peer not overloaded? "
        "try again, or give it more time with --timeout)",
        code="timeout",
    )


@contextmanager
def translated(
    *, where: str = "the relay", timeout: float | None = None, from_relay: bool = True
) -> Iterator[None]:
    """Raise what :func:`translate` makes of an exception from the block; others pass unchanged."""
    try:
        yield
    except RelayError:
        raise
    except Exception as exc:
        error = translate(exc, where=where, timeout=timeout, from_relay=from_relay)
        if error is None:
            raise
        raise error from None


def file_error(exc: OSError | ValueError, path: Path, *, doing: str, what: str = "") -> RelayError:
    """A file that cannot be read or written (``doing``: "read" or "write"), with what to do."""
    name = f"{what} {path}".strip()
    if isinstance(exc, ValueError):
        return RelayError(f"cannot {doing} {name}: it is not text", code=f"cannot_{doing}")
    if isinstance(exc, IsADirectoryError) or (exc.errno == errno.EISDIR):
        return RelayError(f"{path} is a folder; give a file name", code="is_a_folder")
    if isinstance(exc, NotADirectoryError):
        return RelayError(
            f"cannot {doing} {name}: a part of the path is not a folder", code=f"cannot_{doing}"
        )
    if isinstance(exc, FileNotFoundError) and doing == "write":
        return RelayError(
            f"cannot write {name}: the folder {path.parent} does not exist (create it first)",
            code="cannot_write",
        )
    if isinstance(exc, PermissionError):
        return RelayError(
            f"cannot {doing} {name}: permission denied (run as the file's owner, or choose a file you may "
            f"{doing})",
            code=f"cannot_{doing}",
        )
    if exc.errno == errno.EROFS:
        return RelayError(f"cannot write {name}: the file system is read-only", code="cannot_write")
    return RelayError(f"cannot {doing} {name}: {_os_reason(exc)}", code=f"cannot_{doing}")
