"""Held resources against the real daemon: pings for idle subscribed sessions, subscriptions per
member key, and partly received messages (time and memory).  Each attack runs from 127.0.0.1
(or a few loopback addresses) while well-behaved clients on 127.0.0.2 keep working."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from relayproc import RelayFactory, RunningRelay
from traffic import (
    Poster,
    active_channel,
    group_session,
    join_member,
    metric,
    raw_feed,
    read_events,
    subscribe,
    subscribe_frame,
)
from wire import check_error, connect_from, fingerprint_of, well_behaved
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Event, Ping, Request

from relay.protocol.encoding import decode, encode
from relay.protocol.handshake import verify_welcome
from relay.protocol.messages import PROTOCOL_VERSION, Error, Hello, RelayFrame, Subscribed, Welcome

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class RawClient:
    """A WebSocket on a plain socket, driven by hand (wsproto): it answers nothing by itself."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.challenge = b""  # the relay's challenge from the welcome: what signed requests name

    async def send_frame(self, frame: object) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=encode(frame))))

    async def recv_frame(self, timeout: float = 5.0) -> RelayFrame:
        with trio.fail_after(timeout):
            while True:
                for event in self.ws.events():
                    if isinstance(event, BytesMessage):
                        assert event.message_finished
                        return decode(bytes(event.data), RelayFrame, limit=10**6)  # type: ignore[arg-type,return-value]
                self.ws.receive_data(await self.stream.receive_some(65536))

    async def start_message(self, size: int, sent: int) -> None:
        """Send the first ``sent`` bytes of a ``size``-byte binary message (never the rest)."""
        frame = self.ws.send(BytesMessage(data=b"\x00" * size))
        await self.stream.send_all(frame[: len(frame) - size + sent])

    async def until_closed(self, timeout: float) -> list[Event]:
        """Every WebSocket event until the relay ends the connection."""
        seen: list[Event] = []
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                self.ws.receive_data(data or None)
                seen.extend(self.ws.events())
                if not data:
                    return seen


@asynccontextmanager
async def raw_client(
    relay: RunningRelay, path: str = "/r", local: str = "127.0.0.1"
) -> AsyncIterator[RawClient]:
    """A raw WebSocket from ``local``, greeted (hello answered by a welcome)."""
    host, port = relay.listen.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port), local_address=local)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=relay.listen, target=path)))
        with trio.fail_after(5):
            accepted = False
            while not accepted:
                ws.receive_data(await stream.receive_some(65536))
                accepted = any(isinstance(e, AcceptConnection) for e in ws.events())
        client = RawClient(stream, ws)
        nonce = secrets.token_bytes(32)
        await client.send_frame(Hello(version=PROTOCOL_VERSION, nonce=nonce))
        welcome = await client.recv_frame()
        assert isinstance(welcome, Welcome)
        client.challenge = verify_welcome(welcome, fingerprint=fingerprint_of(relay), nonce=nonce).challenge
        yield client
    finally:
        await stream.aclose()


def error_frames(events: list[Event]) -> list[Error]:
    frames = [decode(bytes(e.data), RelayFrame, limit=10**6) for e in events if isinstance(e, BytesMessage)]  # type: ignore[arg-type]
    return [f for f in frames if isinstance(f, Error)]


def close_code(events: list[Event]) -> int | None:
    closes = [e for e in events if isinstance(e, CloseConnection)]
    return closes[0].code if closes else None


async def wait_metric(relay: RunningRelay, name: str, value: float, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(relay, name) != value and time.monotonic() < deadline:
        await trio.sleep(0.05)
    assert metric(relay, name) == value, (name, metric(relay, name))


# --- pings ------------------------------------------------------------------------------------


async def test_a_member_that_stops_answering_pings_is_closed_and_one_that_answers_stays(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(server={"ping_interval": 0.5, "pong_timeout": 0.5})
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id, "Ada")
    bob = await join_member(relay, owner, address_id, "Bob")
    poster = Poster(owner)
    # Ada: the library client from another host, subscribed; it answers pings by itself
    async with (
        well_behaved(relay, "127.0.0.3") as client,
        connect_from(relay, f"/g/{address_id}", "127.0.0.2") as good,
    ):
        await good.hello()
        await subscribe(good, relay, owner, address_id, ada)
        # Bob: subscribed on a raw socket, then reads nothing and answers nothing
        async with raw_feed(relay, address_id, owner, bob) as silent:
            await trio.sleep(3.0)  # several ping periods
            seen = RawClient(silent.stream, silent.ws)
            events = await seen.until_closed(5.0)
        assert any(isinstance(e, Ping) for e in events), events
        errors = error_frames(events)
        assert [e.code for e in errors] == ["timeout"] and "ping" in errors[0].reason
        assert close_code(events) == CLOSE_POLICY
        # Ada is still there after all those periods, and still gets events
        async with group_session(relay, address_id) as owner_session:
            await poster.post(owner_session, b"still here")
        assert await read_events(good, 1) == poster.events
    client.check()
    assert metric(relay, "relay_ping_timeouts_total") == 1
    assert metric(relay, "relay_pings_total") >= 4  # both, several times
    failed = [e for e in relay.events("connection.failed") if e["code"] == "timeout"]
    assert len(failed) == 1 and "ping" in failed[0]["reason"]


# --- subscriptions per member key -------------------------------------------------------------


async def test_one_member_cannot_hold_the_relay_with_subscriptions(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """Scaled from the issue: max_connections 300 and one member holding 300 subscribed sessions
    made 60 of 61 probes from another channel fail.  Here: 30 connections, a source may hold 20,
    a member key 4 subscriptions; every probe from another channel's member succeeds."""
    relay = relay_factory(
        server={
            "max_connections": 30,
            "max_connections_per_ip": 20,
            "connection_burst_per_ip": 1000,
            "request_burst_per_ip": 1000,
        }
    )
    attacker_owner, _, attacker_group = await active_channel(relay, tmp_path)
    mallory = await join_member(relay, attacker_owner, attacker_group, "Mallory")
    victim_owner, _, victim_group = await active_channel(relay, tmp_path)
    probe_member = await join_member(relay, victim_owner, victim_group, "Pat")

    async with well_behaved(relay) as client:
        held: list[RawClient] = []
        answers: list[RelayFrame] = []
        async with trio.open_nursery() as attack:
            opened = trio.Event()

            async def hold(n: int) -> None:
                try:
                    async with raw_client(relay, f"/g/{attacker_group}") as session:
                        await session.send_frame(
                            subscribe_frame(
                                relay, attacker_owner, attacker_group, mallory, session=session.challenge
                            )
                        )
                        answers.append(await session.recv_frame())
                        held.append(session)
                        if len(held) == 20:
                            opened.set()
                        await trio.sleep_forever()
                except (AssertionError, trio.BrokenResourceError, OSError):
                    pass  # closed at the accept (over the source's connections)

            for n in range(20):
                attack.start_soon(hold, n)
            with trio.fail_after(20):
                await opened.wait()
            subscribed = [a for a in answers if isinstance(a, Subscribed)]
            refused = [a for a in answers if isinstance(a, Error)]
            assert len(subscribed) == 4 and len(refused) == 16
            for error in refused:
                check_error(error, "rate_limited")
                assert "4 subscriptions" in error.reason
            # more connections from the attacker's host are closed at once
            host, port = relay.listen.rsplit(":", 1)
            extra = await trio.open_tcp_stream(host, int(port))
            with trio.fail_after(2):
                assert await extra.receive_some(1) == b""
            await extra.aclose()

            # 11 probes from another channel's member, on another host: every one succeeds
            for _ in range(11):
                async with connect_from(relay, f"/g/{victim_group}", "127.0.0.2") as probe:
                    await probe.hello()
                    await subscribe(probe, relay, victim_owner, victim_group, probe_member)
            await trio.sleep(0.5)  # the attack holds: the other host's client goes on meanwhile
            attack.cancel_scope.cancel()
    client.check()
    assert metric(relay, 'relay_bounds_hit_total{bound="subscriptions_per_member"}') == 16
    assert metric(relay, 'relay_bounds_hit_total{bound="connections_per_ip"}') >= 1

    # the attacker's subscriptions are gone with its connections: the member may subscribe again
    await wait_metric(relay, "relay_subscribers", 0)
    async with connect_from(relay, f"/g/{attacker_group}", "127.0.0.2") as again:
        await again.hello()
        await subscribe(again, relay, attacker_owner, attacker_group, mallory)


# --- partly received messages -----------------------------------------------------------------


async def test_a_message_must_complete_within_message_timeout(relay_factory: RelayFactory) -> None:
    relay = relay_factory(server={"message_timeout": 1.0})
    async with well_behaved(relay) as client:
        async with raw_client(relay) as slow:
            started = time.monotonic()
            await slow.start_message(100_000, 10_000)
            await wait_metric(relay, "relay_buffered_bytes", 10_000, timeout=3)
            events = await slow.until_closed(5.0)
            elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 4, elapsed
        errors = error_frames(events)
        assert [e.code for e in errors] == ["timeout"] and "1 s" in errors[0].reason
        assert close_code(events) == CLOSE_POLICY
        await wait_metric(relay, "relay_buffered_bytes", 0)
    client.check()
    failed = [e for e in relay.events("connection.failed") if e["code"] == "timeout"]
    assert len(failed) == 1 and "message" in failed[0]["reason"]


async def test_partly_received_messages_have_a_memory_budget(relay_factory: RelayFactory) -> None:
    """1 MiB for the relay, a quarter of it per source; 200 KiB partial messages from several
    hosts fill it, and the connection that would grow past it is closed (unavailable, 1013)."""
    kib = 1024
    relay = relay_factory(server={"max_buffered_bytes": 1024 * kib, "message_timeout": 60.0})
    async with well_behaved(relay) as client, trio.open_nursery() as nursery:
        holders: list[RawClient] = []
        done = trio.Event()

        async def hold(local: str, ready: trio.Event) -> None:
            async with raw_client(relay, "/r", local) as session:
                await session.start_message(250 * kib, 200 * kib)
                holders.append(session)
                ready.set()
                await done.wait()

        for local in ("127.0.0.1", "127.0.0.4", "127.0.0.5", "127.0.0.6"):
            ready = trio.Event()
            nursery.start_soon(hold, local, ready)
            await ready.wait()
        await wait_metric(relay, "relay_buffered_bytes", 800 * kib)

        # a second message from one of those hosts: over its quarter (256 KiB)
        async with raw_client(relay, "/r", "127.0.0.1") as greedy:
            await greedy.start_message(250 * kib, 100 * kib)
            events = await greedy.until_closed(5.0)
        assert [e.code for e in error_frames(events)] == ["unavailable"]
        assert close_code(events) == CLOSE_TRY_AGAIN
        # another host, within its own quarter, but over what the relay has left
        async with raw_client(relay, "/r", "127.0.0.7") as late:
            await late.start_message(250 * kib, 240 * kib)
            events = await late.until_closed(5.0)
        assert [e.code for e in error_frames(events)] == ["unavailable"]
        assert close_code(events) == CLOSE_TRY_AGAIN
        assert metric(relay, "relay_buffered_bytes") == 800 * kib  # the refused gave theirs back

        done.set()
    await wait_metric(relay, "relay_buffered_bytes", 0)
    client.check()
    assert metric(relay, 'relay_bounds_hit_total{bound="buffered_bytes_per_ip"}') == 1
    assert metric(relay, 'relay_bounds_hit_total{bound="buffered_bytes"}') == 1
    hits = {e["bound"]: e for e in relay.events("bound.hit")}
    assert (
        hits["buffered_bytes"]["limit"] == 1024 * kib and hits["buffered_bytes_per_ip"]["limit"] == 256 * kib
    )


class _Wrapped(trio.abc.HalfCloseableStream):
    """A stream around a socket stream, as trio.SSLStream is (``transport_stream``)."""

    def __init__(self, transport_stream: trio.SocketStream) -> None:
        self.transport_stream = transport_stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.transport_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


async def test_the_sweeper_wakes_a_reader_on_a_plain_or_a_wrapped_socket() -> None:
    """``abort`` ends a reader that waits for days (a subscribed member), also under TLS-like
    wrapping, and the reader reports why (no timer or cancel scope of its own)."""
    from wsproto.connection import Connection

    from relay.server.http import Aborted, WebSocket

    for wrap in (False, True):
        left, right = trio.socket.socketpair()
        stream: trio.abc.Stream = trio.SocketStream(left)
        if wrap:
            stream = _Wrapped(trio.SocketStream(left))
        ws = WebSocket(stream, Connection(ConnectionType.SERVER), 1024)
        caught: list[BaseException] = []

        async def read(ws: WebSocket = ws, caught: list[BaseException] = caught) -> None:
            try:
                await ws.receive()
            except Aborted as exc:
                caught.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.sleep(0.1)
                ws.abort(b"", CLOSE_POLICY, "timeout", "no answer to a ping")
        assert [(e.code, e.reason) for e in caught] == [("timeout", "no answer to a ping")]  # type: ignore[attr-defined]
        left.close()
        right.close()
