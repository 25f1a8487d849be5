"""A client session with one relay address, over trio-websocket.

Opening a session performs the ``hello``/``welcome`` exchange and verifies that
the relay's card is signed by the key whose fingerprint the address pins;
:meth:`RelaySession.request` then sends one frame and returns the one answer.
Every request signed for the session names its :attr:`RelaySession.challenge`
(the relay refuses it on any other connection), so requests are signed after
the session is open, never before.  Every wait is bounded by ``timeout``
(the connection, the TLS and WebSocket handshakes, each answer), is told to
:mod:`relay.client.progress`, and every failure of the network or the peer comes
out as a :class:`~relay.client.errors.RelayError` made by
:func:`relay.client.errors.translate`.

An ``https://`` address is dialled as ``wss://``, and the relay's TLS certificate is
verified against the system's trust store (Python's default context, which honours
``SSL_CERT_FILE`` and ``SSL_CERT_DIR``), or against the ``ssl_context`` given.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from urllib.parse import urlsplit

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from relay.client.errors import (
    RelayIdentityError,
    RelayProtocolError,
    RelayRefused,
    RelayUnreachable,
    translate,
    translated,
)
from relay.client.progress import waiting
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
    def __init__(self, ws: WebSocketConnection, card: RelayCard, timeout: float, where: str) -> None:
        self._ws = ws
        self.card = card
        self.timeout = timeout
        self.where = where  # "the relay at http://HOST:PORT", for reasons

    @property
    def challenge(self) -> bytes:
        """The relay's challenge for this connection: the ``session`` of every request signed
        to be sent on it."""
        return self.card.challenge

    async def request(self, frame: ClientFrame, *, timeout: float | None = None) -> RelayFrame:
        """Send ``frame``; return the answer, or raise :class:`RelayRefused` for an error frame.

        ``timeout``: this answer's bound, when it is not the session's (a decision waited for).
        """
        answer = await _exchange(self._ws, frame, self.timeout if timeout is None else timeout, self.where)
        if isinstance(answer, Error):
            raise RelayRefused(answer.reason, code=answer.code)
        return answer

    async def send(self, frame: ClientFrame) -> None:
        """Send one frame without waiting for an answer (on a subscribed feed)."""
        with translated(where=self.where, timeout=self.timeout), trio.fail_after(self.timeout):
            await self._ws.send_message(encode(frame))

    async def receive(self, *, timeout: float | None = None) -> RelayFrame:
        """The next frame the relay sends (an answer or a push), within ``timeout`` seconds
        if given (else the caller bounds the wait)."""
        bound = math.inf if timeout is None else timeout
        with translated(where=self.where, timeout=timeout), trio.fail_after(bound):
            data = await self._ws.get_message()
        return _decode(data)


def _decode(data: bytes | str) -> RelayFrame:
    if isinstance(data, str):
        raise RelayProtocolError("the relay sent a text frame")
    with translated():
        return decode(data, RelayFrame, limit=MAX_ANSWER, what="relay frame")  # type: ignore[arg-type]


async def _exchange(ws: WebSocketConnection, frame: ClientFrame, timeout: float, where: str) -> RelayFrame:
    with waiting(f"an answer from {where}"), translated(where=where, timeout=timeout):
        with trio.fail_after(timeout):
            await ws.send_message(encode(frame))
            data = await ws.get_message()
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
    where = f"the relay at {address.base}"
    secure = address.websocket_url.startswith("wss:")
    context = (ssl_context or default_tls()) if secure else None
    async with _websocket(address, context, _local_address.get(), timeout, where) as ws:
        answer = await _exchange(ws, Hello(version=PROTOCOL_VERSION, nonce=nonce), timeout, where)
        if isinstance(answer, Error):
            raise RelayRefused(answer.reason, code=answer.code)
        if not isinstance(answer, Welcome):
            raise RelayProtocolError(f"expected welcome, got {type(answer).__name__}")
        try:
            card = verify_welcome(answer, fingerprint=address.fingerprint, nonce=nonce)
        except ProtocolError as exc:
            raise RelayIdentityError(
                f"{where} does not hold the key the address names ({exc.reason}): check the address",
                code=exc.code.value,
            ) from None
        yield RelaySession(ws, card, timeout, where)


@asynccontextmanager
async def _websocket(
    address: RelayAddress, context: ssl.SSLContext | None, local: str | None, timeout: float, where: str
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket on a TCP connection (and, with ``context``, a TLS handshake) made here,
    every step bounded by ``timeout``.

    Why not ``open_websocket_url``: its ``connect_timeout`` does not end the wait for a peer
    that accepts the connection and never answers (its reader task keeps the nursery open),
    it cannot pick the local address (``local``: another host, in tests), and it starts TLS
    inside its WebSocket handshake, where a failed TLS handshake (a certificate the client
    does not trust) shows only as a connect time-out with no reason
    (python-trio/trio-websocket#199).  Here each fails at once, saying why.
    """
    parts = urlsplit(address.websocket_url)
    host, port = parts.hostname or "", parts.port or (443 if context is not None else 80)
    with waiting(f"a connection to {where}"), translated(where=where, timeout=timeout):
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port, local_address=local)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
        if context is not None:
            stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
            try:
                with trio.fail_after(timeout):
                    await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
    watched = _Watched(stream)
    try:
        async with trio.open_nursery() as nursery:
            with waiting(f"a WebSocket handshake with {where}"), translated(where=where, timeout=timeout):
                with trio.fail_after(timeout):
                    ws = await _handshake(nursery, watched, parts.netloc, parts.path or "/", where)
            try:
                yield ws
            except (RelayUnreachable, trio.Cancelled):
                # A silent or broken peer, or a cancellation (Ctrl-C): no closing handshake
                # that would wait for it; the stream is closed below.
                nursery.cancel_scope.cancel()
                raise
            except BaseException:
                await _close(ws)  # the peer answered (a refusal, say): it is told goodbye
                nursery.cancel_scope.cancel()
                raise
            await _close(ws)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One failure (the caller's, or the connection's: a refused handshake, a peer that
        # breaks the protocol, raised in trio-websocket's reader task) comes out as itself,
        # translated: callers catch RelayRefused and the like, never a group.
        if len(group.exceptions) == 1:
            [exc] = group.exceptions
            error = translate(exc, where=where, timeout=timeout) if isinstance(exc, Exception) else None
            raise (error or exc) from None
        raise
    finally:
        await trio.aclose_forcefully(stream)


async def _handshake(
    nursery: trio.Nursery, stream: _Watched, host: str, resource: str, where: str
) -> WebSocketConnection:
    """The WebSocket opening handshake on ``stream``; its reader task runs in ``nursery``.

    trio-websocket's own wait for the handshake does not end when the peer closes the
    connection before answering it (the reader task only marks the connection closed), so
    the end of the stream is watched as well: such a peer fails at once, not at the time-out.
    """
    opened: list[WebSocketConnection] = []
    async with trio.open_nursery() as race:

        async def upgrade() -> None:
            # Any trio Stream works; the annotation names only the two it was written for.
            ws = await wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]
                host,
                resource,
                max_message_size=MAX_ANSWER,
            )
            opened.append(ws)
            race.cancel_scope.cancel()

        async def ended() -> None:
            await stream.ended.wait()
            race.cancel_scope.cancel()

        race.start_soon(upgrade)
        race.start_soon(ended)
    if not opened:
        raise RelayUnreachable(
            f"{where} closed the connection during the WebSocket handshake (is that a chat-relay?)"
        )
    return opened[0]


class _Watched(trio.abc.Stream):
    """A stream that tells (:attr:`ended`) when the peer closed or broke it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.ended = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _close(ws: WebSocketConnection) -> None:
    """The WebSocket closing handshake, bounded: a peer that does not answer it is left."""
    with trio.move_on_after(DISCONNECT_TIMEOUT):
        await ws.aclose()
