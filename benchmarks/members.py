"""Members' side of the join benchmarks: groups, pre-signed join requests, persistent connections.

Everything that costs the client CPU but is not on the wire is done before a timed section:
fresh member keys (Ed25519), each ``JoinRequest`` signed with its key and the ``join`` frame
encoded to bytes.  A :class:`MemberLink` is one WebSocket connection to a group address, opened
with the project's own client library (trio-websocket), greeted once (``hello``, the relay's
signed ``welcome`` checked against the fingerprint in the address), and then used for one
``join`` frame after another: send the pre-encoded bytes, wait for the ``join_result``.  The
relay answers one frame at a time per connection, so N links keep at most N requests in flight.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from trio_websocket import WebSocketConnection, open_websocket_url

from relay.client import add_relay, create_channel, publish
from relay.client.owner import OwnerState
from relay.protocol import crypto
from relay.protocol.addresses import RelayAddress, parse_address
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

ANSWER_TIMEOUT = 60.0
MAX_ANSWER = 1024 * 1024


@dataclass
class Group:
    """A benchmark channel on one relay: the owner's state and its group address."""

    owner: OwnerState
    path: Path
    address: RelayAddress

    @property
    def text(self) -> str:
        return str(self.address)


async def new_group(contact: str, folder: Path, name: str, *, activate: bool) -> Group:
    """A channel invited to the relay (``accepted``) and, with ``activate``, published (``active``)."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = create_channel(f"Bench {name}", description="Join benchmark channel")
    path = folder / f"owner-{name}.json"
    owner.save(path)
    result = await add_relay(owner, path, contact, timeout=ANSWER_TIMEOUT)
    if result.status != "accepted":
        raise RuntimeError(f"group {name}: invitation {result.status}: {result.code}: {result.reason}")
    [address] = owner.link().relays
    group = Group(owner, path, parse_address(address))
    if activate:
        await activate_group(group)
    return group


async def activate_group(group: Group) -> None:
    result = await publish(group.owner, group.path, timeout=ANSWER_TIMEOUT)
    states = [r.get("state") for r in result.relays]
    if states != ["active"]:
        raise RuntimeError(f"publishing did not activate the group: {result.relays}")


@dataclass(frozen=True, slots=True)
class PreparedJoin:
    member_key: bytes  # the public key: how the relay's database names the member
    frame: bytes  # the encoded ``join`` frame, ready to send
    request: bytes  # the encoded signed request, as the relay stores it
    key: ed25519.Ed25519PrivateKey | None = None  # kept only when asked (to sign status questions)


def make_join(group: Group, name: str, now: int, *, keep_key: bool = False) -> PreparedJoin:
    """One join request from a fresh member key, signed and encoded."""
    address = group.address
    assert address.address_id is not None
    key = ed25519.Ed25519PrivateKey.generate()
    signed = make_join_request(
        key,
        relay_fingerprint=address.fingerprint,
        channel=group.owner.channel,
        address_id=address.address_id,
        profile=MemberProfile(name=name, about="benchmark member"),
        now=now,
    )
    return PreparedJoin(
        crypto.public_bytes(key), encode(Join(request=signed)), encode(signed), key if keep_key else None
    )


def prepare_joins(group: Group, count: int, prefix: str = "m") -> list[PreparedJoin]:
    """``count`` join requests from fresh member keys, signed and encoded (client CPU, untimed)."""
    now = int(time.time())
    return [make_join(group, f"{prefix}{i}", now) for i in range(count)]


class MemberLink:
    """One greeted WebSocket session on a group address, for one request after another."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def ask(self, frame: bytes, timeout: float = ANSWER_TIMEOUT) -> RelayFrame:
        with trio.fail_after(timeout):
            await self.ws.send_message(frame)
            data = await self.ws.get_message()
        if isinstance(data, str):
            raise RuntimeError("the relay sent a text frame")
        return decode(data, RelayFrame, limit=MAX_ANSWER, what="relay frame")  # type: ignore[arg-type]

    async def join(self, frame: bytes, timeout: float = ANSWER_TIMEOUT) -> JoinResult:
        answer = await self.ask(frame, timeout)
        if isinstance(answer, Error):
            raise RuntimeError(f"error {answer.code}: {answer.reason}")
        if not isinstance(answer, JoinResult):
            raise RuntimeError(f"expected join_result, got {type(answer).__name__}")
        return answer


@asynccontextmanager
async def member_link(address: RelayAddress, timeout: float = ANSWER_TIMEOUT) -> AsyncIterator[MemberLink]:
    async with open_websocket_url(
        address.websocket_url, max_message_size=MAX_ANSWER, connect_timeout=timeout, disconnect_timeout=2
    ) as ws:
        link = MemberLink(ws)
        nonce = secrets.token_bytes(32)
        answer = await link.ask(encode(Hello(version=PROTOCOL_VERSION, nonce=nonce)), timeout)
        if not isinstance(answer, Welcome):
            raise RuntimeError(f"expected welcome, got {answer!r}")
        verify_welcome(answer, fingerprint=address.fingerprint, nonce=nonce)
        yield link


@dataclass
class JoinLoad:
    """What a closed-loop join load saw: answers by status, failures, latencies (seconds)."""

    answers: dict[bytes, str]  # member key -> status answered
    errors: int = 0
    error_samples: list[str] | None = None
    elapsed: float = 0.0
    latencies: list[float] | None = None


async def flood(
    address: RelayAddress, joins: Sequence[PreparedJoin], connections: int, *, record: bool = False
) -> JoinLoad:
    """``connections`` tasks, each on its own greeted session, sending the joins back to back.

    The sessions are opened and greeted before the clock starts; ``elapsed`` is from the first
    frame sent to the last answer received.
    """
    load = JoinLoad(answers={}, error_samples=[], latencies=[] if record else None)
    assert load.error_samples is not None
    items = iter(joins)
    ready = trio.Event()
    opened = 0
    started = 0.0

    async def member() -> None:
        nonlocal opened
        async with member_link(address) as link:
            opened += 1
            if opened == connections:
                ready.set()
            await ready.wait()
            for item in items:  # shared iterator: each request is sent by exactly one task
                t0 = time.perf_counter()
                try:
                    result = await link.join(item.frame)
                except Exception as exc:
                    load.errors += 1
                    if len(load.error_samples or []) < 5:
                        load.error_samples.append(f"{type(exc).__name__}: {exc}")  # type: ignore[union-attr]
                    if isinstance(exc, trio.TooSlowError):
                        return
                    continue
                load.answers[item.member_key] = result.status
                if load.latencies is not None:
                    load.latencies.append(time.perf_counter() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(member)
        await ready.wait()
        started = time.perf_counter()
    load.elapsed = time.perf_counter() - started
    return load


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
