"""The abuse benchmark's well-behaved client: ``python -m benchmarks.abuse_client SPEC`` (a JSON file).

A process of its own, bound to another loopback address (``127.0.0.2`` by default: another
host than the attackers' ``127.0.0.1``), doing what real users of a relay do, with the
project's own client library (trio-websocket, ``relay.client.connection.open_session``: the
relay's signed ``welcome`` checked against the fingerprint in the address):

- at a fixed rate (``rate`` sessions a second, open loop: a slow answer never delays the next
  start), it opens a session on its channel's group address and sends one request, in turn:
  ``head_request`` (the signed head checked), a ``join`` of a fresh member key (``admitted``
  expected), or an owner ``post`` (``stored`` expected; posts are chained, so each waits for
  the one before it).  The latency of one is from its scheduled start to its checked answer.
- a member of the channel stays subscribed (one connection for the whole run) and must receive
  every stored post, once, in order, and nothing else; the time from a post's send to its
  arrival is its delivery latency.
- ``watch`` members follow other channels (the attacker's, in the liar attack): each checks
  that the events it receives form one chain (every ``seq`` the last one plus one, every
  ``prev`` the last event's id), which a refused event served by any path would break.  A
  ``lagging`` watcher reads through a small receive buffer at a bounded speed, so the relay
  drops it back to catch-up (the path the issue's framing attack went through).

Control: prints ``{"event": "ready"}`` once subscribed; then for each ``phase NAME SECONDS``
line on stdin runs the load for that long, waits for the answers in flight and the deliveries
due, and prints one JSON line with what it saw; ``quit`` ends it.

Must not: hide a failure.  Every exception, unexpected answer, missing, extra or out-of-order
event, and closed subscription is a failure, kept with a sample of its text.
"""

from __future__ import annotations

import json
import resource
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from benchmarks.rawws import Counter, RawWs
from relay.client.connection import RelaySession, connecting_from, open_session
from relay.client.owner import OwnerState
from relay.protocol.addresses import RelayAddress, parse_address
from relay.protocol.encoding import b64d, decode
from relay.protocol.events import ChainHead, event_id, make_event, stored_event
from relay.protocol.handshake import verify_welcome
from relay.protocol.heads import verify_head
from relay.protocol.membership import ACTION_SUBSCRIBE, make_join_request, make_member_request
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    Error,
    EventFrame,
    HeadAnswer,
    HeadRequest,
    Hello,
    Join,
    JoinResult,
    MemberProfile,
    Post,
    PostResult,
    RelayFrame,
    Signed,
    Subscribe,
    Subscribed,
    Welcome,
)

MAX_SAMPLES = 8
DELIVERY_GRACE = 5.0  # seconds after a phase for the posts' deliveries still due
LAG_BYTES_PER_SECOND = 256 * 1024  # how fast a lagging watcher reads
LAG_RCVBUF = 4096
KINDS = ("head", "join", "post")
SLOWEST = 5  # the slowest requests of a phase are reported with when they started


class Watch(msgspec.Struct, frozen=True):
    """Another channel a member of this client follows."""

    address: str  # its group address
    channel: str  # its channel id, b64url
    lagging: bool = False


class Spec(msgspec.Struct, frozen=True):
    group_address: str
    owner_state: str
    rate: float = 10.0
    local: str = "127.0.0.2"
    timeout: float = 10.0
    watch: list[Watch] = []


@dataclass
class Tally:
    """One phase's figures."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    failures: int = 0
    samples: list[str] = field(default_factory=list)
    deliveries: list[float] = field(default_factory=list)
    watched: dict[str, int] = field(default_factory=dict)  # events received per watcher
    slowest: list[tuple[float, float, str]] = field(default_factory=list)  # latency, start offset, kind

    def fail(self, what: str) -> None:
        self.failures += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(what[:300])


class Client:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.address: RelayAddress = parse_address(spec.group_address)
        assert self.address.address_id is not None
        self.address_id: str = self.address.address_id
        self.owner = OwnerState.load(Path(spec.owner_state))
        self.channel = self.owner.channel
        self.tally = Tally()
        self.head = ChainHead()
        self.head_known = False
        self.post_lock = trio.Lock()
        self.signed_ids: set[bytes] = set()  # every event this owner signed (sent or not)
        self.sent_at: dict[bytes, float] = {}  # posts sent, by id: when (for the delivery time)
        # Stored posts the member has not received yet, and events it received before the
        # post's answer came back (the fan-out may beat the answer): the two meet in the middle.
        self.awaited: dict[bytes, int] = {}
        self.early: set[bytes] = set()
        self.last_seen = (0, b"")  # the member's last event: seq, id
        self.phase_started = 0.0

    # --- sessions and requests -----------------------------------------------------------

    async def head_op(self) -> None:
        async with open_session(self.address, timeout=self.spec.timeout) as session:
            answer = await session.request(HeadRequest())
            if not isinstance(answer, HeadAnswer):
                raise RuntimeError(f"expected head, got {type(answer).__name__}")
            verify_head(answer.head, relay_key=session.card.relay_key, channel=self.channel)

    async def join_op(self) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        async with open_session(self.address, timeout=self.spec.timeout) as session:
            answer = await session.request(Join(request=self._join_request(key, session)))
        if not isinstance(answer, JoinResult) or answer.status != "admitted":
            raise RuntimeError(f"join: {answer!r}"[:300])

    def _join_request(
        self,
        key: ed25519.Ed25519PrivateKey,
        session: RelaySession,
        channel: bytes | None = None,
        address: RelayAddress | None = None,
    ) -> Signed:
        address = address or self.address
        assert address.address_id is not None
        return make_join_request(
            key,
            relay_fingerprint=address.fingerprint,
            channel=channel or self.channel,
            address_id=address.address_id,
            profile=MemberProfile(name="Well-behaved member", about="abuse benchmark"),
            session=session.challenge,
            now=int(time.time()),
        )

    async def post_op(self) -> None:
        async with open_session(self.address, timeout=self.spec.timeout) as session, self.post_lock:
            if not self.head_known:
                await self._sync_head(session)
            signed = make_event(
                self.owner.owner_key,
                channel=self.channel,
                after=self.head,
                body=secrets.token_bytes(200),
                now=int(time.time()),
            )
            ident = event_id(signed.body)
            self.signed_ids.add(ident)
            self.head_known = False  # until the answer says where the chain is
            self.sent_at[ident] = time.perf_counter()
            answer = await session.request(Post(event=signed))
            if not isinstance(answer, PostResult) or answer.status != "stored":
                raise RuntimeError(f"post: {answer!r}"[:300])
            if answer.seq != self.head.seq + 1 or answer.id != ident:
                raise RuntimeError(f"post stored at {answer.seq}, expected {self.head.seq + 1}")
            created = stored_event(signed).event.created_at
            self.head = ChainHead(answer.seq, ident, created)
            self.head_known = True
            self._stored(answer.seq, ident)

    async def _sync_head(self, session: RelaySession) -> None:
        """Where the relay's chain is (after a post whose answer never came)."""
        answer = await session.request(HeadRequest())
        if not isinstance(answer, HeadAnswer):
            raise RuntimeError(f"expected head, got {type(answer).__name__}")
        head = verify_head(answer.head, relay_key=session.card.relay_key, channel=self.channel).head
        if head.seq and answer.event is not None:
            created = stored_event(answer.event).event.created_at
            if head.seq > self.head.seq and head.id in self.signed_ids:
                self._stored(head.seq, head.id)  # a post whose answer was lost was stored
            self.head = ChainHead(head.seq, head.id, created)
        else:
            self.head = ChainHead()
        self.head_known = True

    def _stored(self, seq: int, ident: bytes) -> None:
        if ident in self.early:
            self.early.discard(ident)
        else:
            self.awaited[ident] = seq

    # --- the subscribed member of the client's own channel --------------------------------

    async def member(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        async with open_session(self.address, timeout=self.spec.timeout) as session:
            answer = await session.request(Join(request=self._join_request(key, session)))
            if not isinstance(answer, JoinResult) or answer.status != "admitted":
                raise RuntimeError(f"the member was not admitted: {answer!r}")
            await self._sync_head(session)
        self.last_seen = (self.head.seq, self.head.id)  # from now on: no history, only new posts
        once = _Once(task_status)
        while True:
            try:
                async with open_session(self.address, timeout=self.spec.timeout) as session:
                    await self._subscribe(session, key, self.channel, self.address, since=self.last_seen[0])
                    once.started()
                    while True:
                        self._member_frame(await session.receive())
            except Exception as exc:
                if not once.done:
                    raise
                self.tally.fail(f"member subscription ended: {type(exc).__name__}: {exc}")
                await trio.sleep(0.5)

    async def _subscribe(
        self,
        session: RelaySession,
        key: ed25519.Ed25519PrivateKey,
        channel: bytes,
        address: RelayAddress,
        since: int | None,
    ) -> None:
        assert address.address_id is not None
        request = make_member_request(
            key,
            relay_fingerprint=address.fingerprint,
            channel=channel,
            address_id=address.address_id,
            session=session.challenge,
            now=int(time.time()),
            action=ACTION_SUBSCRIBE,
        )
        answer = await session.request(Subscribe(request=request, since=since))
        if not isinstance(answer, Subscribed):
            raise RuntimeError(f"expected subscribed, got {answer!r}"[:300])

    def _member_frame(self, frame: RelayFrame) -> None:
        if isinstance(frame, Error):
            self.tally.fail(f"member: error frame {frame.code}: {frame.reason}")
            return
        if not isinstance(frame, EventFrame):
            return  # a profile push
        signed = frame.event
        event = stored_event(signed).event
        ident = event_id(signed.body)
        seq, last = self.last_seen
        if event.seq != seq + 1 or (seq and event.prev != last):
            self.tally.fail(f"member: event {event.seq} after {seq} (gap, repeat or fork)")
        if ident not in self.signed_ids:
            self.tally.fail(f"member: event {event.seq} was never posted by the owner")
        self.last_seen = (event.seq, ident)
        sent = self.sent_at.pop(ident, None)
        if sent is not None:
            self.tally.deliveries.append(time.perf_counter() - sent)
        if self.awaited.pop(ident, None) is None:
            self.early.add(ident)

    # --- watchers of other channels -------------------------------------------------------

    async def watcher(self, index: int, watch: Watch, task_status: trio.TaskStatus[None]) -> None:
        address = parse_address(watch.address)
        channel = b64d(watch.channel)
        key = ed25519.Ed25519PrivateKey.generate()
        async with open_session(address, timeout=self.spec.timeout) as session:
            answer = await session.request(Join(request=self._join_request(key, session, channel, address)))
        if not isinstance(answer, JoinResult) or answer.status != "admitted":
            raise RuntimeError(f"watcher {index} was not admitted: {answer!r}")
        name = f"{'lagging' if watch.lagging else 'live'} member {index}"
        self.tally.watched[name] = 0
        chain = _Chain()
        once = _Once(task_status)
        while True:
            try:
                if watch.lagging:
                    await self._lagging(name, address, channel, key, chain, once)
                else:
                    async with open_session(address, timeout=self.spec.timeout) as session:
                        await self._subscribe(session, key, channel, address, since=chain.seq or None)
                        once.started()
                        while True:
                            self._watched_frame(name, chain, await session.receive())
            except Exception as exc:
                if not once.done:
                    raise
                self.tally.fail(f"{name}: subscription ended: {type(exc).__name__}: {exc}")
                await trio.sleep(0.5)

    async def _lagging(
        self,
        name: str,
        address: RelayAddress,
        channel: bytes,
        key: ed25519.Ed25519PrivateKey,
        chain: _Chain,
        once: _Once,
    ) -> None:
        """A member on a raw socket with a small receive buffer that reads at a bounded speed."""
        parts = urlsplit(address.websocket_url)
        assert address.address_id is not None and parts.hostname is not None and parts.port is not None
        ws = await RawWs.open(
            parts.hostname, parts.port, parts.path, self.spec.local, Counter(), rcvbuf=LAG_RCVBUF
        )
        try:
            nonce = secrets.token_bytes(32)
            answer = await ws.request(Hello(version=PROTOCOL_VERSION, nonce=nonce))
            if not isinstance(answer, Welcome):
                raise RuntimeError(f"expected welcome, got {answer!r}"[:300])
            card = verify_welcome(answer, fingerprint=address.fingerprint, nonce=nonce)
            request = make_member_request(
                key,
                relay_fingerprint=address.fingerprint,
                channel=channel,
                address_id=address.address_id,
                session=card.challenge,
                now=int(time.time()),
                action=ACTION_SUBSCRIBE,
            )
            answer = await ws.request(Subscribe(request=request, since=chain.seq or None))
            if not isinstance(answer, Subscribed):
                raise RuntimeError(f"expected subscribed, got {answer!r}"[:300])
            once.started()
            while True:
                data = await ws.recv()
                frame: RelayFrame = decode(data, RelayFrame, limit=4 * 1024 * 1024)  # type: ignore[arg-type]
                self._watched_frame(name, chain, frame)
                await trio.sleep(len(data) / LAG_BYTES_PER_SECOND)
        finally:
            await ws.aclose()

    def _watched_frame(self, name: str, chain: _Chain, frame: RelayFrame) -> None:
        if isinstance(frame, Error):
            self.tally.fail(f"{name}: error frame {frame.code}: {frame.reason}")
            return
        if not isinstance(frame, EventFrame):
            return
        event = stored_event(frame.event).event
        ident = event_id(frame.event.body)
        if chain.seq and (event.seq != chain.seq + 1 or event.prev != chain.id):
            self.tally.fail(
                f"{name}: event {event.seq} does not follow {chain.seq} (a fork: a refused event served?)"
            )
        chain.seq, chain.id = event.seq, ident
        self.tally.watched[name] = self.tally.watched.get(name, 0) + 1

    # --- phases ---------------------------------------------------------------------------

    async def run_op(self, kind: str, due: float) -> None:
        try:
            with trio.fail_after(self.spec.timeout * 2):
                if kind == "head":
                    await self.head_op()
                elif kind == "join":
                    await self.join_op()
                else:
                    await self.post_op()
        except Exception as exc:
            self.tally.fail(f"{kind}: {type(exc).__name__}: {exc}")
            return
        latency = time.perf_counter() - due
        self.tally.latencies[kind].append(latency)
        self.tally.slowest.append((latency, due - self.phase_started, kind))
        if len(self.tally.slowest) > 2 * SLOWEST:
            self.tally.slowest = sorted(self.tally.slowest, reverse=True)[:SLOWEST]

    async def phase(self, name: str, seconds: float) -> dict[str, Any]:
        self.tally = Tally(watched=dict.fromkeys(self.tally.watched, 0))
        cpu0 = _cpu()
        started = self.phase_started = time.perf_counter()
        interval = 1.0 / self.spec.rate
        count = int(seconds * self.spec.rate)
        async with trio.open_nursery() as nursery:
            for n in range(count):
                due = started + n * interval
                await trio.sleep(max(0.0, due - time.perf_counter()))
                nursery.start_soon(self.run_op, KINDS[n % len(KINDS)], due)
        wall = time.perf_counter() - started
        deadline = time.perf_counter() + DELIVERY_GRACE
        while self.awaited and time.perf_counter() < deadline:
            await trio.sleep(0.05)
        for seq in sorted(self.awaited.values()):
            self.tally.fail(f"member: stored post {seq} not delivered within {DELIVERY_GRACE:g} s")
        self.awaited.clear()
        self.sent_at.clear()
        tally = self.tally
        return {
            "event": "phase",
            "phase": name,
            "seconds": round(wall, 3),
            "requests": count,
            "latencies": tally.latencies,
            "failures": tally.failures,
            "failure_samples": tally.samples,
            "deliveries": tally.deliveries,
            "watched": tally.watched,
            "slowest": [
                {"ms": round(lat * 1000, 1), "at_s": round(at, 2), "kind": kind}
                for lat, at, kind in sorted(tally.slowest, reverse=True)[:SLOWEST]
            ],
            "cpu_seconds": round(_cpu() - cpu0, 3),
        }


@dataclass
class _Chain:
    seq: int = 0
    id: bytes = b""


class _Once:
    """``task_status.started()`` the first time a subscription is made, and whether it was."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self.task_status = task_status
        self.done = False

    def started(self) -> None:
        if not self.done:
            self.done = True
            self.task_status.started()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _say(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def main(spec: Spec) -> None:
    client = Client(spec)
    with connecting_from(spec.local):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.member)
            for index, watch in enumerate(spec.watch):
                await nursery.start(client.watcher, index, watch)
            _say({"event": "ready"})
            while True:
                line = (await trio.to_thread.run_sync(sys.stdin.readline)).split()
                if not line or line[0] == "quit":
                    break
                if line[0] == "phase":
                    _say(await client.phase(line[1], float(line[2])))
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, msgspec.json.decode(Path(sys.argv[1]).read_bytes(), type=Spec))
