"""Members' side of the join benchmarks: groups, join requests, persistent connections.

Everything that costs the client CPU but is not on the wire is done before a timed section.
A join request names the connection it is sent on (the relay's challenge in ``welcome``, the
request's ``session``), so it can only be signed once its connection is open: fresh member keys
(Ed25519) are made first (:func:`new_members`); then every connection is opened with the
project's own client library (trio-websocket) and greeted (``hello``, the relay's signed
``welcome`` checked against the fingerprint in the address), and each connection's share of the
requests is signed for it and encoded to ``join`` frames (:func:`greeted_joins`); only then does
the clock start, and each connection sends its frames one after another, waiting for each
``join_result`` (:func:`run_joins`).  The relay answers one frame at a time per connection, so
N connections keep at most N requests in flight.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
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


async def new_group(contact: str, folder: Path, name: str, *, activate: bool, kind: str = "channel") -> Group:
    """A channel (or a group: ``kind``) invited to the relay (``accepted``) and, with
    ``activate``, published (``active``)."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = create_channel(f"Bench {name}", description="Join benchmark channel", kind=kind)
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
class NewMember:
    """A member to be: a fresh key (made before anything is timed) and a name."""

    key: ed25519.Ed25519PrivateKey
    name: str

    @property
    def public(self) -> bytes:
        return crypto.public_bytes(self.key)


def new_members(count: int, prefix: str = "m") -> list[NewMember]:
    """``count`` fresh member keys (client CPU, untimed)."""
    return [NewMember(ed25519.Ed25519PrivateKey.generate(), f"{prefix}{i}") for i in range(count)]


@dataclass(frozen=True, slots=True)
class PreparedJoin:
    member_key: bytes  # the public key: how the relay's database names the member
    frame: bytes  # the encoded ``join`` frame, ready to send on the connection it was signed for
    request: bytes  # the encoded signed request, as the relay stores it


def sign_join(group: Group, member: NewMember, session: bytes, now: int) -> PreparedJoin:
    """``member``'s join request for the connection whose challenge is ``session``, encoded."""
    address = group.address
    assert address.address_id is not None
    signed = make_join_request(
        member.key,
        relay_fingerprint=address.fingerprint,
        channel=group.owner.channel,
        address_id=address.address_id,
        profile=MemberProfile(name=member.name, about="benchmark member"),
        session=session,
        now=now,
    )
    return PreparedJoin(member.public, encode(Join(request=signed)), encode(signed))


# Rows written straight into a database (the SQLite baselines, held requests put in a stopped
# relay's database) are never verified again, so any session will do: they are signed for none.
NO_SESSION = bytes(32)


def prepare_joins(group: Group, count: int, prefix: str = "m") -> list[PreparedJoin]:
    """``count`` join requests from fresh member keys, signed and encoded (client CPU, untimed),
    as rows to store directly: signed for no connection, the relay would refuse them on one."""
    now = int(time.time())
    return [sign_join(group, member, NO_SESSION, now) for member in new_members(count, prefix)]


class MemberLink:
    """One greeted WebSocket session on a group address, for one request after another."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.challenge = b""  # the relay's, from the welcome card: what requests here are signed for

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
        link.challenge = verify_welcome(answer, fingerprint=address.fingerprint, nonce=nonce).challenge
        yield link


@dataclass(frozen=True, slots=True)
class Share:
    """One greeted connection and the join frames signed for it."""

    link: MemberLink
    joins: list[PreparedJoin]


@asynccontextmanager
async def greeted_joins(
    group: Group, members: Sequence[NewMember], connections: int
) -> AsyncIterator[list[Share]]:
    """``connections`` greeted sessions, each with its share of ``members``' join requests
    (every ``connections``-th one) signed for it: everything a timed run needs, done untimed."""
    now = int(time.time())
    async with AsyncExitStack() as stack:
        shares = []
        for index in range(min(connections, len(members)) or 1):
            link = await stack.enter_async_context(member_link(group.address))
            share = members[index::connections]
            shares.append(Share(link, [sign_join(group, m, link.challenge, now) for m in share]))
        yield shares


@dataclass
class JoinLoad:
    """What a closed-loop join load saw: answers by status, failures, latencies (seconds)."""

    answers: dict[bytes, str]  # member key -> status answered
    errors: int = 0
    error_samples: list[str] | None = None
    elapsed: float = 0.0
    latencies: list[float] | None = None


async def run_joins(shares: Sequence[Share], *, record: bool = False) -> JoinLoad:
    """Every connection sends its share back to back, the next as soon as an answer is in;
    ``elapsed`` is from the first frame sent to the last answer received."""
    load = JoinLoad(answers={}, error_samples=[], latencies=[] if record else None)
    assert load.error_samples is not None

    async def member(share: Share) -> None:
        for item in share.joins:
            t0 = time.perf_counter()
            try:
                result = await share.link.join(item.frame)
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

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for share in shares:
            nursery.start_soon(member, share)
    load.elapsed = time.perf_counter() - started
    return load


async def flood(
    group: Group, members: Sequence[NewMember], connections: int, *, record: bool = False
) -> JoinLoad:
    """``members`` join over ``connections`` greeted sessions, each sending its share back to back.

    The sessions are opened and greeted, and each one's requests signed for it, before the
    clock starts (:func:`greeted_joins`).
    """
    async with greeted_joins(group, members, connections) as shares:
        return await run_joins(shares, record=record)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
