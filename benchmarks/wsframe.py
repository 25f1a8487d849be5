"""The smallest WebSocket (RFC 6455) framing the lean benchmark clients need, on plain sockets.

Used by the members' load processes (:mod:`benchmarks.fanout_members`), the publisher and the
baseline broadcast server (:mod:`benchmarks.fanout_server`), so that the client side is the
same lean code against the relay and against the baseline, and by the join benchmark's lean
client (:mod:`benchmarks.join_members`).  It costs as little CPU as possible: no per-message
objects beyond the payload, no UTF-8 checks, binary frames only.

Client frames are masked with the all-zero key (a valid mask: the payload is sent as is, so
masking costs nothing; the key's unpredictability only matters against browser-side proxies).
Benchmark code only: nothing here is meant for the relay or its real clients.
"""

from __future__ import annotations

import base64
import hashlib
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
CLIENT_KEY = base64.b64encode(b"chat-relay-bench").decode()  # 16 bytes, fixed: a benchmark


def frame(payload: bytes, *, masked: bool = False, opcode: int = OP_BINARY) -> bytes:
    """One final frame; ``masked`` (client to server) uses the zero mask key."""
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def upgrade_request(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def upgrade_response(request_head: bytes) -> bytes | None:
    """The server's 101 answer to a client's upgrade request head, or None if it is not one."""
    for line in request_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_value(value) + b"\r\n\r\n"
            )
    return None


class Parser:
    """Feed it bytes; it returns the whole data messages (binary payloads) found so far.

    Handles both directions (masked client frames on the server side, unmasked server frames on
    the client side) and fragmentation; control frames are noted (``closed`` on a Close, the
    payload of a Ping in ``pings``, for the caller to answer) and otherwise skipped.  Unbounded
    on purpose: the peers are the benchmark's own processes.
    """

    __slots__ = ("_fragments", "buf", "closed", "pings")

    def __init__(self) -> None:
        self.buf = b""
        self.closed = False
        self.pings: list[bytes] = []  # payloads of the Pings received, for a peer that answers them
        self._fragments: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            at = pos + 2
            if n == 126:
                if end - at < 2:
                    break
                (n,) = struct.unpack_from("!H", buf, at)
                at += 2
            elif n == 127:
                if end - at < 8:
                    break
                (n,) = struct.unpack_from("!Q", buf, at)
                at += 8
            mask = b""
            if b1 & 0x80:
                if end - at < 4:
                    break
                mask = buf[at : at + 4]
                at += 4
            if end - at < n:
                break
            payload = buf[at : at + n]
            pos = at + n
            if mask and mask != b"\0\0\0\0":
                payload = _unmask(payload, mask)
            opcode = b0 & 0x0F
            if opcode >= OP_CLOSE:
                if opcode == OP_CLOSE:
                    self.closed = True
                elif opcode == OP_PING:
                    self.pings.append(payload)
                continue
            if not b0 & 0x80:
                self._fragments.append(payload)
                continue
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments.clear()
            out.append(payload)
        self.buf = buf[pos:] if pos < end else b""
        return out


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
