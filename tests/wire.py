"""A small raw client for bad-input tests: send any bytes to a relay, read its typed answers.

Unlike the client library, nothing here refuses to send something wrong: frames can be
arbitrary bytes, text, or protocol structs, and channels and invitations can be built
with any owner, signer, date, relay binding or session (the challenge of the connection a
signed request is meant for: :attr:`RawSession.challenge` after ``hello``).  Answers are
decoded strictly with the protocol's own types, so a test sees exactly the ``error`` frame
the relay sent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from relayproc import RunningRelay
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url, wrap_client_stream

from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import decode, encode
from relay.protocol.handshake import verify_welcome
from relay.protocol.invitation import SEAL_PURPOSE, make_invitation
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    Invite,
    OwnerCert,
    Profile,
    RelayCard,
    RelayFrame,
    Signed,
    Welcome,
)

ANSWER_LIMIT = 10**6
# For a test that opens many connections from 127.0.0.1 (one source): the per-source budgets
# out of the way, so that the test measures what it means to.
ONE_SOURCE_UNBOUNDED: dict[str, object] = {
    "max_connections_per_ip": 1_000_000,
    "connections_per_ip_per_second": 1_000_000.0,
    "connection_burst_per_ip": 1_000_000,
    "requests_per_ip_per_second": 1_000_000.0,
    "request_burst_per_ip": 1_000_000,
}
HYBRID = crypto.SUITE_HYBRID.name
X25519 = crypto.SUITE_X25519.name


def fingerprint_of(relay: RunningRelay) -> bytes:
    return parse_address(relay.address).fingerprint


class RawSession:
    """One WebSocket connection to a relay address, driven frame by frame."""

    def __init__(self, ws: WebSocketConnection, fingerprint: bytes) -> None:
        self.ws = ws
        self.fingerprint = fingerprint
        self.card: RelayCard | None = None

    @property
    def challenge(self) -> bytes:
        """The relay's challenge for this connection (after ``hello``): the ``session`` of
        every request signed to be sent on it."""
        assert self.card is not None, "no hello yet"
        return self.card.challenge

    async def send(self, frame: object) -> None:
        """Bytes go out as one binary frame as they are, text as a text frame, else encoded."""
        if isinstance(frame, bytes | str):
            await self.ws.send_message(frame)
        else:
            await self.ws.send_message(encode(frame))

    async def recv(self, timeout: float = 5.0) -> RelayFrame:
        with trio.fail_after(timeout):
            data = await self.ws.get_message()
        assert isinstance(data, bytes), f"the relay sent a text frame: {data!r}"
        return decode(data, RelayFrame, limit=ANSWER_LIMIT, what="relay frame")  # type: ignore[arg-type,return-value]

    async def request(self, frame: object, timeout: float = 5.0) -> RelayFrame:
        await self.send(frame)
        return await self.recv(timeout)

    async def hello(self) -> RelayCard:
        """The hello/welcome exchange, with the relay's card verified against the pinned key."""
        nonce = secrets.token_bytes(32)
        answer = await self.request(Hello(version=PROTOCOL_VERSION, nonce=nonce))
        assert isinstance(answer, Welcome), answer
        self.card = verify_welcome(answer, fingerprint=self.fingerprint, nonce=nonce)
        return self.card

    async def expect_error(self, frame: object, code: str, timeout: float = 5.0) -> Error:
        """Send ``frame``; the answer must be an ``error`` frame with ``code`` and a readable reason."""
        answer = await self.request(frame, timeout)
        return check_error(answer, code)

    async def expect_closed(self, timeout: float = 5.0) -> int | None:
        """The relay closes the connection (no further frame); returns the close code."""
        with trio.fail_after(timeout):
            try:
                extra = await self.ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code if exc.reason else None
        raise AssertionError(f"expected the relay to close, got another frame: {extra!r}")


def check_error(answer: object, code: str, what: str = "") -> Error:
    assert isinstance(answer, Error), f"{what}: expected an error frame {code}, got {answer!r}"
    assert answer.code == code, f"{what}: expected {code}, got {answer.code}: {answer.reason}"
    assert_readable(answer.reason)
    return answer


def assert_readable(reason: str | None) -> None:
    assert reason and reason.strip(), "the reason is empty"
    assert reason.isprintable(), f"the reason is not readable text: {reason!r}"


@asynccontextmanager
async def connect(
    relay: RunningRelay, path: str = "/r", local_address: str | None = None, timeout: float = 5.0
) -> AsyncIterator[RawSession]:
    """A WebSocket to ``path``; from ``local_address`` (127.0.0.2, ...: another source, as
    another host would be) if given.  trio-websocket answers pings by itself."""
    scheme = "wss" if relay.client_tls else "ws"
    if local_address is None:
        async with open_websocket_url(
            f"{scheme}://{relay.listen}{path}",
            ssl_context=relay.client_tls,
            max_message_size=ANSWER_LIMIT,
            connect_timeout=timeout,
            disconnect_timeout=2,
        ) as ws:
            yield RawSession(ws, fingerprint_of(relay))
        return
    # trio-websocket cannot pick the local address: connect first, then wrap the stream.
    host, port = relay.listen.rsplit(":", 1)
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(host, int(port), local_address=local_address)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    if relay.client_tls is not None:
        stream = trio.SSLStream(tcp, relay.client_tls, server_hostname=host, https_compatible=True)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(timeout):
                ws = await wrap_client_stream(
                    nursery, stream, relay.listen, path, message_queue_size=64, max_message_size=ANSWER_LIMIT
                )
            try:
                yield RawSession(ws, fingerprint_of(relay))
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


def connect_from(
    relay: RunningRelay, path: str = "/r", local: str = "127.0.0.2", timeout: float = 5.0
) -> AbstractAsyncContextManager[RawSession]:
    """:func:`connect` from another loopback address (127.0.0.2 by default)."""
    return connect(relay, path, local, timeout)


@dataclass
class WellBehaved:
    """A client from another host that keeps asking a simple question while an attack runs:
    each round opens a connection from ``local``, sends ``hello`` and checks the relay's signed
    welcome against its pinned key.  Every failure is kept (``failures``), with the latency of
    each round (``latencies``)."""

    relay: RunningRelay
    local: str = "127.0.0.2"
    pause: float = 0.05
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def round(self) -> None:
        started = time.monotonic()
        try:
            async with connect_from(self.relay, "/r", self.local) as session:
                await session.hello()
            self.latencies.append(time.monotonic() - started)
        except Exception as exc:  # every kind of failure is what the test looks for
            self.failures.append(f"{type(exc).__name__}: {exc}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rounds until cancelled; ``started`` after the first one succeeded (or failed)."""
        await self.round()
        task_status.started()
        while True:
            await trio.sleep(self.pause)
            await self.round()

    def check(self, at_least: int = 3) -> None:
        assert not self.failures, f"the well-behaved client failed: {self.failures[:5]}"
        assert len(self.latencies) >= at_least, f"only {len(self.latencies)} rounds ran"


@asynccontextmanager
async def well_behaved(
    relay: RunningRelay, local: str = "127.0.0.2", pause: float = 0.05
) -> AsyncIterator[WellBehaved]:
    """Run a :class:`WellBehaved` client beside the block; check it with ``.check()`` after.
    Its rounds open a connection each: ``pause`` keeps them within the relay's connection rate."""
    client = WellBehaved(relay, local, pause)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


# --- channels and invitations built by hand --------------------------------------------


def owner_cert(signer: ed25519.Ed25519PrivateKey, channel: bytes, owner: ed25519.Ed25519PrivateKey) -> Signed:
    body = encode(
        OwnerCert(channel=channel, owner_key=crypto.public_bytes(owner), issued_at=int(time.time()))
    )
    return crypto.signed(signer, crypto.Label.OWNER_CERT, body)


@dataclass
class Channel:
    """A channel's keys and profile fields, free to be bent in any direction."""

    name: str = "Raw channel"
    kind: str = "channel"
    description: str = ""
    owner_count: int = 1
    root: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    owners: list[ed25519.Ed25519PrivateKey] = field(default_factory=list)
    service_group: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def __post_init__(self) -> None:
        if not self.owners:
            self.owners = [ed25519.Ed25519PrivateKey.generate() for _ in range(self.owner_count)]

    @property
    def channel(self) -> bytes:
        return crypto.channel_id(crypto.public_bytes(self.root))

    @property
    def owner(self) -> ed25519.Ed25519PrivateKey:
        return self.owners[0]

    def profile(
        self,
        *,
        version: int = 1,
        relays: list[str] | None = None,
        signer: ed25519.Ed25519PrivateKey | None = None,
        certs: list[Signed] | None = None,
        **fields: object,
    ) -> Signed:
        values: dict[str, object] = {
            "channel": self.channel,
            "root_key": crypto.public_bytes(self.root),
            "version": version,
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "owners": certs
            if certs is not None
            else [owner_cert(self.root, self.channel, o) for o in self.owners],
            "relays": relays or [],
            "updated_at": int(time.time()),
        }
        values.update(fields)
        return crypto.signed(signer or self.owner, crypto.Label.PROFILE, encode(Profile(**values)))  # type: ignore[arg-type]

    def invitation(
        self,
        relay_fingerprint: bytes,
        *,
        session: bytes,
        now: int | None = None,
        signer: ed25519.Ed25519PrivateKey | None = None,
        profile: Signed | None = None,
    ) -> bytes:
        """The plaintext to seal: an invitation signed by ``signer`` (the first owner by default)
        for the connection whose challenge is ``session``."""
        return make_invitation(
            owner_key=signer or self.owner,
            relay_fingerprint=relay_fingerprint,
            service_group=self.service_group,
            profile=profile or self.profile(),
            channel=self.channel,
            session=session,
            now=int(time.time()) if now is None else now,
        )


def seal_to(card: RelayCard, fingerprint: bytes, plaintext: bytes, suite: str = HYBRID) -> Invite:
    """Seal ``plaintext`` to the relay whose card is ``card`` (``fingerprint`` goes in HPKE info)."""
    sealed = crypto.seal(suite, card.seal_keys[suite], plaintext, crypto.seal_info(SEAL_PURPOSE, fingerprint))
    return Invite(suite=suite, sealed=sealed)
