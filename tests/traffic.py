"""Helpers for channel-traffic tests against the real daemon: an active channel, members who
join with raw frames (with a seal key), owners who post signed events, and feeds read frame by
frame.  Built on the raw client of ``wire.py``: nothing here refuses to send a wrong frame."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from relayproc import RunningRelay
from test_flow import new_owner
from wire import RawSession, connect, fingerprint_of

from relay.client import add_relay, publish
from relay.client.owner import OwnerState
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.events import ChainHead, event_id, make_event
from relay.protocol.membership import ACTION_SUBSCRIBE, make_join_request, make_member_request
from relay.protocol.messages import (
    EventFrame,
    Join,
    JoinResult,
    MemberProfile,
    Post,
    PostResult,
    RelayFrame,
    Signed,
    Subscribe,
    Subscribed,
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
async def group_session(relay: RunningRelay, address_id: str) -> AsyncIterator[RawSession]:
    async with connect(relay, f"/g/{address_id}") as session:
        await session.hello()
        yield session


async def join_member(relay: RunningRelay, owner: OwnerState, address_id: str, name: str = "Ada") -> Member:
    member = Member()
    request = make_join_request(
        member.key,
        relay_fingerprint=fingerprint_of(relay),
        channel=owner.channel,
        address_id=address_id,
        profile=MemberProfile(name=name, seal_key=member.seal_public),
        now=int(time.time()),
    )
    async with group_session(relay, address_id) as session:
        answer = await session.request(Join(request=request))
    assert isinstance(answer, JoinResult), answer
    assert answer.status == "admitted", answer
    return member


def subscribe_frame(
    relay: RunningRelay, owner: OwnerState, address_id: str, member: Member, since: int | None = None
) -> Subscribe:
    request = make_member_request(
        member.key,
        relay_fingerprint=fingerprint_of(relay),
        channel=owner.channel,
        address_id=address_id,
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
    answer = await session.request(subscribe_frame(relay, owner, address_id, member, since))
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
            after=self.head,
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
