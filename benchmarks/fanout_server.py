"""The fan-out baseline: a bare trio WebSocket server that broadcasts each post to every member.

Run as ``python -m benchmarks.fanout_server``; it logs one ``fanout.ready`` JSON line with the
bound ``listen`` address, like the relay's ``relay.ready``.  It is the ceiling this machine sets
for the fan-out benchmark, so it does as little as a broadcast server can in Python with trio:

- plain non-blocking stdlib sockets driven by ``trio.lowlevel.wait_readable/wait_writable``
  (no stream objects, no wsproto after the handshake: the framing of :mod:`benchmarks.wsframe`);
- the first message of a connection says what it is: a ``subscribe`` frame makes it a member
  (answered with a fixed ``subscribed``), a ``post`` frame makes it the publisher;
- per post, ONE ``event`` frame is encoded (the same ``EventFrame`` the relay pushes, around the
  same signed bytes) and framed once, then written to each member with one non-blocking
  ``send`` in a plain loop: no task switch per member.  Only a member whose socket is full gets
  the rest queued and a writer task that waits for its socket to drain (bounded: a member more
  than ``MAX_BACKLOG`` bytes behind is disconnected).  The publisher gets a ``post_result`` per
  post, sent at once: nothing is verified or stored.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections import deque

import msgspec
import trio

from benchmarks import wsframe

MAX_HEAD = 16 * 1024
MAX_BACKLOG = 4 * 1024 * 1024
RECV_SIZE = 256 * 1024


class Member:
    __slots__ = ("backlog", "dead", "queued", "sock", "wake")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.backlog: deque[bytes] = deque()
        self.queued = 0
        self.wake = trio.Event()
        self.dead = False


class Broadcaster:
    def __init__(self, nursery: trio.Nursery) -> None:
        from relay.protocol.encoding import encode
        from relay.protocol.messages import Subscribed

        self.nursery = nursery
        self.members: list[Member] = []
        self.subscribed = wsframe.frame(encode(Subscribed(head_seq=0, first_seq=0, profile_version=1)))
        self.posts = 0
        self.slow = 0  # members that needed a writer task at least once
        self.dropped = 0

    def broadcast(self, data: bytes) -> None:
        n = len(data)
        for m in self.members:
            if m.backlog:
                self._queue(m, data)
                continue
            try:
                sent = m.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                m.dead = True
                continue
            if sent < n:
                self._queue(m, data[sent:])
        if any(m.dead for m in self.members):
            self.members = [m for m in self.members if not m.dead]

    def _queue(self, m: Member, data: bytes) -> None:
        if m.dead:
            return
        m.queued += len(data)
        if m.queued > MAX_BACKLOG:
            m.dead = True
            self.dropped += 1
            return
        m.backlog.append(data)
        if len(m.backlog) == 1:
            self.slow += 1
            self.nursery.start_soon(self._drain, m)

    async def _drain(self, m: Member) -> None:
        try:
            while m.backlog and not m.dead:
                await trio.lowlevel.wait_writable(m.sock)
                data = m.backlog[0]
                try:
                    sent = m.sock.send(data)
                except BlockingIOError:
                    continue
                except OSError:
                    m.dead = True
                    return
                m.queued -= sent
                if sent < len(data):
                    m.backlog[0] = data[sent:]
                else:
                    m.backlog.popleft()
        finally:
            if m.dead:
                m.backlog.clear()


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(RECV_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def connection(sock: socket.socket, hub: Broadcaster) -> None:
    from relay.protocol.encoding import encode
    from relay.protocol.messages import EventFrame, Post, PostResult, Subscribe

    decoder = msgspec.msgpack.Decoder(Post | Subscribe)
    member: Member | None = None
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await recv(sock)
            if not data or len(head) > MAX_HEAD:
                return
            head += data
        end = head.index(b"\r\n\r\n")
        answer = wsframe.upgrade_response(head[:end])
        if answer is None:
            return
        await send_all(sock, answer)
        parser = wsframe.Parser()
        messages = parser.feed(head[end + 4 :])
        no_id = bytes(32)
        while not parser.closed:
            for message in messages:
                if member is not None:
                    continue  # a member's later requests are not part of the benchmark
                frame = decoder.decode(message)
                if isinstance(frame, Subscribe):
                    member = Member(sock)
                    await send_all(sock, hub.subscribed)
                    hub.members.append(member)
                    continue
                # One encoding and one WebSocket frame per post, shared by every member.
                hub.broadcast(wsframe.frame(encode(EventFrame(event=frame.event))))
                hub.posts += 1
                await send_all(
                    sock, wsframe.frame(encode(PostResult(status="stored", seq=hub.posts, id=no_id)))
                )
            data = await recv(sock)
            if not data:
                return
            messages = parser.feed(data)
    except OSError:
        return
    finally:
        if member is not None:
            member.dead = True
            if member in hub.members:
                hub.members.remove(member)
        sock.close()


async def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        hub = Broadcaster(nursery)

        async def accept() -> None:
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(connection, sock, hub)

        nursery.start_soon(accept)
        print(json.dumps({"event": "fanout.ready", "listen": f"127.0.0.1:{port}", "pid": os.getpid()}))
        sys.stdout.flush()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                print(
                    json.dumps(
                        {
                            "event": "fanout.stopped",
                            "posts": hub.posts,
                            "slow": hub.slow,
                            "dropped": hub.dropped,
                        }
                    )
                )
                sys.stdout.flush()
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main)
