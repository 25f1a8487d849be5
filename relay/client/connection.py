"""A client session with one relay address, over trio-websocket.

Opening a session performs the ``hello``/``welcome`` exchange and verifies that
the relay's card is signed by the key whose fingerprint the address pins;
:meth:`RelaySession.request` then sends one frame and returns the one answer.
Every request signed for the session names its :attr:`RelaySession.challenge`
(the relay refuses it on any other connection), so requests are signed after
the session is open, never before.  Every wait is bounded by ``timeout``.

An ``https://`` address is dialled as ``wss://``, and the relay's TLS certificate is
verified against the system's trust store (Python's default context, which honours
``SSL_CERT_FILE`` and ``SSL_CERT_DIR``), or against the ``ssl_context`` given.
"""

from __future__ import annotations

import functools
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
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


def default_tls() -> ssl.SSLContext:
    """The context ``wss://`` sessions verify relays with unless given one: the system's
    trust store, with host names checked.  Made once per trust setting (loading a trust
    store costs milliseconds), and again if ``SSL_CERT_FILE``/``SSL_CERT_DIR`` change."""
    return _default_tls(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _default_tls(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return ssl.create_default_context()  # reads the two variables itself (OpenSSL's defaults)


@asynccontextmanager
async def open_session(
    address: RelayAddress, *, timeout: float = DEFAULT_TIMEOUT, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[RelaySession]:
    """Connect to ``address`` and prove the relay's identity; a fresh connection every time.

    ``ssl_context`` is used for an ``https://`` address (default: :func:`default_tls`); a
    certificate it does not trust makes the relay unreachable (:class:`RelayUnreachable`).
    """
    nonce = secrets.token_bytes(32)
    connected = False
    websocket: AbstractAsyncContextManager[WebSocketConnection]
    secure = address.websocket_url.startswith("wss:")
    local = _local_address.get()
    if secure or local is not None:
        context = (ssl_context or default_tls()) if secure else None
        websocket = _own_websocket(address, context, local, timeout)
    else:
        websocket = open_websocket_url(
            address.websocket_url,
            max_message_size=MAX_ANSWER,
            connect_timeout=timeout,
            disconnect_timeout=DISCONNECT_TIMEOUT,
        )
    try:
        async with websocket as ws:
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
        reason = str(exc) or f"no connection within {timeout:g} s ({type(exc).__name__})"
        raise RelayUnreachable(f"cannot reach {address.base}: {reason}") from None


@asynccontextmanager
async def _own_websocket(
    address: RelayAddress, context: ssl.SSLContext | None, local: str | None, timeout: float
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket on a TCP connection (and, with ``context``, a TLS handshake) made here.

    Why not ``open_websocket_url``: it cannot pick the local address (``local``: another
    host, in tests), and it starts TLS inside its WebSocket handshake, where a failed TLS
    handshake (a certificate the client does not trust) shows only as a connect time-out
    with no reason (python-trio/trio-websocket#199).  Here it fails at once, saying why.
    """
    parts = urlsplit(address.websocket_url)
    host, port = parts.hostname or "", parts.port or (443 if context is not None else 80)
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port, local_address=local)
    except (OSError, trio.TooSlowError) as exc:
        raise RelayUnreachable(f"cannot reach {address.base}: {exc or 'time-out'}") from None
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    if context is not None:
        stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(tcp)
            raise RelayUnreachable(f"no TLS with {address.base}: {exc.__cause__ or exc}") from None
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(timeout):
                ws = await wrap_client_stream(
                    nursery, stream, parts.netloc, parts.path or "/", max_message_size=MAX_ANSWER
                )
            try:
                yield ws
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(DISCONNECT_TIMEOUT):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One failure (the caller's, or the connection's) comes out as itself, as from
        # open_websocket_url: callers catch RelayRefused, ConnectionClosed and the like.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await trio.aclose_forcefully(stream)
