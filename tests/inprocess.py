"""The real relay in this process, on trio's ``MockClock``: for the tests whose point is time.

:func:`relay_on_mock_clock` starts :class:`relay.server.app.Relay`, the object ``relay
serve`` runs (the real Database on a SQLite file in the test's folder, the real
GroupService, JoinWorker, Channels, sweeps and operator endpoint), with a
:class:`relay.server.clock.Clock` whose wall time follows trio's clock
(:class:`FollowingWall`).  Tests talk to the components directly (``relay.parts``) with
real signed frames, so no socket is involved, and a virtual hour passes in well under a
second of real time.  The clocks are the only fakes.

How the clock moves: like ``MockClock``'s autojump (to the next deadline whenever every task
is blocked), with one more condition, that the database writer has nothing in flight.  A
transaction runs on the writer's thread, and a task waiting for it looks blocked to trio;
plain autojump would move the clock while the transaction runs, so a timer could fire in the
middle of what the test means to be one instant.  Here a transaction takes no virtual time.

Every line the relay logs is kept in :attr:`InProcessRelay.logs`, with the virtual time it
was logged at (``at``); ``exc_info`` stays the exception object (the daemon's JSON renderer
turns it into the ``exception`` text, see :func:`rendered`).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio
import trio.testing
from conftest import to_toml
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from wire import HYBRID, Channel

from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.invitation import SEAL_PURPOSE, verify_grant
from relay.protocol.membership import make_join_request, make_member_request
from relay.protocol.messages import (
    Invite,
    InviteResult,
    Join,
    JoinResult,
    JoinStatus,
    MemberProfile,
    ProfileResult,
    ProfileUpdate,
)
from relay.server.admission import GroupBinding
from relay.server.app import Parts, Relay
from relay.server.clock import Clock
from relay.server.config import load_config
from relay.server.http import HttpRequest, HttpResponse
from relay.store.db import Database

# A test that hangs (waits for something that never comes) fails at this virtual time
# instead of hanging: there is always a deadline for the clock to jump to.
VIRTUAL_BUDGET = 60 * 24 * 3600.0
SOURCE = "203.0.113.7"  # the budget key of the owner's network address (TEST-NET-3)


class FollowingWall:
    """A wall clock that moves with trio's clock: ``start`` at virtual time 0, plus ``offset``
    (a test may step the wall clock, as NTP would, by changing it)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.offset = 0.0

    def __call__(self) -> float:
        return self.start + self.offset + trio.current_time()


async def advance_when_quiet(clock: trio.testing.MockClock, db: Database) -> None:
    """Jump ``clock`` to the next deadline whenever every other task is blocked and the
    database has no transaction in flight (see the module docstring)."""
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if db.in_flight or db.read_stats().in_flight:
            # The writer thread (or a read's) is busy: give it real time, without moving the clock.
            await trio.to_thread.run_sync(time.sleep, 0.0005)
            continue
        jump = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if 0 < jump < math.inf:
            clock.jump(jump)
        elif jump == math.inf:  # nothing scheduled: something real is awaited
            await trio.to_thread.run_sync(time.sleep, 0.001)


@dataclass
class InProcessRelay:
    relay: Relay
    wall: FollowingWall
    logs: list[dict[str, Any]]

    @property
    def parts(self) -> Parts:
        assert self.relay.parts is not None
        return self.relay.parts

    @property
    def fingerprint(self) -> bytes:
        return self.relay.identity.fingerprint

    def now(self) -> int:
        """The relay's wall time, in whole seconds (what signed requests are dated with)."""
        return int(self.wall())

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line["event"] == name]

    def seal(self, plaintext: bytes, suite: str = HYBRID) -> Invite:
        """An invitation sealed to this relay, as a client would after reading its card."""
        keys = self.relay.identity.seal_keys.public_keys()
        sealed = crypto.seal(suite, keys[suite], plaintext, crypto.seal_info(SEAL_PURPOSE, self.fingerprint))
        return Invite(suite=suite, sealed=sealed)

    async def admin(self, method: str, target: str, body: object = None) -> HttpResponse:
        """A request to the real operator endpoint (token, Host and JSON body as the CLI sends)."""
        admin = self.parts.admin
        headers = {"host": "127.0.0.1", "authorization": f"Bearer {admin.token}"}
        data = b""
        if method == "POST":
            headers["content-type"] = "application/json"
            data = json.dumps({} if body is None else body).encode()
        return await admin.respond(HttpRequest(method, target, headers, data), "127.0.0.1")


@dataclass
class Owner:
    """A channel's owner, talking to the in-process relay with real signed frames."""

    relay: InProcessRelay
    channel: Channel = field(default_factory=Channel)
    address: str = ""
    address_id: str = ""
    version: int = 1

    async def invite(self, *, session: bytes | None = None, source: str = SOURCE) -> InviteResult:
        """Invite the relay on a connection whose challenge is ``session`` (a new one if not given)."""
        session = session or secrets.token_bytes(32)
        plaintext = self.channel.invitation(self.relay.fingerprint, session=session, now=self.relay.now())
        answer = await self.relay.parts.service.invite(self.relay.seal(plaintext), source, session)
        if answer.status == "accepted":
            assert answer.grant is not None
            grant = verify_grant(
                answer.grant,
                relay_key=answer.grant.signer,
                channel=self.channel.channel,
                service_group=self.channel.service_group,
            )
            address_id = parse_address(grant.address).address_id
            assert address_id is not None
            self.address, self.address_id = grant.address, address_id
        return answer

    async def publish(self) -> ProfileResult:
        """A newer profile that lists the relay's address: activates the group."""
        self.version += 1
        profile = self.channel.profile(version=self.version, relays=[self.address])
        return await self.relay.parts.service.update_profile(self.address_id, ProfileUpdate(profile=profile))

    async def binding(self) -> GroupBinding:
        return await self.relay.parts.admissions.bind(self.address_id)


@dataclass
class Member:
    owner: Owner
    name: str = "Ada"
    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    seal: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate)

    async def join(self) -> JoinResult:
        relay, session = self.owner.relay, secrets.token_bytes(32)
        request = make_join_request(
            self.key,
            relay_fingerprint=relay.fingerprint,
            channel=self.owner.channel.channel,
            address_id=self.owner.address_id,
            profile=MemberProfile(name=self.name, seal_key=self.seal.public_key().public_bytes_raw()),
            session=session,
            now=relay.now(),
        )
        return await relay.parts.admissions.join(await self.owner.binding(), Join(request=request), session)

    async def status(self, wait: float = 0.0) -> JoinResult:
        relay, session = self.owner.relay, secrets.token_bytes(32)
        request = make_member_request(
            self.key,
            relay_fingerprint=relay.fingerprint,
            channel=self.owner.channel.channel,
            address_id=self.owner.address_id,
            session=session,
            now=relay.now(),
        )
        frame = JoinStatus(request=request, wait=wait)
        return await relay.parts.admissions.status(await self.owner.binding(), frame, session)


def _keep(logs: list[dict[str, Any]]) -> Any:
    def keep(_: object, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        event_dict["level"] = method
        event_dict["at"] = trio.current_time() if _in_trio() else None
        logs.append(dict(event_dict))
        print({k: v for k, v in event_dict.items() if k != "exc_info"})  # shown when a test fails
        raise structlog.DropEvent

    return keep


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def rendered(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` through the daemon's own exception renderer (relay.server.logsetup): what its
    JSON line carries (``exc_info`` becomes the ``exception`` text)."""
    return dict(structlog.processors.format_exc_info(None, "", dict(line)))


@asynccontextmanager
async def relay_on_mock_clock(
    tmp_path: Path, clock: trio.testing.MockClock, **sections: dict[str, object]
) -> AsyncIterator[InProcessRelay]:
    """The relay, configured with ``sections`` (as in ``relay.toml``) on free loopback ports,
    running on ``clock`` until the block ends; then stopped as SIGTERM stops it."""
    server = {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", **sections.pop("server", {})}
    # Timing, not durability, is what these tests look at: no fsync per commit (WAL).
    storage = {"synchronous": "NORMAL", **sections.pop("storage", {})}
    path = tmp_path / "relay.toml"
    path.write_text(to_toml({"server": server, "storage": storage, **sections}))
    config = load_config(path, environ={})
    # Whole seconds at virtual time 0, so that dates are exact at whole virtual seconds.
    wall = FollowingWall(float(int(time.time())))
    logs: list[dict[str, Any]] = []
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _keep(logs)],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )
    try:
        relay = Relay(config=config, data_dir=tmp_path / "relay", clock=Clock(wall))
        stopped = trio.Event()
        async with trio.open_nursery() as nursery:

            async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await relay.run(task_status=task_status)
                finally:
                    stopped.set()
                    nursery.cancel_scope.cancel()  # the clock's task too

            await nursery.start(run)
            assert relay.parts is not None
            nursery.start_soon(advance_when_quiet, clock, relay.parts.db)
            try:
                # Not around the shutdown: the writer thread's exit is a real wait the clock
                # cannot see, and it would jump straight to this deadline.
                with trio.fail_after(VIRTUAL_BUDGET):
                    yield InProcessRelay(relay, wall, logs)
            finally:
                # Stopped as SIGTERM stops it, even when the test failed: a failure must not
                # cancel the relay half-way (the nursery would, on the way out).
                relay.stop()
                with trio.CancelScope(shield=True):
                    await stopped.wait()
    finally:
        structlog.configure(**saved)
