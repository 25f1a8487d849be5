"""A members' load process for the fan-out benchmark: ``python -m benchmarks.fanout_members SPEC``.

One process holds many member connections (hundreds to thousands) in one plain ``epoll`` loop:
non-blocking sockets, the WebSocket framing of :mod:`benchmarks.wsframe`, and per received
frame only a search for the publisher's stamp, a subtraction and two counter updates.  No trio,
no task per connection, no decoding of event frames: the member side must cost as little CPU
as possible, because it shares the machine's two cores with the server it measures, and it is
the same code against the relay and against the baseline broadcast server.

Setup (untimed) is a small state machine per connection: TCP connect, WebSocket upgrade, then
a list of request frames, each answered by one frame checked by its ``type``: against the relay
``hello`` -> ``welcome``, ``join`` (a real join request from a fresh member key) ->
``join_result`` admitted, ``subscribe`` (a member request) -> ``subscribed``; against the
baseline only ``subscribe``.  The member keys are made before any connection opens; the join
and subscribe requests are signed when the ``welcome`` arrives, since each names its
connection's challenge (the card's ``challenge``).  After that the connection is live: every
frame carrying the stamp (:data:`MAGIC` + index + send time, CLOCK_MONOTONIC nanoseconds,
shared by every process on the machine) counts as one delivery.

Control is JSON lines on stdin (``setup``, ``record``, ``report``, ``close``, ``exit``); answers
are JSON lines on stdout, and ``D <index>`` lines tell the benchmark each index every live
connection of this process has received (the publisher's feedback for the max-rate mode).
A ``stall`` process sets a small ``SO_RCVBUF`` before connecting and never reads once live.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from benchmarks import wsframe

MAGIC = b"\xf5bench\xf5\x01"  # marks the stamp inside an event body: MAGIC, index, send time
STAMP = struct.Struct(">QQ")
BUCKET_NS = 10_000  # latency histogram resolution: 10 us
BUCKETS = 200_000  # up to 2 s; the last bucket holds everything slower
RECV_SIZE = 256 * 1024


def stamp(index: int, now_ns: int) -> bytes:
    return MAGIC + STAMP.pack(index, now_ns)


@dataclass(slots=True)
class Conn:
    sock: socket.socket
    steps: list[bytes]  # the request frames, by step; b"" for one made when its turn comes
    index: int = 0  # which member (key) this connection is
    state: str = "connecting"  # connecting, upgrading, steps, live, closed
    head: bytes = b""
    parser: wsframe.Parser = field(default_factory=wsframe.Parser)
    step: int = 0
    last: int = 0  # last index received


class Members:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.host, self.port, self.path = spec["host"], int(spec["port"]), spec["path"]
        self.count = int(spec["count"])
        self.stall = bool(spec.get("stall"))
        self.rcvbuf = int(spec.get("rcvbuf") or 0)
        self.concurrency = int(spec.get("concurrency") or 128)
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.live = 0
        self.keys: list[Any] = []  # the members' Ed25519 keys, one per connection (relay only)
        self.frames = self._prepare()
        # recording
        self.lo, self.hi = 1, 0
        self.hist = [0] * (BUCKETS + 1)
        self.deliveries = 0  # stamped frames in [lo, hi]
        self.other = 0  # frames without a stamp while live
        self.max_ns = 0
        self.gaps = 0  # a live connection saw an index that is not last + 1
        self.counts: dict[int, int] = {}
        self.done = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.closed_live = 0

    # --- prepared frames (client CPU, untimed) -------------------------------------------

    def _prepare(self) -> list[dict[str, bytes]]:
        """Per connection, the encoded request frames it may send, by step name: against the
        relay only ``hello`` here (a fresh nonce each time it is sent); ``join`` and
        ``subscribe`` are signed when the relay's challenge arrives (:meth:`_signed_steps`)."""
        from relay.protocol.encoding import encode
        from relay.protocol.messages import PROTOCOL_VERSION, Hello, Subscribe

        if self.spec["kind"] == "baseline":
            frame = wsframe.frame(encode(Subscribe(request=_dummy_signed(), since=None)), masked=True)
            return [{"subscribe": frame} for _ in range(self.count)]
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self.keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(self.count)]
        self._hello = lambda: wsframe.frame(
            encode(Hello(version=PROTOCOL_VERSION, nonce=secrets.token_bytes(32))), masked=True
        )
        return [{"hello": b""} for _ in range(self.count)]

    def _signed_steps(self, conn: Conn, welcome: dict[str, Any]) -> None:
        """The connection's ``join`` and ``subscribe``, signed for the challenge in ``welcome``."""
        from relay.protocol.encoding import decode, encode
        from relay.protocol.membership import ACTION_SUBSCRIBE, make_join_request, make_member_request
        from relay.protocol.messages import Join, MemberProfile, RelayCard, Subscribe

        card = decode(welcome["card"]["body"], RelayCard, limit=8192, what="relay card")
        binding = {
            "relay_fingerprint": bytes.fromhex(self.spec["fingerprint"]),
            "channel": bytes.fromhex(self.spec["channel"]),
            "address_id": self.spec["address_id"],
            "session": card.challenge,
            "now": int(time.time()),
        }
        key = self.keys[conn.index]
        name = f"{self.spec.get('name', 'm')}{conn.index}"
        made = {
            "join": Join(
                request=make_join_request(
                    key, profile=MemberProfile(name=name, about="fan-out benchmark member"), **binding
                )
            ),
            "subscribe": Subscribe(
                request=make_member_request(key, action=ACTION_SUBSCRIBE, **binding), since=None
            ),
        }
        for step, step_name in enumerate(self._step_names):
            if step_name in made:
                conn.steps[step] = wsframe.frame(encode(made[step_name]), masked=True)

    # --- setup ------------------------------------------------------------------------------

    def setup(self, steps: list[str]) -> dict[str, Any]:
        """Open every connection and run ``steps`` on each; returns when all are live or failed."""
        pending = list(range(self.count))
        pending.reverse()
        in_setup = 0
        t0 = time.perf_counter()
        errors0 = self.errors
        while pending or in_setup:
            while pending and in_setup < self.concurrency:
                i = pending.pop()
                self._open(i, steps)
                in_setup += 1
            for fd, ev in self.ep.poll(1.0):
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                before = conn.state
                self._setup_event(conn, ev)
                if before != conn.state and conn.state in ("live", "closed"):
                    in_setup -= 1
        return {
            "event": "setup.done",
            "live": self.live,
            "errors": self.errors - errors0,
            "error_samples": self.error_samples[:5],
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def _open(self, i: int, steps: list[str]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        frames = self.frames[i]
        conn = Conn(sock, [frames.get(s) or (self._hello() if s == "hello" else b"") for s in steps], i)
        conn.head = b""
        self._step_names = steps
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            self._fail(conn, f"connect: {os.strerror(err)}")
            return
        self.conns[sock.fileno()] = conn
        self.ep.register(sock.fileno(), select.EPOLLOUT)

    def _setup_event(self, conn: Conn, ev: int) -> None:
        sock = conn.sock
        if conn.state == "connecting":
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(conn, f"connect: {os.strerror(err)}")
                return
            self.ep.modify(sock.fileno(), select.EPOLLIN)
            conn.state = "upgrading"
            sock.send(wsframe.upgrade_request(f"{self.host}:{self.port}", self.path))
            return
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, f"recv: {exc}")
            return
        if not data:
            self._fail(conn, f"closed by the server in state {conn.state} step {conn.step}")
            return
        if conn.state == "upgrading":
            conn.head += data
            end = conn.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in conn.head[: conn.head.find(b"\r\n")]:
                self._fail(conn, "upgrade refused: " + conn.head[:60].decode(errors="replace"))
                return
            rest, conn.head = conn.head[end + 4 :], b""
            conn.state = "steps"
            self._send_step(conn)
            data = rest
            if not data:
                return
        for message in conn.parser.feed(data):
            if conn.state != "steps":
                break  # a push after the last answer; nothing is pushed before it
            self._answer(conn, message)

    def _send_step(self, conn: Conn) -> None:
        if conn.step >= len(conn.steps):
            conn.state = "live"
            self.live += 1
            if self.stall:
                self.ep.unregister(conn.sock.fileno())  # never read again: the stalled member
            return
        conn.sock.send(conn.steps[conn.step])

    EXPECT = {"hello": "welcome", "join": "join_result", "subscribe": "subscribed"}

    def _answer(self, conn: Conn, message: bytes) -> None:
        name = self._step_names[conn.step]
        try:
            answer = msgspec.msgpack.decode(message)
            kind = answer.get("type")
        except (msgspec.DecodeError, AttributeError):
            answer, kind = {}, None
        if kind != self.EXPECT[name] or (name == "join" and answer.get("status") != "admitted"):
            self._fail(conn, f"{name}: got {kind} {answer.get('code', answer.get('status', ''))}")
            return
        if name == "hello":
            self._signed_steps(conn, answer)
        conn.step += 1
        self._send_step(conn)

    def _fail(self, conn: Conn, why: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(why)
        self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if conn.state == "live":
            self.live -= 1
        conn.state = "closed"
        if fd >= 0:
            self.conns.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(fd)
        conn.sock.close()

    # --- the live loop ----------------------------------------------------------------------

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.ep.register(stdin, select.EPOLLIN)
        pending = b""
        out = sys.stdout
        hist, buckets = self.hist, BUCKETS
        unpack = STAMP.unpack_from
        magic = MAGIC
        while True:
            done_before = self.done
            for fd, _ev in self.ep.poll():
                if fd == stdin:
                    chunk = os.read(stdin, 65536)
                    if not chunk:
                        return
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if line.strip() and not self.command(json.loads(line)):
                            return
                    # setup/record may have rebound these
                    hist = self.hist
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed_live += 1
                    self._drop(conn)
                    continue
                now = time.monotonic_ns()
                lo, hi, counts, live = self.lo, self.hi, self.counts, self.live
                for message in conn.parser.feed(data):
                    at = message.find(magic)
                    if at < 0:
                        self.other += 1
                        continue
                    index, sent = unpack(message, at + 8)
                    if index != conn.last + 1 and conn.last:
                        self.gaps += 1
                    conn.last = index
                    if lo <= index <= hi:
                        d = now - sent
                        b = d // BUCKET_NS
                        hist[b if b < buckets else buckets] += 1
                        if d > self.max_ns:
                            self.max_ns = d
                        self.deliveries += 1
                    c = counts.get(index, 0) + 1
                    if c >= live:
                        counts.pop(index, None)
                        if index > self.done:
                            self.done = index
                    else:
                        counts[index] = c
            if self.done != done_before:
                out.write(f"D {self.done}\n")
                out.flush()

    def command(self, cmd: dict[str, Any]) -> bool:
        name = cmd["cmd"]
        if name == "setup":
            reply = self.setup(list(cmd["steps"]))
        elif name == "record":
            self.lo, self.hi = int(cmd["from"]), int(cmd["to"])
            self.hist = [0] * (BUCKETS + 1)
            self.deliveries = self.other = self.max_ns = self.gaps = 0
            reply = {"event": "recording"}
        elif name == "report":
            reply = {
                "event": "report",
                "live": self.live,
                "deliveries": self.deliveries,
                "other": self.other,
                "gaps": self.gaps,
                "max_ns": self.max_ns,
                "closed_live": self.closed_live,
                "done": self.done,
                "hist": {str(i): n for i, n in enumerate(self.hist) if n},
            }
        elif name == "close":
            for conn in list(self.conns.values()):
                self._drop(conn)
            self.live = 0
            self.counts.clear()
            reply = {"event": "closed"}
        elif name == "exit":
            return False
        else:
            reply = {"event": "error", "reason": f"unknown command {name!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        return True


def _dummy_signed() -> Any:
    """A well-formed but meaningless signed request: the baseline server checks nothing."""
    from relay.protocol.messages import Signed

    return Signed(body=b"\0" * 120, signer=b"\0" * 32, sig=b"\0" * 64)


def main(argv: list[str]) -> int:
    members = Members(json.loads(argv[0]))
    sys.stdout.write(json.dumps({"event": "members.ready", "count": members.count}) + "\n")
    sys.stdout.flush()
    members.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
