"""HTTP/1.1 and WebSocket over a trio stream, with h11 and wsproto doing all parsing.

One public port serves both plain HTTP (``GET /`` for the relay's public info)
and WebSocket upgrades.  h11 reads the request head; if it asks for a
WebSocket, the buffered bytes are handed to wsproto, which performs the
handshake and then frames messages.  This module owns only the I/O glue: size
limits, time-outs and backpressure.  It knows nothing about the relay protocol.

Where a client's bytes can sit, and what bounds each place: the request head is read
in pieces of at most what is left of ``MAX_HEAD`` (431 beyond it, however the bytes
arrive); after the upgrade a read takes at most ``READ_SIZE`` bytes, which wsproto
frames at once (its buffer holds less than one read between calls: it streams a data
frame's payload as it comes); the rest of a message in progress is ``WebSocket._partial``,
at most ``max_message`` bytes and charged to a :class:`BufferShare` (the relay-wide and
per-source budgets of relay.server.budgets) until the message is complete or the
connection ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import h11
import structlog
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WSFrames
from wsproto.connection import ConnectionState
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
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import LocalProtocolError as WSLocalError
from wsproto.utilities import RemoteProtocolError as WSRemoteError

log = structlog.get_logger("relay.http")

MAX_HEAD = 16 * 1024  # a request head (request line and headers), however it arrives
MAX_BODY = 1024 * 1024
READ_SIZE = 64 * 1024
CLOSE_LINGER = 1.0  # seconds a closing WebSocket waits for the peer to close its side
CLOSE_POLICY = 1008  # RFC 6455 7.4.1: the peer broke a rule (or the relay stopped serving it)
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: 26\r\nconnection: close\r\n\r\n"
    b'{"error":"head_too_large"}'
)
DISCARD_LIMIT = 256 * 1024  # bytes read and dropped after a refusal, so the answer is not lost to a RST


class ConnectionClosed(Exception):
    """The peer closed the WebSocket (or the stream broke)."""


class MessageTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of at least {size} bytes; the limit is {limit}")
        self.size, self.limit = size, limit


class NotBinary(Exception):
    """A text frame arrived where only binary frames are allowed."""


class Aborted(ConnectionClosed):
    """Another task ended the connection for a reason the reader reports (``code``, ``reason``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class BufferFull(Exception):
    """Holding the rest of a message in progress would exceed the budget named ``bound``."""

    def __init__(self, bound: str, size: int) -> None:
        super().__init__(f"the relay holds as many partly received messages as it can ({bound})")
        self.bound, self.size = bound, size  # ``size``: what this message would have held


class BufferShare(Protocol):
    """Where a WebSocket charges the bytes of a message in progress (relay.server.budgets.Source)."""

    def take(self, holder: object, size: int, now: float) -> str | None: ...

    def give(self, holder: object, size: int) -> None: ...


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


# A server's frames are not masked (RFC 6455 5.1), so one message has the same bytes on every
# connection without extensions: wsproto's own frame code builds them once for all.  Every
# call is a whole message (fin=True), so this one object carries no state between calls.
_SERVER_FRAMES = FrameProtocol(client=False, extensions=[])


def prepared_message(payload: bytes) -> bytes:
    """One binary WebSocket message as a server sends it, for :meth:`WebSocket.send_prepared`."""
    return bytes(_SERVER_FRAMES.send_data(payload, True))


def prepared_close(code: int, reason: str) -> bytes:
    """A Close frame as a server sends it (for :meth:`WebSocket.abort`)."""
    return bytes(_SERVER_FRAMES.close(code, reason[:120]))


PING = bytes(_SERVER_FRAMES.ping(b""))  # a server's Ping, empty: the same bytes for every connection


class WebSocket:
    """A server-side WebSocket: binary messages in and out, one task, bounded buffers."""

    # One per connection, and members' connections stay open: slots keep each small.
    __slots__ = (
        "_closed",
        "_interrupted",
        "_linger_due",
        "_max",
        "_partial",
        "_send_lock",
        "_share",
        "_stream",
        "_unsent",
        "_ws",
        "heard",
        "pinged",
    )

    def __init__(
        self, stream: trio.abc.Stream, ws: WSFrames, max_message: int, share: BufferShare | None = None
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message
        self._partial = bytearray()
        self._share = share  # charged for the bytes of a message in progress (None: not bounded)
        self._closed = False
        self._linger_due = False  # a Close was sent by ``send_close``; ``finish`` waits for the peer's
        # Ended by another task (``interrupt``, ``abort``): nothing more is read.  ``abort``
        # leaves the error code and reason here, for the reader to report.
        self._interrupted: bool | tuple[str, str] = False
        # Liveness, for the relay's sweeper (no timer per connection): when bytes last came
        # in, and when a Ping was sent that nothing has come in after yet (0: none pending).
        self.heard = trio.current_time()
        self.pinged = 0.0
        # Orders concurrent writers; made when a write starts and dropped when the last one
        # ends (a trio.Lock is about 330 bytes, and an idle member writes nothing for days).
        self._send_lock: trio.Lock | None = None
        # The rest of a message that ``send_now`` could write only in part: it goes out before
        # any other byte (every write flushes it first), so frames never interleave.
        self._unsent = b""

    async def receive(self) -> bytes:
        """The next whole binary message; raises ConnectionClosed (Aborted when another task
        ended it with a reason), MessageTooLarge, NotBinary, BufferFull (the budget refused the
        rest of a message in progress)."""
        while True:
            if self._interrupted:
                raise self._ended()
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    held = len(self._partial)
                    if held + len(event.data) > self._max:
                        raise MessageTooLarge(held + len(event.data), self._max)
                    if event.message_finished and not held:
                        return bytes(event.data)  # the usual single frame: no copy (bytes(bytes))
                    share = self._share
                    if share is not None and event.data:
                        refused = share.take(self, len(event.data), trio.current_time())
                        if refused is not None:
                            raise BufferFull(refused, held + len(event.data))
                    self._partial += event.data
                    if event.message_finished:
                        message = bytes(self._partial)
                        self.release()
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
                raise self._ended()
            # A socket is read here directly, waiting only in ``wait_readable``: an idle member
            # waits here for days, and trio's ``receive_some`` keeps four more coroutine frames
            # and a context manager alive for the whole wait (about 1.5 KiB per connection).
            # Only for a plain socket: a TLS stream's bytes must go through its TLS object.
            stream = self._stream
            try:
                if isinstance(stream, trio.SocketStream):
                    # As in trio: cancelled before the read or never after it (no bytes lost),
                    # and a schedule point either way.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    data = _read_now(stream.socket)
                    if data is None:
                        while data is None:  # None again: woken spuriously
                            await trio.lowlevel.wait_readable(stream.socket)
                            data = _read_now(stream.socket)
                    else:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                else:
                    data = bytes(await stream.receive_some(READ_SIZE))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._ended() from None  # reset, or closed by another task
            self.heard = trio.current_time()
            eof = not data
            try:
                self._ws.receive_data(data or None)
            except WSRemoteError:
                raise ConnectionClosed() from None
            # Not kept while waiting for the next bytes (an idle member waits for days).
            del data
            if eof:
                self._closed = True

    def _ended(self) -> ConnectionClosed:
        """What the reader raises once the connection is over (with the reason of an ``abort``)."""
        why = self._interrupted
        if isinstance(why, tuple):
            return Aborted(*why)
        return ConnectionClosed()

    def release(self) -> None:
        """Drop the message in progress, if any, and give its bytes back to the budget.

        Called when a message is complete, and by the connection's handler when it ends (a
        connection closed mid-message must not keep its share)."""
        if self._partial:
            if self._share is not None:
                self._share.give(self, len(self._partial))
            # A new, empty object: the old buffer is freed now, not kept at its largest size.
            self._partial = bytearray()

    def dispose(self) -> None:
        """The connection has ended: give back what it holds, at once.

        Besides the message in progress: wsproto's frame parser is a generator that holds its
        own ``FrameProtocol`` (a reference cycle) and, suspended, the last frame it parsed
        (up to one read, 64 KiB).  Left alone, the whole connection waits for a full run of
        the cyclic garbage collector, which a relay with many long-lived objects makes rare:
        a burst of refused clients then keeps tens of MB for good.  Closing the generator
        drops both.  (wsproto internals, looked up defensively: if they move, only this
        shortcut is lost.)"""
        self.release()
        parser = getattr(getattr(self._ws, "_proto", None), "_parse_more", None)
        if parser is not None and hasattr(parser, "close"):
            parser.close()

    async def send(self, message: bytes) -> None:
        try:
            payload = self._ws.send(BytesMessage(data=message))
        except WSLocalError:
            raise ConnectionClosed() from None
        await self._write(payload)

    async def send_prepared(self, data: bytes) -> None:
        """Send messages already framed by :func:`prepared_message` (one or several joined).

        Only valid with no extension negotiated (the relay negotiates none): the frame bytes
        are then the same for every connection, so fan-out encodes each message once.
        """
        if self._closed or self._ws.state is not ConnectionState.OPEN:
            raise ConnectionClosed()
        await self._write(data)

    def send_now(self, data: bytes) -> bool:
        """Hand prepared bytes to the socket without waiting, if nothing else is being written.

        True: the bytes are the socket's, or (written in part) the rest waits in this object
        and goes out first with the next write (``unsent`` tells whether a flush is due).
        False: nothing was written (the socket is full, a write is in progress, or the
        connection is closing); the caller queues the bytes for an awaited send.  This is the
        fan-out's fast path: one system call per member, no task switch.  A TLS connection
        never takes it (its bytes must be encrypted first): always False there.
        """
        if (
            self._unsent
            or self._send_lock is not None
            or self._closed
            or self._interrupted
            or self._ws.state is not ConnectionState.OPEN
        ):
            return False
        stream = self._stream
        if not isinstance(stream, trio.SocketStream):
            return False
        try:
            sent = os.write(stream.socket.fileno(), data)
        except OSError:  # full (BlockingIOError) or broken: the awaited send will tell which
            return False
        if sent < len(data):
            self._unsent = data[sent:]
        return True

    def interrupt(self) -> None:
        """End the session from another task: the reader's wait ends in ConnectionClosed.

        For a helper task that ends its connection (a member gone, stalled or ended).  Why not
        a cancel scope around the reader: a subscribed member's reader waits for days, and a
        scope with its cancel status is about 0.75 KiB per connection.  trio's
        ``notify_closing`` wakes whatever waits for the socket with ClosedResourceError; the
        flag stops any later read or write (a member that reads nothing must not hold its
        reader in a write for ever), and the connection's handler closes the socket soon after
        (once ``finish`` has waited, bounded, for the peer's Close).  A stream wrapped around a
        socket (TLS) is woken through the socket underneath.
        """
        self._interrupted = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        sock = _socket_of(self._stream)
        if sock is not None:
            trio.lowlevel.notify_closing(sock)

    def abort(self, goodbye: bytes, code: int, error: str, reason: str) -> None:
        """End the connection from another task (the sweeper), telling the peer why if it can.

        ``goodbye`` (a prepared error frame) and a Close with ``code`` are written only if the
        socket takes them now, without waiting and with nothing else being written; the reader
        then raises :class:`Aborted` with ``error`` and ``reason``, for its log line.
        """
        if self._interrupted:
            return
        if self.send_now(goodbye + prepared_close(code, error)):
            self._unsent = b""  # the rest of a goodbye is not worth a wait
        self._closed = True
        self._interrupted = (error, reason)
        self._wake_reader()

    @property
    def unsent(self) -> bool:
        return bool(self._unsent)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        await self.send_close(code, reason)
        await self.finish()

    async def send_close(self, code: int, reason: str) -> None:
        """Send a Close frame, nothing after it; ``finish`` then waits for the peer's Close.

        For a task other than the one reading: only the reader may wait for the peer's side
        (trio lets one task at a time wait for a socket to be readable).
        """
        if self._closed:
            return
        self._closed = True
        self._linger_due = True
        with contextlib.suppress(ConnectionClosed, WSLocalError):
            await self._write(self._ws.send(CloseConnection(code=code, reason=reason[:120])))

    async def finish(self) -> None:
        """After ``send_close``: wait (bounded) for the peer to close too; else nothing."""
        if self._linger_due:
            self._linger_due = False
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
            if isinstance(stream, trio.SSLStream):
                await self._await_peer_close(stream)
            return
        with (
            trio.move_on_after(CLOSE_LINGER),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            lock = await self._lock()
            try:
                await stream.send_eof()
            finally:
                self._unlock(lock)
            while await stream.receive_some(READ_SIZE):
                pass

    async def _await_peer_close(self, stream: trio.abc.Stream) -> None:
        """``_linger`` for a stream that cannot half-close (TLS): read, bounded, until the
        peer's Close frame (or its end), so that closing does not reset a peer still writing.

        TLS has no half-close short of ending the TLS session, so the peer is not told "no
        more from me" first; its Close answers ours, and the peer then waits for us to close.
        """
        with (
            trio.move_on_after(CLOSE_LINGER),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, WSRemoteError),
        ):
            while data := await stream.receive_some(READ_SIZE):
                self._ws.receive_data(bytes(data))
                if any(isinstance(event, CloseConnection) for event in self._ws.events()):
                    return

    async def _write(self, data: bytes) -> None:
        if self._interrupted:  # ended by another task: not even a reply already on its way
            raise ConnectionClosed()
        lock = await self._lock()
        try:
            if self._unsent:
                data, self._unsent = self._unsent + data, b""
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed() from None
        finally:
            self._unlock(lock)

    async def _lock(self) -> trio.Lock:
        """Take the send lock (made if no write is in progress), in the order writers came.

        Uncontended (the common case: one task per connection), it is taken without a
        checkpoint, which saves a trip through the scheduler; the write checkpoints anyway.
        """
        lock = self._send_lock
        if lock is None:
            lock = self._send_lock = trio.Lock()
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        return lock

    def _unlock(self, lock: trio.Lock) -> None:
        lock.release()
        if not lock.locked():  # nobody was waiting (release hands a waiting writer the lock)
            self._send_lock = None


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under a plain stream, or under a few wrappers (TLS: ``transport_stream``);
    None for other streams (in-memory ones)."""
    inner: object = stream
    for _ in range(4):
        if isinstance(inner, trio.SocketStream):
            return inner.socket
        inner = getattr(inner, "transport_stream", None)
    return None


def _read_now(sock: trio.socket.SocketType) -> bytes | None:
    """The bytes waiting on a non-blocking socket (empty at its end), None if there are none.

    Not inlined: an exception raised in a coroutine's frame makes Python keep a frame object
    (about 200 bytes) for as long as the coroutine lives, and here it would be every time.
    """
    try:
        return os.read(sock.fileno(), READ_SIZE)
    except BlockingIOError:
        return None


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
# Checks a WebSocket request's target: None accepts the upgrade, a response refuses it.
WebSocketRouter = Callable[[str], "HttpResponse | None"]
# Told when a bound refused the connection: the bound's name and its limit.
BoundHit = Callable[[str, int], None]


async def serve_http_connection(
    stream: trio.abc.Stream, *, on_http: HttpHandler, head_timeout: float, on_bound: BoundHit | None = None
) -> None:
    """Read one plain HTTP request and answer it (a WebSocket upgrade is refused)."""
    await accept_http_connection(
        stream, on_http=on_http, on_websocket=None, head_timeout=head_timeout, on_bound=on_bound
    )


@dataclass(frozen=True, slots=True)
class Accepted:
    """An open WebSocket and its request target."""

    socket: WebSocket
    target: str


async def accept_http_connection(
    stream: trio.abc.Stream,
    *,
    on_http: HttpHandler,
    on_websocket: WebSocketRouter | None,
    head_timeout: float,
    max_message: int = 0,
    share: BufferShare | None = None,
    on_bound: BoundHit | None = None,
) -> Accepted | None:
    """Read one request; answer it (None), or upgrade it and return the open WebSocket.

    The parsing and the handshake are done in helpers that return before the WebSocket is
    handed over, and keep none of their objects: a member's connection may stay open for
    days, and the h11 connection, the request's bytes and headers and wsproto's handshake
    state would otherwise stay alive with it (several KiB per idle member).  The caller runs
    the session itself, with no handler's coroutine frame kept for the connection's lifetime.
    """
    upgrade = await _serve_request(stream, on_http, on_websocket is not None, head_timeout, on_bound)
    if upgrade is None or on_websocket is None:
        return None
    return await _accept(stream, upgrade, on_websocket, max_message, share)


@dataclass(frozen=True, slots=True)
class _Upgrade:
    raw: bytes  # the request head as received, for wsproto's handshake
    target: str


async def _serve_request(
    stream: trio.abc.Stream,
    on_http: HttpHandler,
    websocket: bool,
    head_timeout: float,
    on_bound: BoundHit | None = None,
) -> _Upgrade | None:
    """Answer a plain HTTP request, or return a WebSocket upgrade request for :func:`_accept`."""
    # h11's own limit one byte above ours: the count below answers first (and is reported).
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD + 1)
    raw = bytearray()
    request: h11.Request | None = None
    body = bytearray()
    with trio.move_on_after(head_timeout) as scope:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await _send_simple(stream, conn, exc.error_status_hint, b'{"error":"bad_http"}')
                return None
            if event is h11.NEED_DATA:
                if request is None and len(raw) > MAX_HEAD:
                    # Counted here, by the bytes received: h11 checks its own limit only when
                    # it runs short of data, so a large head in one piece would pass it.
                    if on_bound is not None:
                        on_bound("request_head", MAX_HEAD)
                    await _refuse(stream, HEAD_TOO_LARGE)
                    return None
                # Before the head is complete, never more than one byte past the limit.
                want = READ_SIZE if request is not None else MAX_HEAD + 1 - len(raw)
                try:
                    data = await stream.receive_some(want)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not data:
                    return None
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
                    return None
                continue
            if isinstance(event, h11.EndOfMessage):
                break
            return None  # ConnectionClosed or PAUSED before a request
    if scope.cancelled_caught or request is None:
        return None

    target = request.target.decode("ascii", "replace")
    if _wants_websocket(request) and websocket:
        return _Upgrade(bytes(raw), target)
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
    try:
        response = await on_http(HttpRequest(request.method.decode(), target, headers, bytes(body)))
    except Exception:
        # A handler's bug fails this request alone; escaping, it would stop the whole daemon.
        log.exception("http.internal_error", method=request.method.decode(), path=target.split("?")[0])
        response = HttpResponse(500, b'{"error":"internal"}')
    # A HEAD request gets the head GET would get (its content-length too) and no body.
    await _send_response(stream, conn, response, head=request.method == b"HEAD")
    return None


def _wants_websocket(request: h11.Request) -> bool:
    return any(k.lower() == b"upgrade" and v.lower() == b"websocket" for k, v in request.headers)


async def _accept(
    stream: trio.abc.Stream,
    upgrade: _Upgrade,
    router: WebSocketRouter,
    max_message: int,
    share: BufferShare | None,
) -> Accepted | None:
    """The handshake: the open WebSocket, or None once refused."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(upgrade.raw)
        handshake = next((e for e in ws.events() if isinstance(e, Request)), None)
    except WSRemoteError:
        handshake = None
    if handshake is None:
        await _try_send(stream, b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        return None
    route = router(upgrade.target)
    if route is not None:
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
        return None
    if not await _try_send(stream, ws.send(AcceptConnection())):
        return None
    # From here on only the frame-level connection is needed: the WSConnection wrapper keeps
    # the handshake (an h11 connection, the request and its headers) for as long as it lives.
    # On the server side, bytes after the request head were never passed on by the handshake.
    assert ws.connection is not None
    return Accepted(WebSocket(stream, ws.connection, max_message, share), upgrade.target)


async def _refuse(stream: trio.abc.Stream, answer: bytes) -> None:
    """Send a final answer, then read and drop what the client still sends (bounded in time and
    bytes) until it closes: closing with its bytes unread would reset the connection, and the
    client could lose the answer."""
    if not await _try_send(stream, answer):
        return
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    dropped = 0
    with (
        trio.move_on_after(CLOSE_LINGER),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.send_eof()
        while dropped < DISCARD_LIMIT:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                break
            dropped += len(data)


async def _try_send(stream: trio.abc.Stream, data: bytes) -> bool:
    try:
        await stream.send_all(data)
        return True
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False


async def _send_response(
    stream: trio.abc.Stream, conn: h11.Connection, response: HttpResponse, *, head: bool = False
) -> None:
    """Send ``response``; with ``head`` (the answer to a HEAD request) its head alone."""
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("connection", "close"),
        *response.headers,
    ]
    try:
        phrase = HTTPStatus(response.status).phrase.encode()
    except ValueError:
        phrase = b""
    try:
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=phrase))
        if not head:
            data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
        data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError:
        return
    await _try_send(stream, data)


async def _send_simple(stream: trio.abc.Stream, conn: h11.Connection, status: int, body: bytes) -> None:
    try:
        await _send_response(stream, conn, HttpResponse(status, body))
    except h11.LocalProtocolError:
        await _try_send(stream, b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
