"""The lean join client: ``python -m benchmarks.join_members SPEC`` (a msgpack file; see :class:`Spec`).

The join throughput benchmark's members, in a process of their own: one plain ``epoll`` loop
over N non-blocking sockets (no trio, no task per connection), with the minimal WebSocket
framing of :mod:`benchmarks.wsframe`.  The client shares the machine's two cores with the relay
it measures, so per request it does only what a member must: send a ready frame, read the
answer frame, decode it (``relay.protocol.encoding.decode``) and check it is a ``join_result``
``admitted``, send the connection's next.

Everything else happens before the clock starts: each connection does the WebSocket upgrade
and ``hello``, and the relay's signed ``welcome`` is checked against the fingerprint in the
group address; then each connection's share of the requests (every N-th) is signed for it
(a join request names its connection's challenge, so it cannot be signed earlier) by fresh
member keys and framed (masked client frames); the warm-up requests then go through the same
connections.

Control: after the warm-up the process prints ``{"event": "ready"}`` on stdout and waits for a
line on stdin; then it runs the timed requests and prints one JSON line with what it saw
(answers by status, errors, seconds from the first send to the last answer, latency
percentiles, its own CPU seconds during the timed section), and exits.

Must not: do anything per timed request beyond the wire and the answer's check (no signing,
no logging), or hide a failed request: every answer other than ``admitted`` is counted.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519

from benchmarks import wsframe
from relay.protocol.encoding import decode, encode
from relay.protocol.handshake import verify_welcome
from relay.protocol.membership import make_join_request
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    Join,
    JoinResult,
    MemberProfile,
    RelayFrame,
    Welcome,
)

MAX_ANSWER = 1024 * 1024
RECV_SIZE = 65536
SETUP_TIMEOUT = 60.0


class Spec(msgspec.Struct, frozen=True):
    """What the benchmark process hands the client (written with ``msgspec.msgpack``)."""

    host: str
    port: int
    path: str  # the group address's WebSocket path
    fingerprint: bytes  # the relay's, from the group address: the welcome must match it
    channel: bytes  # the channel id and the group address id the join requests name
    address_id: str
    connections: int
    warmup: int  # join requests from fresh member keys: the warm-up, then the timed ones
    timed: int


@dataclass(slots=True)
class Link:
    """One greeted session: the relay's ``challenge`` for it, the framed requests signed for it
    (``frames``, of which ``sent`` are sent), and when the one in flight was sent (ns)."""

    sock: socket.socket
    parser: wsframe.Parser = field(default_factory=wsframe.Parser)
    challenge: bytes = b""
    frames: list[bytes] = field(default_factory=list)
    sent: int = 0
    sent_at: int = 0


@dataclass
class Outcome:
    statuses: Counter[str] = field(default_factory=Counter)  # join_result status -> answers
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)


def _recv_frames(link: Link) -> list[bytes]:
    """Blocking (setup only): at least one whole data frame."""
    while True:
        data = link.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("the relay closed the connection during setup")
        frames = link.parser.feed(data)
        if frames:
            return frames


def open_link(spec: Spec) -> Link:
    """TCP connect, WebSocket upgrade, ``hello``, the welcome verified (blocking, untimed)."""
    sock = socket.create_connection((spec.host, spec.port), timeout=SETUP_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(wsframe.upgrade_request(f"{spec.host}:{spec.port}", spec.path))
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("the relay closed the connection during the upgrade")
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {head[:200]!r}")
    link = Link(sock)
    if rest:
        link.parser.feed(rest)
    nonce = secrets.token_bytes(32)
    sock.sendall(wsframe.frame(encode(Hello(version=PROTOCOL_VERSION, nonce=nonce)), masked=True))
    [answer] = _recv_frames(link)
    welcome = decode(answer, RelayFrame, limit=MAX_ANSWER, what="relay frame")  # type: ignore[arg-type]
    if not isinstance(welcome, Welcome):
        raise ConnectionError(f"expected welcome, got {welcome!r}")
    link.challenge = verify_welcome(welcome, fingerprint=spec.fingerprint, nonce=nonce).challenge
    sock.setblocking(False)
    return link


def sign_shares(spec: Spec, links: list[Link], count: int, prefix: str) -> None:
    """``count`` join requests from fresh member keys, every N-th signed for the N-th link and
    framed, ready to send (untimed)."""
    now = int(time.time())
    for link in links:
        link.frames, link.sent = [], 0
    for i in range(count):
        link = links[i % len(links)]
        request = make_join_request(
            ed25519.Ed25519PrivateKey.generate(),
            relay_fingerprint=spec.fingerprint,
            channel=spec.channel,
            address_id=spec.address_id,
            profile=MemberProfile(name=f"{prefix}{i}", about="benchmark member"),
            session=link.challenge,
            now=now,
        )
        link.frames.append(wsframe.frame(encode(Join(request=request)), masked=True))


def run_closed_loop(links: list[Link], outcome: Outcome, *, record: bool) -> None:
    """Every link sends its first frame, and its next as soon as its answer is in, until its
    frames run out."""
    ep = select.epoll()
    by_fd = {link.sock.fileno(): link for link in links}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    in_flight = 0
    clock = time.perf_counter_ns
    latencies = outcome.latencies_ns
    statuses = outcome.statuses
    started = clock()
    for link in links:
        if not link.frames:
            continue
        link.sent_at = clock()
        link.sock.sendall(link.frames[0])
        link.sent = 1
        in_flight += 1
    try:
        while in_flight:
            events = ep.poll(SETUP_TIMEOUT)
            if not events:
                outcome.fail(f"no answer for {SETUP_TIMEOUT:g} s ({in_flight} in flight)")
                return
            for fd, _ in events:
                link = by_fd[fd]
                try:
                    data = link.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    outcome.fail("the relay closed a connection")
                    ep.unregister(fd)
                    in_flight -= 1
                    continue
                for payload in link.parser.feed(data):
                    now = clock()
                    if record:
                        latencies.append(now - link.sent_at)
                    answer = decode(payload, RelayFrame, limit=MAX_ANSWER, what="relay frame")  # type: ignore[arg-type]
                    if type(answer) is JoinResult:
                        statuses[answer.status] += 1
                    elif isinstance(answer, Error):
                        outcome.fail(f"error {answer.code}: {answer.reason}")
                    else:
                        outcome.fail(f"expected join_result, got {type(answer).__name__}")
                    if link.sent < len(link.frames):
                        link.sent_at = now
                        # A few hundred bytes into an empty socket buffer (one request in
                        # flight per connection): sendall returns at once.
                        link.sock.sendall(link.frames[link.sent])
                        link.sent += 1
                    else:
                        in_flight -= 1
    finally:
        outcome.seconds = (clock() - started) / 1e9
        ep.close()


def percentile_ms(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def main(argv: list[str]) -> int:
    spec = msgspec.msgpack.decode(Path(argv[0]).read_bytes(), type=Spec)
    links = [open_link(spec) for _ in range(spec.connections)]
    # Signed and framed (masked, zero key) before anything is timed: the timed loop only sends.
    sign_shares(spec, links, spec.warmup, "w")
    warm = Outcome()
    run_closed_loop(links, warm, record=False)
    if warm.errors or warm.statuses.get("admitted", 0) != spec.warmup:
        print(json.dumps({"event": "failed", "warmup": dict(warm.statuses), "errors": warm.error_samples}))
        return 1
    sign_shares(spec, links, spec.timed, "m")
    print(json.dumps({"event": "ready"}), flush=True)
    sys.stdin.readline()
    outcome = Outcome()
    cpu0 = time.process_time()
    run_closed_loop(links, outcome, record=True)
    cpu = time.process_time() - cpu0
    latencies = sorted(outcome.latencies_ns)
    result: dict[str, Any] = {
        "event": "done",
        "statuses": dict(outcome.statuses),
        "errors": outcome.errors,
        "error_samples": outcome.error_samples,
        "seconds": outcome.seconds,
        "cpu_seconds": cpu,
        "p50_ms": percentile_ms(latencies, 0.5),
        "p99_ms": percentile_ms(latencies, 0.99),
    }
    print(json.dumps(result), flush=True)
    close = wsframe.frame(b"\x03\xe8", masked=True, opcode=wsframe.OP_CLOSE)  # 1000: normal closure
    for link in links:
        with contextlib.suppress(OSError):
            link.sock.send(close)
        link.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
