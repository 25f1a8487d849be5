"""A deliberately malicious relay for tests, built from the real one.

:class:`LyingProxy` is a WebSocket proxy in front of a real relay subprocess.  The
relay is started with ``server.public_url`` pointing at the proxy, so the contact
address, the group addresses it grants and the profiles that list them all name
the proxy: owners and members reach the relay only through it.  The proxy
forwards the real ``hello``/``welcome`` (the identity proof is the relay's own,
made with its key over the client's nonce) and every frame the clients send;
what the relay sends back on a *member's* feed (a connection whose client sent
``profile_request`` or ``subscribe``) goes through ``lie``, a function the test
sets, which may drop, alter, reorder or add frames.  The owners' connections and
anonymous questions on the contact address (``discover``) pass untouched, as a
relay that lies only to one member would do.

The proxy also keeps every profile an owner published through it, so it can
serve an old one later, every member message and published cert or moderation that
passed through it (what the relay saw, so it can serve a removed message again), and
can read the relay's identity key from its data folder, to sign heads like the
relay's operator could.  :func:`placed` remakes a timeline place around another entry,
with the id that entry really has (a lie about the id itself is the cheapest to catch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from relayproc import RelayFactory, RunningRelay
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from relay.client import add_relay, publish
from relay.client.owner import OwnerState
from relay.protocol.encoding import decode, encode
from relay.protocol.messages import (
    ClientFrame,
    MemberPost,
    ProfileRequest,
    ProfileUpdate,
    Publish,
    RelayFrame,
    Signed,
    Subscribe,
    TimelineFrame,
    TimelineItem,
)
from relay.protocol.timeline import signed_id

LIMIT = 4 * 1024 * 1024


@dataclass
class Feed:
    """One member connection through the proxy; ``state`` is free for the lie to keep notes in."""

    path: str
    state: dict[str, object] = field(default_factory=dict)


Lie = Callable[[Feed, RelayFrame], list[RelayFrame]]


def honest(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
    return [frame]


@dataclass
class LyingProxy:
    port: int = 0
    upstream: str = ""  # HOST:PORT of the real relay, set once it runs
    lie: Lie = honest
    published: list[Signed] = field(default_factory=list)  # profiles owners sent through us
    member_posts: list[Signed] = field(default_factory=list)  # member messages sent through us
    entries: list[Signed] = field(default_factory=list)  # certs and moderations published through us
    feeds: list[Feed] = field(default_factory=list)

    async def serve(self, nursery: trio.Nursery) -> None:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                self._handle,
                "127.0.0.1",
                0,
                None,
                max_message_size=LIMIT,
                handler_nursery=nursery,
                task_status=task_status,
            )
        )
        self.port = server.port

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def front(self, relay: RunningRelay) -> None:
        self.upstream = relay.listen

    def identity_key(self, relay: RunningRelay) -> ed25519.Ed25519PrivateKey:
        """The relay's own identity key, read from its data folder: what its operator holds."""
        from relay.server.identity import load_or_create

        identity, _ = load_or_create(Path(relay.data))
        return identity.signing_key

    async def _handle(self, request: WebSocketRequest) -> None:
        client = await request.accept()
        path = request.path
        try:
            async with open_websocket_url(
                f"ws://{self.upstream}{path}", max_message_size=LIMIT, connect_timeout=5, disconnect_timeout=1
            ) as upstream:
                feed = Feed(path)
                lying = [False]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._up, client, upstream, feed, lying, nursery.cancel_scope)
                    nursery.start_soon(self._down, upstream, client, feed, lying, nursery.cancel_scope)
        except (ConnectionClosed, OSError, trio.BrokenResourceError):
            pass
        finally:
            await client.aclose()

    async def _up(
        self,
        client: WebSocketConnection,
        upstream: WebSocketConnection,
        feed: Feed,
        lying: list[bool],
        scope: trio.CancelScope,
    ) -> None:
        try:
            while True:
                data = await client.get_message()
                if isinstance(data, bytes):
                    frame = _client_frame(data)
                    if isinstance(frame, ProfileUpdate):
                        self.published.append(frame.profile)
                    if isinstance(frame, MemberPost):
                        self.member_posts.append(frame.message)
                    if isinstance(frame, Publish):
                        self.entries.append(frame.entry)
                    if isinstance(frame, ProfileRequest | Subscribe) and not lying[0]:
                        lying[0] = True
                        self.feeds.append(feed)
                await upstream.send_message(data)
        except ConnectionClosed:
            scope.cancel()

    async def _down(
        self,
        upstream: WebSocketConnection,
        client: WebSocketConnection,
        feed: Feed,
        lying: list[bool],
        scope: trio.CancelScope,
    ) -> None:
        try:
            while True:
                data = await upstream.get_message()
                if not lying[0] or not isinstance(data, bytes):
                    await client.send_message(data)
                    continue
                frame = decode(data, RelayFrame, limit=LIMIT, what="relay frame")  # type: ignore[arg-type]
                for out in self.lie(feed, frame):  # type: ignore[arg-type]
                    await client.send_message(data if out is frame else encode(out))
        except ConnectionClosed:
            scope.cancel()


def _client_frame(data: bytes) -> object:
    try:
        return decode(data, ClientFrame, limit=LIMIT, what="client frame")  # type: ignore[arg-type]
    except Exception:
        return None  # the relay judges what it cannot read; the proxy just passes it on


def placed(item: TimelineItem, entry: Signed | None, *, pos: int | None = None) -> TimelineFrame:
    """The place ``item`` (or ``pos``) holding ``entry`` instead, under ``entry``'s own id."""
    ident = item.id if entry is None else signed_id(item.kind, entry)
    return TimelineFrame(
        item=TimelineItem(
            pos=item.pos if pos is None else pos, after=item.after, kind=item.kind, id=ident, entry=entry
        )
    )


@dataclass
class TwoRelays:
    """An owner's channel (or group) on relay A, honest, and relay B, behind ``proxy``."""

    a: RunningRelay
    b: RunningRelay
    proxy: LyingProxy
    owner: OwnerState
    owner_path: Path

    @property
    def ga(self) -> str:
        return str(self.owner.relays[0].group_address)

    @property
    def gb(self) -> str:
        return str(self.owner.relays[1].group_address)


@asynccontextmanager
async def two_relays(
    relay_factory: RelayFactory, owner: OwnerState, owner_path: Path
) -> AsyncIterator[TwoRelays]:
    """Two real relays, B behind a lying proxy (honest until a test sets its ``lie``), both
    added to ``owner``'s channel and the profile published: active on both."""
    async with trio.open_nursery() as nursery:
        proxy = LyingProxy()
        await proxy.serve(nursery)
        a = relay_factory()
        b = relay_factory(server={"public_url": proxy.public_url})
        proxy.front(b)
        assert b.address.startswith(proxy.public_url)
        await add_relay(owner, owner_path, a.address)
        await add_relay(owner, owner_path, b.address)
        await publish(owner, owner_path)
        yield TwoRelays(a, b, proxy, owner, owner_path)
        nursery.cancel_scope.cancel()
