"""HTTP/1.1 and WebSocket over a trio stream, with h11 and wsproto doing all parsing.

One public port serves both plain HTTP (``GET /`` for the relay's public info)
and WebSocket upgrades.  h11 reads the request head; if it asks for a
WebSocket, the buffered bytes are handed to wsproto, which performs the
handshake and then frames messages.  This module owns only the I/O glue: size
limits, time-outs and backpressure.  It knows nothing about the relay protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import structlog
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WSLocalError
from wsproto.utilities import RemoteProtocolError as WSRemoteError

log = structlog.get_logger("relay.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
READ_SIZE = 64 * 1024
CLOSE_LINGER = 1.0  # seconds a closing WebSocket waits for the peer to close its side


class ConnectionClosed(Exception):
    """The peer closed the WebSocket (or the stream broke)."""


class MessageTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of at least {size} bytes; the limit is {limit}")
        self.size, self.limit = size, limit


class NotBinary(Exception):
    """A text frame arrived where only binary frames are allowed."""


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


class WebSocket:
    """A server-side WebSocket: binary messages in and out, one task, bounded buffers."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, max_message: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message
        self._partial = bytearray()
        self._closed = False
        self._send_lock = trio.Lock()

    async def receive(self) -> bytes:
        """The next whole binary message; raises ConnectionClosed, MessageTooLarge, NotBinary."""
        while True:
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    if len(self._partial) + len(event.data) > self._max:
                        raise MessageTooLarge(len(self._partial) + len(event.data), self._max)
                    if event.message_finished and not self._partial:
                        return bytes(event.data)  # the usual single frame: no copy (bytes(bytes))
                    self._partial += event.data
                    if event.message_finished:
                        message = bytes(self._partial)
                        self._partial.clear()
                        return message
                elif isinstance(event, TextMessage):
                    raise NotBinary()
                elif isinstance(event, Ping):
                    await self._write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if not self._closed:
                        self._closed = True
                        with contextlib.suppress(ConnectionClosed):
                            await self._write(self._ws.send(event.response()))
                    raise ConnectionClosed()
            if self._closed:
                raise ConnectionClosed()
            try:
                data = await self._stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionClosed() from None
            try:
                self._ws.receive_data(bytes(data) or None)
            except WSRemoteError:
                raise ConnectionClosed() from None
            if not data:
                self._closed = True

    async def send(self, message: bytes) -> None:
        try:
            payload = self._ws.send(BytesMessage(data=message))
        except WSLocalError:
            raise ConnectionClosed() from None
        await self._write(payload)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ConnectionClosed, WSLocalError):
            await self._write(self._ws.send(CloseConnection(code=code, reason=reason[:120])))
        await self._linger()

    async def _linger(self) -> None:
        """Half-close, then discard what the peer still sends until it closes too (bounded).

        Closing a socket that holds unread bytes makes the kernel send RST, and the peer may
        then lose the error frame and the Close just sent (typically a client still writing
        an oversized frame).  RFC 6455 has the server close TCP after the Close handshake;
        this waits for the peer's side of it, never longer than ``CLOSE_LINGER``.
        """
        stream = self._stream
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            return
        with (
            trio.move_on_after(CLOSE_LINGER),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            async with self._send_lock:
                await stream.send_eof()
            while await stream.receive_some(READ_SIZE):
                pass

    async def _write(self, data: bytes) -> None:
        # The lock orders concurrent writers.  Uncontended (the common case: one task per
        # connection), taking it without a checkpoint saves a trip through the scheduler;
        # send_all checkpoints anyway, and a writer that finds it taken queues fairly.
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed() from None
        finally:
            lock.release()


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
# Returns a coroutine function that takes over the accepted WebSocket, or a
# response to refuse the upgrade with.
WebSocketHandler = Callable[["WebSocket"], Awaitable[None]]
WebSocketRouter = Callable[[str], "WebSocketHandler | HttpResponse"]


async def serve_http_connection(
    stream: trio.abc.Stream,
    *,
    on_http: HttpHandler,
    on_websocket: WebSocketRouter | None,
    head_timeout: float,
    max_message: int = 0,
) -> None:
    """Read one request; answer it, or upgrade it and hand the WebSocket over."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    raw = bytearray()
    request: h11.Request | None = None
    body = bytearray()
    with trio.move_on_after(head_timeout) as scope:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await _send_simple(stream, conn, exc.error_status_hint, b'{"error":"bad_http"}')
                return
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                if request is None:
                    raw += data
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Request):
                request = event
                if _wants_websocket(event):
                    break
                continue
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    await _send_simple(stream, conn, 413, b'{"error":"body_too_large"}')
                    return
                continue
            if isinstance(event, h11.EndOfMessage):
                break
            return  # ConnectionClosed or PAUSED before a request
    if scope.cancelled_caught or request is None:
        return

    target = request.target.decode("ascii", "replace")
    if _wants_websocket(request) and on_websocket is not None:
        await _upgrade(stream, bytes(raw), target, on_websocket, max_message)
        return
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
    try:
        response = await on_http(HttpRequest(request.method.decode(), target, headers, bytes(body)))
    except Exception:
        # A handler's bug fails this request alone; escaping, it would stop the whole daemon.
        log.exception("http.internal_error", method=request.method.decode(), path=target.split("?")[0])
        response = HttpResponse(500, b'{"error":"internal"}')
    await _send_response(stream, conn, response)


def _wants_websocket(request: h11.Request) -> bool:
    return any(k.lower() == b"upgrade" and v.lower() == b"websocket" for k, v in request.headers)


async def _upgrade(
    stream: trio.abc.Stream,
    raw: bytes,
    target: str,
    router: WebSocketRouter,
    max_message: int,
) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(raw)
        handshake = next((e for e in ws.events() if isinstance(e, Request)), None)
    except WSRemoteError:
        handshake = None
    if handshake is None:
        await _try_send(stream, b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        return
    route = router(target)
    if isinstance(route, HttpResponse):
        reject = ws.send(
            RejectConnection(
                status_code=route.status,
                headers=[
                    (b"content-type", route.content_type.encode()),
                    (b"content-length", str(len(route.body)).encode()),
                ],
                has_body=True,
            )
        ) + ws.send(RejectData(data=route.body))
        await _try_send(stream, reject)
        return
    if not await _try_send(stream, ws.send(AcceptConnection())):
        return
    socket = WebSocket(stream, ws, max_message)
    await route(socket)


async def _try_send(stream: trio.abc.Stream, data: bytes) -> bool:
    try:
        await stream.send_all(data)
        return True
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False


async def _send_response(stream: trio.abc.Stream, conn: h11.Connection, response: HttpResponse) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("connection", "close"),
        *response.headers,
    ]
    try:
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    await _try_send(stream, data)


async def _send_simple(stream: trio.abc.Stream, conn: h11.Connection, status: int, body: bytes) -> None:
    try:
        await _send_response(stream, conn, HttpResponse(status, body))
    except h11.LocalProtocolError:
        await _try_send(stream, b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
