"""A raw WebSocket client on a trio socket, for the abuse benchmark's attackers and slow readers.

Nothing here refuses to send something wrong: a frame may be sent whole, in pieces, or only
partly; a request head may be any bytes.  It is also lean (the framing of
:mod:`benchmarks.wsframe`, no per-message objects beyond the payload), because the attacker
processes share the machine's two cores with the relay they attack, and what they cost is one
of the figures.  Every byte written goes through :meth:`RawWs.write`, which counts it in a
:class:`Counter` (an attack's bytes/s); connections opened and open now are counted there too.

The relay's ``welcome`` is decoded, not verified: an attacker does not care who it talks to,
and a signature check per connection would only make the attacker dearer.

Benchmark code only: nothing here is meant for the relay or its real clients.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from dataclasses import dataclass

import trio

from benchmarks import wsframe
from relay.protocol.encoding import decode, encode
from relay.protocol.messages import PROTOCOL_VERSION, Hello, RelayCard, RelayFrame, Welcome

MAX_HEAD = 64 * 1024
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
RECV_SIZE = 65536
ANSWER_LIMIT = 4 * 1024 * 1024


class Closed(Exception):
    """The relay closed the connection (or refused it at the accept)."""


@dataclass
class Counter:
    """What one attacker process has cost so far: bytes written, connections opened and open."""

    sent: int = 0
    opened: int = 0
    refused: int = 0  # connections closed by the relay before it answered anything
    open: int = 0
    peak: int = 0

    def opening(self) -> None:
        self.opened += 1
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closing(self) -> None:
        self.open -= 1


async def tcp(
    host: str, port: int, local: str, counter: Counter, rcvbuf: int | None = None
) -> trio.SocketStream:
    """A TCP connection from ``local`` (another loopback address stands for another host);
    ``rcvbuf`` shrinks the receive buffer before connecting (a reader the relay must wait for)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # The port is picked at connect, by the whole address pair (as trio.open_tcp_stream
        # does): thousands of connections a minute from one address do not exhaust its ports.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.bind((local, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    counter.opening()
    return trio.SocketStream(sock)


class RawWs:
    """One WebSocket connection, driven frame by frame (client frames masked with the zero key)."""

    def __init__(self, stream: trio.SocketStream, counter: Counter) -> None:
        self.stream = stream
        self.counter = counter
        self.parser = wsframe.Parser()
        self.pending: list[bytes] = []
        self.challenge = b""
        self.card: RelayCard | None = None
        self.extra: list[bytes] = []  # what a caller keeps with the connection (frames signed for it)
        self._closed = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        path: str,
        local: str,
        counter: Counter,
        *,
        rcvbuf: int | None = None,
    ) -> RawWs:
        """Connect and upgrade; :class:`Closed` if the relay closes or refuses the upgrade."""
        stream = await tcp(host, port, local, counter, rcvbuf)
        ws = cls(stream, counter)
        try:
            await ws.write(wsframe.upgrade_request(f"{host}:{port}", path))
            head = b""
            while b"\r\n\r\n" not in head:
                data = await ws._receive_some()
                head += data
                if len(head) > MAX_HEAD:
                    raise Closed("the upgrade answer is too long")
            head, _, rest = head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise Closed(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            if rest:
                ws.pending.extend(ws.parser.feed(rest))
        except BaseException:
            await ws.aclose()
            raise
        return ws

    async def _receive_some(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Closed(str(exc) or type(exc).__name__) from None
        if not data:
            raise Closed("end of stream")
        return data

    async def write(self, data: bytes) -> None:
        """Write bytes as they are (a frame, a piece of one, a request head)."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Closed(str(exc) or type(exc).__name__) from None
        self.counter.sent += len(data)

    async def send(self, payload: bytes) -> None:
        """One whole binary message."""
        await self.write(wsframe.frame(payload, masked=True))

    async def send_frame(self, frame: object) -> None:
        await self.send(encode(frame))

    async def recv(self) -> bytes:
        """The next whole data message; :class:`Closed` at the relay's Close or end of stream."""
        while not self.pending:
            if self.parser.closed:
                raise Closed("the relay sent a Close")
            self.pending.extend(self.parser.feed(await self._receive_some()))
            await self._pong()
        return self.pending.pop(0)

    async def _pong(self) -> None:
        """Answer the relay's Pings (a subscribed session that does not is closed)."""
        while self.parser.pings:
            payload = self.parser.pings.pop(0)
            await self.write(wsframe.frame(payload, masked=True, opcode=wsframe.OP_PONG))

    async def recv_frame(self) -> RelayFrame:
        return decode(await self.recv(), RelayFrame, limit=ANSWER_LIMIT, what="relay frame")  # type: ignore[arg-type]

    async def request(self, frame: object) -> RelayFrame:
        await self.send_frame(frame)
        return await self.recv_frame()

    async def hello(self) -> bytes:
        """``hello``; the relay's challenge for this connection (decoded, not verified)."""
        answer = await self.request(Hello(version=PROTOCOL_VERSION, nonce=secrets.token_bytes(32)))
        if not isinstance(answer, Welcome):
            raise Closed(f"expected welcome, got {answer!r}"[:200])
        self.card = decode(answer.card.body, RelayCard, limit=8192, what="relay card")
        self.challenge = self.card.challenge
        return self.challenge

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.counter.closing()
        await trio.aclose_forcefully(self.stream)
