"""Helpers for channel-traffic tests against the real daemon: an active channel, members who
join with raw frames (with a seal key), owners who post signed events, and feeds read frame by
frame.  Built on the raw client of ``wire.py``: nothing here refuses to send a wrong frame.
Every signed request names the session (the connection's challenge) it is meant for."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from relayproc import RunningRelay
from test_flow import new_owner
from wire import RawSession, connect, fingerprint_of
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from relay.client import add_relay, publish
from relay.client.owner import OwnerState
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.direct import make_direct_invitation
from relay.protocol.encoding import decode, encode
from relay.protocol.events import ChainHead, event_id, make_event
from relay.protocol.handshake import verify_welcome
from relay.protocol.membership import ACTION_SUBSCRIBE, make_join_request, make_member_request
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    EventFrame,
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


async def active_channel(relay: RunningRelay, tmp_path: Path, **kw: object) -> tuple[OwnerState, Path, str]:
    """A channel listed on ``relay`` and active there; returns the owner, its file, the address id."""
    state, path = new_owner(tmp_path)
    for key, value in kw.items():
        setattr(state, key, value)
    await add_relay(state, path, relay.address)
    await publish(state, path)
    entry = state.relay(relay.address)
    assert entry is not None and entry.group_address is not None
    address_id = parse_address(entry.group_address).address_id
    assert address_id is not None
    return state, path, address_id


@dataclass
class Member:
    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    seal: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate)

    @property
    def public(self) -> bytes:
        return crypto.public_bytes(self.key)

    @property
    def seal_public(self) -> bytes:
        return self.seal.public_key().public_bytes_raw()


@asynccontextmanager
async def group_session(
    relay: RunningRelay, address_id: str, local_address: str | None = None
) -> AsyncIterator[RawSession]:
    async with connect(relay, f"/g/{address_id}", local_address) as session:
        await session.hello()
        yield session


def join_request(
    relay: RunningRelay,
    owner: OwnerState,
    address_id: str,
    member: Member,
    *,
    session: bytes,
    name: str = "Ada",
) -> Join:
    """``member``'s join request, for the connection whose challenge is ``session``."""
    request = make_join_request(
        member.key,
        relay_fingerprint=fingerprint_of(relay),
        channel=owner.channel,
        address_id=address_id,
        profile=MemberProfile(name=name, seal_key=member.seal_public),
        session=session,
        now=int(time.time()),
    )
    return Join(request=request)


async def join_member(relay: RunningRelay, owner: OwnerState, address_id: str, name: str = "Ada") -> Member:
    member = Member()
    async with group_session(relay, address_id) as session:
        join = join_request(relay, owner, address_id, member, session=session.challenge, name=name)
        answer = await session.request(join)
    assert isinstance(answer, JoinResult), answer
    assert answer.status == "admitted", answer
    return member


def subscribe_frame(
    relay: RunningRelay,
    owner: OwnerState,
    address_id: str,
    member: Member,
    since: int | None = None,
    *,
    session: bytes,
) -> Subscribe:
    """``member``'s subscribe, for the connection whose challenge is ``session``."""
    request = make_member_request(
        member.key,
        relay_fingerprint=fingerprint_of(relay),
        channel=owner.channel,
        address_id=address_id,
        session=session,
        now=int(time.time()),
        action=ACTION_SUBSCRIBE,
    )
    return Subscribe(request=request, since=since)


async def subscribe(
    session: RawSession,
    relay: RunningRelay,
    owner: OwnerState,
    address_id: str,
    member: Member,
    since: int | None = None,
) -> Subscribed:
    answer = await session.request(
        subscribe_frame(relay, owner, address_id, member, since, session=session.challenge)
    )
    assert isinstance(answer, Subscribed), answer
    return answer


@dataclass
class Poster:
    """An owner's chain as it posts: the head it knows, and every event it made."""

    owner: OwnerState
    key: ed25519.Ed25519PrivateKey | None = None
    head: ChainHead = field(default_factory=ChainHead)
    events: list[Signed] = field(default_factory=list)

    def next(self, body: bytes | None = None, now: int | None = None) -> Signed:
        signed = make_event(
            self.key or self.owner.owner_key,
            channel=self.owner.channel,
            # the relay, not this helper, judges the time: a test may date an event anyhow
            after=ChainHead(self.head.seq, self.head.id, 0),
            body=body if body is not None else secrets.token_bytes(8),
            now=int(time.time()) if now is None else now,
        )
        return signed

    def accept(self, signed: Signed, created_at: int | None = None) -> None:
        self.head = ChainHead(self.head.seq + 1, event_id(signed.body), created_at or int(time.time()))
        self.events.append(signed)

    async def post(self, session: RawSession, body: bytes | None = None) -> PostResult:
        signed = self.next(body)
        answer = await session.request(Post(event=signed))
        assert isinstance(answer, PostResult), answer
        assert answer.status == "stored", answer
        self.accept(signed)
        return answer


async def read_events(session: RawSession, n: int, timeout: float = 5.0) -> list[Signed]:
    """The next ``n`` event frames (other pushes are skipped and returned nowhere)."""
    got: list[Signed] = []
    while len(got) < n:
        frame = await session.recv(timeout)
        if isinstance(frame, EventFrame):
            got.append(frame.event)
    return got


async def next_frame(session: RawSession, kind: type[RelayFrame], timeout: float = 5.0) -> RelayFrame:  # type: ignore[valid-type]
    while True:
        frame = await session.recv(timeout)
        if isinstance(frame, kind):
            return frame


def now() -> int:
    return int(time.time())


def relay_key(relay: RunningRelay) -> bytes:
    import httpx

    from relay.protocol.encoding import b64d

    return b64d(httpx.get(f"{relay.base_url}/", verify=relay.client_tls or True).json()["identity_key"])


def metric(relay: RunningRelay, name: str) -> float:
    import httpx

    total = 0.0
    for line in httpx.get(f"{relay.admin_url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def invitation(
    relay: RunningRelay, owner: OwnerState, address_id: str, sender: Member, to: Member, *, session: bytes
) -> Signed:
    """A direct invitation from ``sender`` to ``to``, sent on the connection ``session``."""
    return make_direct_invitation(
        sender.key,
        relay_fingerprint=fingerprint_of(relay),
        channel=owner.channel,
        address_id=address_id,
        to=to.public,
        to_seal_key=to.seal_public,
        contact="https://chat.example/me",
        note="hello",
        session=session,
        now=now(),
    )


class RawFeed:
    """A member connection on a plain socket with a small receive buffer, read only on demand:
    a member that stops reading, as the relay sees it."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.challenge = b""  # the relay's, from the welcome card
        self.pending: list[bytes] = []
        self.partial = b""

    async def send(self, frame: object) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=encode(frame))))

    async def recv(self, timeout: float = 10.0) -> RelayFrame:
        with trio.fail_after(timeout):
            while not self.pending:
                data = await self.stream.receive_some(65536)
                assert data, "the relay closed the connection"
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, BytesMessage):
                        self.partial += bytes(event.data)
                        if event.message_finished:
                            self.pending.append(self.partial)
                            self.partial = b""
        return decode(self.pending.pop(0), RelayFrame, limit=10**6)  # type: ignore[arg-type,return-value]

    async def read_all(self, n: int) -> list[Signed]:
        return await read_events(self, n, timeout=20.0)  # type: ignore[arg-type]


@asynccontextmanager
async def raw_feed(
    relay: RunningRelay, address_id: str, owner: OwnerState, member: Member, receive_buffer: int = 4096
) -> AsyncIterator[RawFeed]:
    host, port = relay.listen.rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: small window
    await sock.connect((host, int(port)))
    stream: trio.abc.Stream = trio.SocketStream(sock)
    if relay.client_tls is not None:  # the relay speaks TLS: the same member, over it
        stream = trio.SSLStream(stream, relay.client_tls, server_hostname=host, https_compatible=True)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=relay.listen, target=f"/g/{address_id}")))
    feed = RawFeed(stream, ws)
    with trio.fail_after(5):
        while True:
            ws.receive_data(await stream.receive_some(65536))
            if any(isinstance(e, AcceptConnection) for e in ws.events()):
                break
    nonce = secrets.token_bytes(32)
    await feed.send(Hello(version=PROTOCOL_VERSION, nonce=nonce))
    welcome = await feed.recv()
    assert isinstance(welcome, Welcome)
    feed.challenge = verify_welcome(welcome, fingerprint=fingerprint_of(relay), nonce=nonce).challenge
    await feed.send(subscribe_frame(relay, owner, address_id, member, session=feed.challenge))
    assert isinstance(await feed.recv(), Subscribed)
    try:
        yield feed
    finally:
        await stream.aclose()
