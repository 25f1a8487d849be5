"""A client session with one relay address, over trio-websocket.

Opening a session performs the ``hello``/``welcome`` exchange and verifies that
the relay's card is signed by the key whose fingerprint the address pins;
:meth:`RelaySession.request` then sends one frame and returns the one answer.
Every request signed for the session names its :attr:`RelaySession.challenge`
(the relay refuses it on any other connection), so requests are signed after
the session is open, never before.  Every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from relay.client.errors import (
    RelayIdentityError,
    RelayProtocolError,
    RelayRefused,
    RelayUnreachable,
)
from relay.protocol.addresses import RelayAddress
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ProtocolError
from relay.protocol.handshake import verify_welcome
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    ClientFrame,
    Error,
    Hello,
    RelayCard,
    RelayFrame,
    Welcome,
)

MAX_ANSWER = 1024 * 1024
DEFAULT_TIMEOUT = 15.0
DISCONNECT_TIMEOUT = 2.0

# The local address new sessions connect from; None: the system's choice.
_local_address: ContextVar[str | None] = ContextVar("relay_client_local_address", default=None)


@contextmanager
def connecting_from(local_address: str) -> Iterator[None]:
    """Open every session in this context (and the tasks it starts) from ``local_address``:
    a host with several addresses, or a test standing in for another host (127.0.0.2)."""
    token = _local_address.set(local_address)
    try:
        yield
    finally:
        _local_address.reset(token)


class RelaySession:
    def __init__(self, ws: WebSocketConnection, card: RelayCard, timeout: float) -> None:
        self._ws = ws
        self.card = card
        self.timeout = timeout

    @property
    def challenge(self) -> bytes:
        """The relay's challenge for this connection: the ``session`` of every request signed
        to be sent on it."""
        return self.card.challenge

    async def request(self, frame: ClientFrame) -> RelayFrame:
        """Send ``frame``; return the answer, or raise :class:`RelayRefused` for an error frame."""
        answer = await _exchange(self._ws, frame, self.timeout)
        if isinstance(answer, Error):
            raise RelayRefused(answer.reason, code=answer.code)
        return answer

    async def send(self, frame: ClientFrame) -> None:
        """Send one frame without waiting for an answer (on a subscribed feed)."""
        try:
            with trio.fail_after(self.timeout):
                await self._ws.send_message(encode(frame))
        except trio.TooSlowError:
            raise RelayUnreachable(f"could not send within {self.timeout:g} s") from None
        except ConnectionClosed as exc:
            raise RelayUnreachable(f"the relay closed the connection ({_close_code(exc)})") from None

    async def receive(self) -> RelayFrame:
        """The next frame the relay sends (an answer or a push); the caller bounds the wait."""
        try:
            data = await self._ws.get_message()
        except ConnectionClosed as exc:
            raise RelayUnreachable(f"the relay closed the connection ({_close_code(exc)})") from None
        return _decode(data)


def _close_code(exc: ConnectionClosed) -> str:
    return str(exc.reason.code) if exc.reason else "?"


def _decode(data: bytes | str) -> RelayFrame:
    if isinstance(data, str):
        raise RelayProtocolError("the relay sent a text frame")
    try:
        return decode(data, RelayFrame, limit=MAX_ANSWER, what="relay frame")  # type: ignore[arg-type]
    except ProtocolError as exc:
        raise RelayProtocolError(exc.reason, code=exc.code.value) from None


async def _exchange(ws: WebSocketConnection, frame: ClientFrame, timeout: float) -> RelayFrame:
    try:
        with trio.fail_after(timeout):
            await ws.send_message(encode(frame))
            data = await ws.get_message()
    except trio.TooSlowError:
        raise RelayUnreachable(f"no answer within {timeout:g} s") from None
    except ConnectionClosed as exc:
        reason = exc.reason
        raise RelayUnreachable(
            f"the relay closed the connection ({reason.code if reason else '?'})"
        ) from None
    return _decode(data)


@asynccontextmanager
async def open_session(
    address: RelayAddress, *, timeout: float = DEFAULT_TIMEOUT
) -> AsyncIterator[RelaySession]:
    """Connect to ``address`` and prove the relay's identity; a fresh connection every time."""
    nonce = secrets.token_bytes(32)
    connected = False
    try:
        async with _websocket(address.websocket_url, timeout) as ws:
            connected = True
            answer = await _exchange(ws, Hello(version=PROTOCOL_VERSION, nonce=nonce), timeout)
            if isinstance(answer, Error):
                raise RelayRefused(answer.reason, code=answer.code)
            if not isinstance(answer, Welcome):
                raise RelayProtocolError(f"expected welcome, got {type(answer).__name__}")
            try:
                card = verify_welcome(answer, fingerprint=address.fingerprint, nonce=nonce)
            except ProtocolError as exc:
                raise RelayIdentityError(exc.reason, code=exc.code.value) from None
            yield RelaySession(ws, card, timeout)
    except (OSError, HandshakeError, trio.TooSlowError) as exc:
        if connected:
            raise
        raise RelayUnreachable(f"cannot reach {address.base}: {exc}") from None


@asynccontextmanager
async def _websocket(url: str, timeout: float) -> AsyncIterator[WebSocketConnection]:
    local = _local_address.get()
    if local is None:
        async with open_websocket_url(
            url, max_message_size=MAX_ANSWER, connect_timeout=timeout, disconnect_timeout=DISCONNECT_TIMEOUT
        ) as ws:
            yield ws
        return
    # trio-websocket cannot pick the local address: connect first, then wrap the stream.
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(timeout):
                tcp = await trio.open_tcp_stream(host, port, local_address=local)
                stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
                if parts.scheme == "wss":
                    stream = trio.SSLStream(
                        tcp, ssl.create_default_context(), server_hostname=host, https_compatible=True
                    )
                    await stream.do_handshake()
                ws = await wrap_client_stream(
                    nursery, stream, parts.netloc, parts.path or "/", max_message_size=MAX_ANSWER
                )
            try:
                yield ws
            finally:
                with trio.move_on_after(DISCONNECT_TIMEOUT):
                    await ws.aclose()
    except BaseExceptionGroup as group:
        # The nursery groups what its body raises; callers expect the exception itself, as
        # open_websocket_url gives it (the reader task ends quietly with the connection).
        if len(group.exceptions) == 1:
            inner = group.exceptions[0]
            raise inner from inner.__cause__
        raise
