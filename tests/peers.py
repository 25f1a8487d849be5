"""Peers that misbehave on real sockets, for the command line's unhappy path (tests/test_cli_mistakes.py).

Each :class:`Peer` listens on a loopback port of its own and answers every connection the
way its ``mode`` says, from a thread, without trio:

- ``silent``: accepts, reads the request, never answers (a hung server, or not a relay);
- ``silent_ws``: completes the WebSocket handshake, then never sends a frame (a relay
  that stopped answering after the upgrade);
- ``http_404``: answers ``404 Not Found`` to the upgrade (a web server at that address);
- ``close``: accepts and closes at once, with a reset;
- ``ws_close``: completes the WebSocket handshake and closes it with code 1008.

``reached`` is set once a client got as far as the peer can take it (its request read,
or its first WebSocket frame), so a test can interrupt the client exactly while it waits.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import struct
import threading
from dataclasses import dataclass, field

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MODES = ("silent", "silent_ws", "http_404", "close", "ws_close")


@dataclass
class Peer:
    mode: str
    sock: socket.socket = field(init=False)
    reached: threading.Event = field(default_factory=threading.Event)
    _held: list[socket.socket] = field(default_factory=list)
    _closed: bool = False
    _hostport: str = ""

    def __post_init__(self) -> None:
        assert self.mode in MODES, self.mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        host, port = self.sock.getsockname()
        self._hostport = f"{host}:{port}"  # kept: a closed peer's port refuses connections
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hostport(self) -> str:
        return self._hostport

    def contact(self, fingerprint: str) -> str:
        """A contact address at this peer, pinning ``fingerprint`` (any: it never gets that far)."""
        return f"http://{self.hostport}/r#{fingerprint}"

    def group(self, fingerprint: str, address_id: str = "AAAAAAAAAAAAAAAAAAAAAA") -> str:
        return f"http://{self.hostport}/g/{address_id}#{fingerprint}"

    def close(self) -> None:
        self._closed = True
        for conn in [*self._held, self.sock]:
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "close":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                self.reached.set()
                return
            request = _read_head(conn)
            if self.mode == "silent":
                self._held.append(conn)
                self.reached.set()
                return
            if self.mode == "http_404":
                conn.sendall(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found"
                )
                conn.close()
                self.reached.set()
                return
            conn.sendall(_upgrade(request))
            if self.mode == "ws_close":
                conn.sendall(b"\x88\x02" + struct.pack("!H", 1008))
                conn.recv(1024)
                conn.close()
                self.reached.set()
                return
            self._held.append(conn)  # silent_ws: the client's hello arrives, no welcome ever does
            conn.recv(1)
            self.reached.set()
        except OSError:
            return


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _upgrade(request: bytes) -> bytes:
    key = b""
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: " + accept + b"\r\n\r\n"
    )
