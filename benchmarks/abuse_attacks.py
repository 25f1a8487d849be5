"""The abuse benchmark's attackers: ``python -m benchmarks.abuse_attacks SPEC`` (a JSON file).

One process per attack, from one host (``127.0.0.1``), built as a real attacker would build
it: everything that can be prepared is prepared before the attack starts, every frame is sent
raw (:mod:`benchmarks.rawws`, no signature check of the relay's welcome), and the attack keeps
to what one host gets from the relay's default budgets per source when exceeding them would
only get its connections closed at the accept (an attacker who floods past a budget gets
nothing more through; the flood past it is a separate, cheap case, measured where the budget
is the point).  The pacing constants below say what each attack sends.

Control: after its preparation the process prints ``{"event": "ready"}`` and waits for ``go``
on stdin; it attacks until ``stop``, closes every connection, and prints one JSON line: what
it cost (bytes written, connections opened, open at most, its CPU seconds) and every answer
it got, by kind (``post_result:stored``, ``error:equivocation``, ``http:421``, ``closed``...).
``breaches`` counts answers that would mean the attack worked (an operator action a web page
asked for, a replayed request accepted, a fork seen by one of its own members...).

Must not: exceed the budgets it is said to keep, or hide an answer.
"""

from __future__ import annotations

import json
import resource
import secrets
import struct
import sys
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from benchmarks import wsframe
from benchmarks.rawws import Closed, Counter, RawWs, tcp
from relay.client.owner import OwnerState, create_channel
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import b64d, decode, encode
from relay.protocol.events import ChainHead, event_id, make_event, stored_event
from relay.protocol.invitation import SEAL_PURPOSE, make_invitation, make_owner_request
from relay.protocol.membership import ACTION_SUBSCRIBE, make_join_request, make_member_request
from relay.protocol.messages import (
    Error,
    EventFrame,
    HeadAnswer,
    HeadRequest,
    Invite,
    Join,
    JoinResult,
    MemberProfile,
    OwnerCert,
    OwnerCommand,
    Post,
    Profile,
    ProfileUpdate,
    RelayFrame,
    Signed,
    Subscribe,
)

# What one host gets from the relay's defaults (config/relay.toml), kept to by the attacks
# whose aim is what passes the budgets: new connections (server.connections_per_ip_per_second
# 20, connection_burst_per_ip 100) and requests over all connections
# (server.requests_per_ip_per_second 200, request_burst_per_ip 400), a little under both.
CONNECTIONS_PER_SECOND = 19.0
CONNECTION_BURST = 90
REQUESTS_PER_SECOND = 190.0
ERRORS_BEFORE_RECONNECT = 15  # the relay closes a connection at its 16th refused request
MAX_OWNERS = 16  # policy.max_owners, the default
WIRE_OWNERS = 256  # the most owner certs a profile may carry on the wire


class Spec(msgspec.Struct, frozen=True):
    attack: str
    host: str
    port: int
    fingerprint: str  # b64url: the relay's
    local: str = "127.0.0.1"
    quick: bool = False
    owner_state: str = ""  # the attacker's own channel (liar, owners, starve)
    group_address: str = ""  # its group address
    admin: str = ""  # HOST:PORT of the operator port (webpage)
    victim_group: int = 0  # the well-behaved channel's group id (webpage)
    captured: dict[str, str] = {}  # name -> encoded frame, b64url (replay)
    victim_address: str = ""  # the well-behaved channel's group address (replay)


@dataclass
class Attack:
    """What every attack shares: where to connect, what it cost, the answers it got."""

    spec: Spec
    counter: Counter = field(default_factory=Counter)
    answers: Tally[str] = field(default_factory=Tally)
    breaches: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    stop: trio.Event = field(default_factory=trio.Event)
    nursery: trio.Nursery | None = None  # where the task waiting for ``stop`` runs
    cpu0: float = 0.0
    started: float = 0.0

    async def ready(self) -> None:
        """Say ready (the preparation is done), wait for ``go``; ``stop`` is set at the next line."""
        _say({"event": "ready"})
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit(0)
        self.cpu0, self.started = _cpu(), time.monotonic()
        assert self.nursery is not None
        self.nursery.start_soon(self._stop_at_next_line)

    async def _stop_at_next_line(self) -> None:
        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        self.stop.set()

    @property
    def fingerprint(self) -> bytes:
        return b64d(self.spec.fingerprint)

    async def ws(self, path: str, *, rcvbuf: int | None = None) -> RawWs:
        return await RawWs.open(
            self.spec.host, self.spec.port, path, self.spec.local, self.counter, rcvbuf=rcvbuf
        )

    def answer(self, frame: RelayFrame) -> RelayFrame:
        """Count an answer by its kind (and code or status)."""
        if isinstance(frame, Error):
            self.answers[f"error:{frame.code}"] += 1
        else:
            status = getattr(frame, "status", None)
            kind = type(frame).__name__
            self.answers[f"{kind}:{status}" if status else kind] += 1
        return frame

    def breach(self, what: str) -> None:
        self.answers["breach"] += 1
        if len(self.breaches) < 10:
            self.breaches.append(what[:300])


class Pacer:
    """A token bucket: what one host keeps to (shared by all of an attack's tasks)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = trio.current_time()

    async def take(self) -> None:
        while True:
            now = trio.current_time()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await trio.sleep((1 - self.tokens) / self.rate)


async def _forever(attack: Attack, loop: Callable[[], Awaitable[None]]) -> None:
    """Run ``loop`` again and again until the attack stops; a closed connection is counted."""
    while not attack.stop.is_set():
        try:
            await loop()
        except (Closed, OSError):
            attack.answers["closed"] += 1
            await trio.sleep(0)


# --- helpers that build what an owner signs ------------------------------------------------


def owner_cert(signer: ed25519.Ed25519PrivateKey, channel: bytes, owner: bytes) -> Signed:
    body = encode(OwnerCert(channel=channel, owner_key=owner, issued_at=int(time.time())))
    return crypto.signed(signer, crypto.Label.OWNER_CERT, body)


def profile(
    owner_key: ed25519.Ed25519PrivateKey,
    root_public: bytes,
    certs: list[Signed],
    *,
    version: int,
    relays: list[str],
    name: str = "Bench attacker",
    description: str = "",
) -> Signed:
    body = Profile(
        channel=crypto.channel_id(root_public),
        root_key=root_public,
        version=version,
        kind="channel",
        name=name,
        description=description,
        owners=certs,
        relays=relays,
        updated_at=int(time.time()),
    )
    return crypto.signed(owner_key, crypto.Label.PROFILE, encode(body))


@dataclass
class NewChannel:
    """A channel made for one invitation: its owner key and the profile it sends."""

    owner: ed25519.Ed25519PrivateKey
    channel: bytes
    profile: Signed
    service_group: bytes = field(default_factory=lambda: secrets.token_bytes(16))


def new_channel(
    *, owners: int = 1, copies: int = 0, name: str = "Bench attacker", description: str = ""
) -> NewChannel:
    """A fresh channel; ``owners`` distinct owner certs, or ``copies`` copies of one cert."""
    state = create_channel(name, description=description)
    root = state.root_key
    certs = [state.cert()]
    for _ in range(owners - 1):
        certs.append(
            owner_cert(root, state.channel, crypto.public_bytes(ed25519.Ed25519PrivateKey.generate()))
        )
    if copies:
        certs = [state.cert()] * copies
    signed = profile(
        state.owner_key,
        state.root_public_key,
        certs,
        version=1,
        relays=[],
        name=name,
        description=description,
    )
    return NewChannel(state.owner_key, state.channel, signed)


def invite_frame(attack: Attack, ws: RawWs, channel: NewChannel) -> bytes:
    """``channel``'s invitation, signed for ``ws``'s session and sealed (hybrid: the dearest to open)."""
    assert ws.card is not None
    plaintext = make_invitation(
        owner_key=channel.owner,
        relay_fingerprint=attack.fingerprint,
        service_group=channel.service_group,
        profile=channel.profile,
        channel=channel.channel,
        session=ws.challenge,
        now=int(time.time()),
    )
    suite = crypto.SUITE_HYBRID.name
    sealed = crypto.seal(
        suite, ws.card.seal_keys[suite], plaintext, crypto.seal_info(SEAL_PURPOSE, attack.fingerprint)
    )
    return encode(Invite(suite=suite, sealed=sealed))


# --- 1. framed as a liar ----------------------------------------------------------------------

LIAR_BODY = 4096  # bytes per event: the members' feeds fill, and the lagging ones drop to catch-up
LIAR_LAGGING = 8  # the attacker's own lagging members of its channel
LIAR_READ_BYTES_PER_SECOND = 64 * 1024
LIAR_REAL_PER_EQUIVOCATION = 2


async def liar(attack: Attack) -> None:
    """The owner of a channel posts, on one connection after another (each a hello, then a
    pipelined batch), two real events for every equivocation: a second, different event at the
    sequence number just taken, fifteen per connection (the sixteenth refusal would close it),
    as many connections a second as the source's budget lets in.  Its own members of the
    channel read through small buffers at 64 KiB/s and lag; each checks the chain it gets."""
    spec = attack.spec
    owner = OwnerState.load(Path(spec.owner_state))
    address = parse_address(spec.group_address)
    path = f"/g/{address.address_id}"
    members = []
    for n in range(LIAR_LAGGING if not spec.quick else 2):
        key = ed25519.Ed25519PrivateKey.generate()
        ws = await attack.ws(path)
        await ws.hello()
        answer = attack.answer(
            await ws.request(Join(request=_join(attack, owner.channel, address.address_id, key, ws, n)))
        )
        await ws.aclose()
        if not isinstance(answer, JoinResult) or answer.status != "admitted":
            raise RuntimeError(f"the attacker's member was not admitted: {answer!r}")
        members.append(key)
    # The chain as the relay holds it: its head, and the last events' ids (for equivocations).
    ws = await attack.ws(path)
    await ws.hello()
    head_answer = await ws.request(HeadRequest())
    await ws.aclose()
    assert isinstance(head_answer, HeadAnswer)
    chain: list[ChainHead] = [ChainHead()]
    if head_answer.event is not None:
        event = stored_event(head_answer.event).event
        chain.append(ChainHead(event.seq, event_id(head_answer.event.body), event.created_at))
    await attack.ready()
    pacer = Pacer(CONNECTIONS_PER_SECOND, CONNECTION_BURST)
    sent = 0

    async def post_batch() -> None:
        nonlocal sent
        await pacer.take()
        ws = await attack.ws(path)
        try:
            await ws.hello()
            frames: list[bytes] = []
            kinds: list[ChainHead | None] = []  # the head a real event makes; None for an equivocation
            head = chain[-1]
            now = int(time.time())
            for _ in range(ERRORS_BEFORE_RECONNECT):
                for _ in range(LIAR_REAL_PER_EQUIVOCATION):
                    sent += 1
                    body = sent.to_bytes(8, "big") * (LIAR_BODY // 8)
                    signed = make_event(
                        owner.owner_key, channel=owner.channel, after=head, body=body, now=now
                    )
                    before = head
                    head = ChainHead(head.seq + 1, event_id(signed.body), max(now, head.created_at))
                    frames.append(wsframe.frame(encode(Post(event=signed)), masked=True))
                    kinds.append(head)
                # A second event at the sequence number just taken: chained on the same event.
                other = make_event(
                    owner.owner_key,
                    channel=owner.channel,
                    after=before,
                    body=b"the other " + body[:-10],
                    now=now,
                )
                frames.append(wsframe.frame(encode(Post(event=other)), masked=True))
                kinds.append(None)
            await ws.write(b"".join(frames))
            for made in kinds:
                answer = attack.answer(await ws.recv_frame())
                if made is not None:
                    if getattr(answer, "status", None) == "stored":
                        chain.append(made)
                        del chain[:-4]
                    else:
                        raise Closed("a real event was not stored: the chain is resynchronised")
        except Closed:
            await _resync(attack, path, chain)
            raise
        finally:
            await ws.aclose()

    async with trio.open_nursery() as nursery:
        for key in members:
            nursery.start_soon(_lagging_member, attack, path, owner.channel, address.address_id, key)
        await _forever(attack, post_batch)
        nursery.cancel_scope.cancel()
    attack.notes["events_signed"] = sent


def _join(
    attack: Attack, channel: bytes, address_id: str | None, key: ed25519.Ed25519PrivateKey, ws: RawWs, n: int
) -> Signed:
    assert address_id is not None
    return make_join_request(
        key,
        relay_fingerprint=attack.fingerprint,
        channel=channel,
        address_id=address_id,
        profile=MemberProfile(name=f"Attacker {n}"),
        session=ws.challenge,
        now=int(time.time()),
    )


def _subscribe(
    attack: Attack,
    channel: bytes,
    address_id: str | None,
    key: ed25519.Ed25519PrivateKey,
    ws: RawWs,
    since: int | None = None,
) -> Subscribe:
    assert address_id is not None
    request = make_member_request(
        key,
        relay_fingerprint=attack.fingerprint,
        channel=channel,
        address_id=address_id,
        session=ws.challenge,
        now=int(time.time()),
        action=ACTION_SUBSCRIBE,
    )
    return Subscribe(request=request, since=since)


async def _resync(attack: Attack, path: str, chain: list[ChainHead]) -> None:
    """The relay's head, after a batch that did not go through as planned."""
    with trio.move_on_after(10):
        ws = await attack.ws(path)
        try:
            await ws.hello()
            answer = await ws.request(HeadRequest())
            if isinstance(answer, HeadAnswer) and answer.event is not None:
                event = stored_event(answer.event).event
                chain.append(ChainHead(event.seq, event_id(answer.event.body), event.created_at))
        finally:
            await ws.aclose()


async def _lagging_member(
    attack: Attack, path: str, channel: bytes, address_id: str | None, key: ed25519.Ed25519PrivateKey
) -> None:
    """A member of the attacker's channel that reads slowly; it reports any fork it is sent."""
    last = (0, b"")
    while True:
        try:
            ws = await attack.ws(path, rcvbuf=4096)
            try:
                await ws.hello()
                attack.answer(
                    await ws.request(_subscribe(attack, channel, address_id, key, ws, last[0] or None))
                )
                while True:
                    data = await ws.recv()
                    frame: RelayFrame = decode(data, RelayFrame, limit=4 * 1024 * 1024)  # type: ignore[arg-type]
                    if isinstance(frame, EventFrame):
                        event = stored_event(frame.event).event
                        if last[0] and (event.seq != last[0] + 1 or event.prev != last[1]):
                            attack.breach(f"a lagging member got event {event.seq} after {last[0]}")
                        last = (event.seq, event_id(frame.event.body))
                        attack.answers["lagging_member:event"] += 1
                    else:
                        attack.answer(frame)
                    await trio.sleep(len(data) / LIAR_READ_BYTES_PER_SECOND)
            finally:
                await ws.aclose()
        except (Closed, OSError):
            attack.answers["lagging_member:closed"] += 1
            await trio.sleep(0.5)


# --- 2. stalling by owners --------------------------------------------------------------------

OWNERS_CONNECTIONS = 16  # per kind: invitations, profile updates, owner commands


async def owners(attack: Attack) -> None:
    """Many connections (16 each on three kinds of request), all the source's request budget:
    invitations whose profile carries 256 copies of one owner cert or the policy's maximum of
    distinct owners (16, each invitation a fresh channel); profile updates of the attacker's
    own active channel, a new version each, with 256 copies or 16 distinct certs; and owner
    commands in a loop (suspend, resume, list the pending members).  Each connection sends one
    request after the other; all together keep to the source's request budget."""
    spec = attack.spec
    owner = OwnerState.load(Path(spec.owner_state))
    address = parse_address(spec.group_address)
    certs = owner.owner_certs()
    assert len(certs) == MAX_OWNERS, len(certs)
    pool = [new_channel(owners=MAX_OWNERS) for _ in range(8 if spec.quick else 32)]
    copied = new_channel(copies=WIRE_OWNERS)
    entry = owner.relays[0]
    version = owner.profile_version
    await attack.ready()
    requests = Pacer(REQUESTS_PER_SECOND, REQUESTS_PER_SECOND)
    connections = Pacer(CONNECTIONS_PER_SECOND, CONNECTION_BURST)

    async def session(path: str, next_frame: Callable[[RawWs, int], bytes]) -> None:
        await connections.take()
        ws = await attack.ws(path)
        try:
            await requests.take()
            await ws.hello()
            errors = n = 0
            while errors < ERRORS_BEFORE_RECONNECT and not attack.stop.is_set():
                await requests.take()
                await ws.send(next_frame(ws, n))
                n += 1
                if isinstance(attack.answer(await ws.recv_frame()), Error):
                    errors += 1
        finally:
            await ws.aclose()

    def invitation(ws: RawWs, n: int) -> bytes:
        return invite_frame(attack, ws, copied if n % 2 else pool[n // 2 % len(pool)])

    def profile_update(ws: RawWs, n: int) -> bytes:
        nonlocal version
        version += 1
        signed = profile(
            owner.owner_key,
            owner.root_public_key,
            [certs[0]] * WIRE_OWNERS if n % 2 else certs,
            version=version,
            relays=[spec.group_address],
        )
        return encode(ProfileUpdate(profile=signed))

    def command(ws: RawWs, n: int) -> bytes:
        # Signed once per connection each (a command sent again on its own connection is the
        # owner's retry, answered like the first): no signature per request for the attacker.
        frames = ws.extra
        if not frames:
            frames[:] = [
                encode(
                    OwnerCommand(
                        request=make_owner_request(
                            owner.owner_key,
                            relay_fingerprint=attack.fingerprint,
                            channel=owner.channel,
                            service_group=b64d(entry.service_group),
                            action=action,
                            session=ws.challenge,
                            now=int(time.time()),
                        )
                    )
                )
                for action in ("suspend_admission", "resume_admission", "list_pending")
            ]
        return frames[n % 3]

    async with trio.open_nursery() as nursery:
        for _ in range(OWNERS_CONNECTIONS if not spec.quick else 4):
            nursery.start_soon(_forever, attack, lambda: session("/r", invitation))
            nursery.start_soon(_forever, attack, lambda: session(f"/g/{address.address_id}", profile_update))
            nursery.start_soon(_forever, attack, lambda: session("/r", command))
        await attack.stop.wait()
        nursery.cancel_scope.cancel()
    attack.notes["profile_versions_sent"] = version - owner.profile_version


# --- 3. a web page ------------------------------------------------------------------------------

WEBPAGE_CONNECTIONS = 6  # a browser's connections per host


def webpage_requests(spec: Spec) -> list[tuple[str, bytes]]:
    """What a page in the operator's browser can send to the operator port (name, request)."""
    host, _, port = spec.admin.rpartition(":")
    here = f"{host}:{port}"
    evil = f"attacker.example:{port}"
    group = spec.victim_group

    def req(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        if method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join([*lines, "Connection: close", "", ""])).encode() + body

    page = {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}
    return [
        ("form POST suspend (text/plain)", req("POST", f"/admin/groups/{group}/suspend",
            {"Host": here, **page, "Content-Type": "text/plain"}, b'{"reason": "x"}')),
        ("form POST remove (urlencoded)", req("POST", f"/admin/groups/{group}/remove",
            {"Host": here, **page, "Content-Type": "application/x-www-form-urlencoded"}, b"reason=x")),
        ("form POST backup to a path", req("POST", "/admin/backup",
            {"Host": here, **page, "Content-Type": "text/plain"}, b'{"path": "/tmp/abuse-backup.db"}')),
        ("rebinding GET /admin/groups", req("GET", "/admin/groups",
            {"Host": evil, "Sec-Fetch-Site": "same-origin"})),
        ("rebinding GET /metrics", req("GET", "/metrics", {"Host": evil, "Sec-Fetch-Site": "same-origin"})),
        ("rebinding POST with a wrong token", req("POST", f"/admin/groups/{group}/suspend",
            {"Host": evil, "Origin": f"http://{evil}", "Content-Type": "application/json",
             "Authorization": "Bearer " + "A" * 43}, b"{}")),
        ("local POST, wrong token", req("POST", f"/admin/groups/{group}/suspend",
            {"Host": here, "Content-Type": "application/json", "Authorization": f"Bearer {'B' * 43}"},
            b"{}")),
        ("local POST, no token", req("POST", f"/admin/groups/{group}/remove",
            {"Host": here, "Content-Type": "application/json"}, b'{"reason": "x"}')),
    ]  # fmt: skip


async def webpage(attack: Attack) -> None:
    """A page the operator opened: cross-origin form POSTs (suspend, remove, backup to a path
    of its choice), DNS-rebinding reads and writes (``Host`` the page's own name), and requests
    with a wrong or no token, each on a connection of its own, from as many connections as a
    browser opens to one host, one request after the other, as fast as the port answers."""
    spec = attack.spec
    host, _, port = spec.admin.rpartition(":")
    requests = webpage_requests(spec)
    await attack.ready()
    turn = 0

    async def one() -> None:
        nonlocal turn
        name, request = requests[turn % len(requests)]
        turn += 1
        stream = await tcp(host, int(port), spec.local, attack.counter)
        try:
            await stream.send_all(request)
            attack.counter.sent += len(request)
            # Read the answer to its end: the port closes first (``connection: close``), as a
            # browser lets it; a client closing first would leave its side in TIME_WAIT, and
            # thousands of those a second exhaust the local ports of the machine both run on.
            answer = b""
            with trio.move_on_after(5):
                while data := await stream.receive_some(4096):
                    answer += data
        except (trio.BrokenResourceError, OSError) as exc:
            raise Closed(str(exc)) from None
        finally:
            attack.counter.closing()
            await trio.aclose_forcefully(stream)
        status = answer.split(b" ", 2)[1].decode() if answer.count(b" ") >= 2 else "none"
        attack.answers[f"http:{status}"] += 1
        if not status.startswith("4"):
            attack.breach(f"{name}: answered {status}")

    async with trio.open_nursery() as nursery:
        for _ in range(WEBPAGE_CONNECTIONS):
            nursery.start_soon(_forever, attack, one)
        await attack.stop.wait()
        nursery.cancel_scope.cancel()


# --- 4. connection starvation -------------------------------------------------------------------

STARVE_TARGET = 1000  # connections it tries to hold (the source's cap is 256)
STARVE_ATTEMPTS_PER_SECOND = 100.0  # five times the source's connection rate


async def starve(attack: Attack) -> None:
    """One member key opens as many sessions as it can (new connections at five times the
    source's connection rate, until 1,000 are open) and subscribes on each; a quarter of them
    stay silent after the upgrade (no hello: an idle connection), the others hold a greeted
    session, subscribed or refused, and answer the relay's pings."""
    spec = attack.spec
    owner = OwnerState.load(Path(spec.owner_state))
    address = parse_address(spec.group_address)
    path = f"/g/{address.address_id}"
    key = ed25519.Ed25519PrivateKey.generate()
    ws = await attack.ws(path)
    await ws.hello()
    answer = await ws.request(Join(request=_join(attack, owner.channel, address.address_id, key, ws, 0)))
    await ws.aclose()
    if not isinstance(answer, JoinResult) or answer.status != "admitted":
        raise RuntimeError(f"the attacker's member was not admitted: {answer!r}")
    await attack.ready()
    attempts = Pacer(STARVE_ATTEMPTS_PER_SECOND, STARVE_ATTEMPTS_PER_SECOND)
    held = trio.Semaphore(STARVE_TARGET)
    turn = 0

    async def hold(n: int) -> None:
        try:
            try:
                ws = await attack.ws(path)
            except (Closed, OSError):
                attack.answers["refused_at_accept"] += 1
                return
            try:
                if n % 4:
                    await ws.hello()
                    attack.answer(
                        await ws.request(_subscribe(attack, owner.channel, address.address_id, key, ws))
                    )
                while True:
                    attack.answer(await ws.recv_frame())
            except (Closed, OSError):
                attack.answers["closed"] += 1
            finally:
                await ws.aclose()
        finally:
            held.release()

    async with trio.open_nursery() as nursery:
        while not attack.stop.is_set():
            await held.acquire()
            await attempts.take()
            nursery.start_soon(hold, turn)
            turn += 1
        nursery.cancel_scope.cancel()


# --- 5. filling up --------------------------------------------------------------------------------

REFUSED_NAME = "A name far longer than the relay's policy allows for any channel profile at all"  # > 64
BIG_DESCRIPTION = "\U0001f4a5" * 1000  # about 4 KB: what a refusal used to keep whole


async def fill(attack: Attack) -> None:
    """Invitation floods, all the source's request budget: each connection sends invitations
    one after the other, every one a fresh channel, in turn one the policy refuses (a name
    too long, a big description: a remembered refusal) and a valid one never activated; an
    invitation refused ``rate_limited`` (the source's invitation budget) is sent again, the
    same bytes, until it is opened.  Fifteen refusals and the connection is closed: a new one."""
    await attack.ready()
    requests = Pacer(REQUESTS_PER_SECOND, REQUESTS_PER_SECOND)
    connections = Pacer(CONNECTIONS_PER_SECOND, CONNECTION_BURST)
    made = 0

    async def session() -> None:
        nonlocal made
        await connections.take()
        ws = await attack.ws("/r")
        try:
            await requests.take()
            await ws.hello()
            errors = 0
            frame = b""
            while errors < ERRORS_BEFORE_RECONNECT and not attack.stop.is_set():
                if not frame:
                    refused = made % 2 == 0
                    made += 1
                    channel = (
                        new_channel(name=REFUSED_NAME, description=BIG_DESCRIPTION)
                        if refused
                        else new_channel()
                    )
                    frame = invite_frame(attack, ws, channel)
                await requests.take()
                await ws.send(frame)
                answer = attack.answer(await ws.recv_frame())
                if isinstance(answer, Error):
                    errors += 1
                    if answer.code == "rate_limited":
                        continue
                frame = b""
        finally:
            await ws.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(_forever, attack, session)
        await attack.stop.wait()
        nursery.cancel_scope.cancel()
    attack.notes["channels_made"] = made


# --- 6. memory: partly sent big messages --------------------------------------------------------

MEMORY_TARGET = 1000  # sessions it tries to hold mid-message (the source's cap is 256)
MESSAGE = 262_000  # just under server.max_frame_bytes (262,144), the largest message the relay takes
SENT_UP_FRONT = MESSAGE - 4096
TRICKLE_EVERY = 1.0  # seconds between the bytes that keep a message "in progress"


async def memory(attack: Attack) -> None:
    """The slowloris of big messages: many greeted sessions (as many as the source may open,
    at its connection rate), each sending all but the last 4 KiB of a message of the largest
    size the relay takes, then one byte a second; half as one frame, half as 16 KiB fragments
    (a message in many frames).  A session the relay closes is opened again."""
    await attack.ready()
    connections = Pacer(CONNECTIONS_PER_SECOND, CONNECTION_BURST)
    slots = trio.Semaphore(MEMORY_TARGET)
    turn = 0

    async def hold(n: int) -> None:
        try:
            try:
                ws = await attack.ws("/r")
            except (Closed, OSError):
                attack.answers["refused_at_accept"] += 1
                return
            try:
                await ws.hello()
                if n % 2:
                    await ws.write(frame_head(MESSAGE, wsframe.OP_BINARY, final=True) + bytes(SENT_UP_FRONT))
                else:
                    piece = 16 * 1024
                    pieces = SENT_UP_FRONT // piece
                    for i in range(pieces):
                        opcode = wsframe.OP_BINARY if i == 0 else wsframe.OP_CONT
                        await ws.write(frame_head(piece, opcode, final=False) + bytes(piece))
                    await ws.write(frame_head(MESSAGE - pieces * piece, wsframe.OP_CONT, final=True))
                attack.answers["message_started"] += 1
                while True:
                    await trio.sleep(TRICKLE_EVERY)
                    await ws.write(b"\0")
            finally:
                await ws.aclose()
        except (Closed, OSError):
            attack.answers["closed"] += 1
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        while not attack.stop.is_set():
            await slots.acquire()
            await connections.take()
            nursery.start_soon(hold, turn)
            turn += 1
        nursery.cancel_scope.cancel()


def frame_head(size: int, opcode: int, *, final: bool) -> bytes:
    """The head of a client frame of ``size`` bytes (masked with the zero key); the payload is
    whatever the caller writes after it, as much of it as it likes."""
    first = (0x80 if final else 0) | opcode
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    return head + b"\0\0\0\0"


# --- 7. replay ----------------------------------------------------------------------------------------

REPLAY_CONNECTIONS = 32  # per address: the contact address and the victim's group address


async def replay(attack: Attack) -> None:
    """Captured signed requests (a member's ``subscribe``, its owners' ``suspend_admission``
    and ``list_pending``, each sent once on its own connection before) sent again on many
    connections, all the source's request budget; each is a breach unless refused."""
    spec = attack.spec
    captured = {name: b64d(frame) for name, frame in spec.captured.items()}
    on_contact = [captured[n] for n in captured if not n.startswith("subscribe")]
    on_group = [captured[n] for n in captured if n.startswith("subscribe")]
    victim = parse_address(spec.victim_address)
    await attack.ready()
    requests = Pacer(REQUESTS_PER_SECOND, REQUESTS_PER_SECOND)
    connections = Pacer(CONNECTIONS_PER_SECOND, CONNECTION_BURST)

    async def session(path: str, frames: list[bytes]) -> None:
        await connections.take()
        ws = await attack.ws(path)
        try:
            await requests.take()
            await ws.hello()
            errors = n = 0
            while errors < ERRORS_BEFORE_RECONNECT and not attack.stop.is_set():
                await requests.take()
                await ws.send(frames[n % len(frames)])
                n += 1
                answer = attack.answer(await ws.recv_frame())
                if isinstance(answer, Error):
                    errors += 1
                    if answer.code not in ("wrong_session", "rate_limited"):
                        attack.breach(f"a replay was refused for another reason: {answer.code}")
                else:
                    attack.breach(f"a replay was accepted: {type(answer).__name__}")
        finally:
            await ws.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(REPLAY_CONNECTIONS if not spec.quick else 4):
            nursery.start_soon(_forever, attack, lambda: session("/r", on_contact))
            nursery.start_soon(_forever, attack, lambda: session(f"/g/{victim.address_id}", on_group))
        await attack.stop.wait()
        nursery.cancel_scope.cancel()


# --- 8. request heads over the limit, and connection churn --------------------------------------

HEAD_BYTES = 60 * 1024  # the head the issue found accepted in one write (the limit is 16 KiB)


async def heads(attack: Attack) -> None:
    """New connections at the source's connection rate (its burst first), in turn: a request
    head of 60 KiB in one write (the answer read), and a whole session opened and dropped
    (upgrade, hello, close)."""
    spec = attack.spec
    head = (
        f"GET /r HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {wsframe.CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\nX-Padding: "
    ).encode()
    head += b"p" * (HEAD_BYTES - len(head) - 4) + b"\r\n\r\n"
    await attack.ready()
    connections = Pacer(CONNECTIONS_PER_SECOND + 1, CONNECTION_BURST + 10)  # the budget exactly
    turn = 0

    async def oversized() -> None:
        stream = await tcp(spec.host, spec.port, spec.local, attack.counter)
        try:
            await stream.send_all(head)
            attack.counter.sent += len(head)
            answer = b""
            with trio.move_on_after(15):
                while b"\r\n" not in answer:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    answer += data
            status = answer.split(b" ", 2)[1].decode() if answer.count(b" ") >= 2 else "closed"
            attack.answers[f"oversized_head:{status}"] += 1
            if status.startswith(("1", "2")):
                attack.breach(f"a {len(head)}-byte request head was answered {status}")
        except (trio.BrokenResourceError, OSError):
            attack.answers["oversized_head:reset"] += 1
        finally:
            attack.counter.closing()
            await trio.aclose_forcefully(stream)

    async def churn() -> None:
        try:
            ws = await attack.ws("/r")
        except (Closed, OSError):
            attack.answers["churn:refused_at_accept"] += 1
            return
        try:
            await ws.hello()
            attack.answers["churn:greeted"] += 1
        except Closed:
            attack.answers["churn:closed"] += 1
        finally:
            await ws.aclose()

    async def run(n: int) -> None:
        try:
            await (oversized() if n % 2 == 0 else churn())
        except Closed:
            attack.answers["closed"] += 1

    async with trio.open_nursery() as nursery:
        while not attack.stop.is_set():
            await connections.take()
            nursery.start_soon(run, turn)
            turn += 1
        nursery.cancel_scope.cancel()


ATTACKS: dict[str, Callable[[Attack], Awaitable[None]]] = {
    "liar": liar,
    "owners": owners,
    "webpage": webpage,
    "starve": starve,
    "fill": fill,
    "memory": memory,
    "replay": replay,
    "heads": heads,
}


# --- control --------------------------------------------------------------------------------------


def _say(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(spec: Spec) -> None:
    attack = Attack(spec)
    async with trio.open_nursery() as nursery:
        attack.nursery = nursery
        await ATTACKS[spec.attack](attack)  # it says ready and waits for go after preparing
        nursery.cancel_scope.cancel()
    _say(
        {
            "event": "done",
            "attack": spec.attack,
            "seconds": round(time.monotonic() - attack.started, 3),
            "cpu_seconds": round(_cpu() - attack.cpu0, 3),
            "bytes_sent": attack.counter.sent,
            "connections_opened": attack.counter.opened,
            "connections_peak": attack.counter.peak,
            "answers": dict(attack.answers),
            "breaches": attack.breaches,
            "notes": attack.notes,
        }
    )


if __name__ == "__main__":
    trio.run(main, msgspec.json.decode(Path(sys.argv[1]).read_bytes(), type=Spec))
