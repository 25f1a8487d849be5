"""Replays against the real daemon: a signed request captured on one connection is refused on
every other (``wrong_session``), and refusing it changes nothing.

Each test captures a genuine request as it was sent (what an observer of the network, of a
proxy's log or of the relay's own traffic would hold), replays it on fresh connections from
another host (127.0.0.3), and checks what the replay would have done is not done: a replayed
``subscribe`` no longer takes the member's inbox of direct invitations, a replayed
``suspend_admission`` no longer closes admission the owners reopened, and a replayed
invitation, join, status question, log request or direct invitation does nothing.  Meanwhile
a well-behaved member, a real one using the client library from 127.0.0.2, reads the channel
and asks for its status over and over, and must see no failure at all.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from relayproc import RunningRelay
from traffic import (
    Member,
    active_channel,
    group_session,
    invitation,
    join_member,
    join_request,
    metric,
    next_frame,
    subscribe,
    subscribe_frame,
)
from wire import Channel, connect, fingerprint_of, seal_to

from relay.client.connection import connecting_from
from relay.client.member import MemberState, join, status
from relay.client.owner import OwnerState, owner_command
from relay.client.reader import RelayTrouble, read
from relay.protocol.direct import open_direct_invitation
from relay.protocol.encoding import b64d
from relay.protocol.follow import LIES, Finding
from relay.protocol.invitation import make_owner_request
from relay.protocol.membership import make_member_request
from relay.protocol.messages import (
    DirectInvite,
    DirectInviteDelivery,
    DirectInviteResult,
    InviteResult,
    JoinResult,
    JoinStatus,
    LogRequest,
    LogResult,
    OwnerCommand,
    OwnerCommandResult,
)

THIEF = "127.0.0.3"  # the attacker's host
CALM = "127.0.0.2"  # the well-behaved member's host


# --- the well-behaved member ----------------------------------------------------------------


@dataclass
class Calm:
    """What the well-behaved member did while the test attacked: rounds done, failures seen."""

    rounds: int = 0
    failures: list[str] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)


async def _calm_member(
    tmp_path: Path, owner: OwnerState, calm: Calm, *, task_status: trio.TaskStatus[None]
) -> None:
    # The local address is set in this task's own context: the test's other requests keep theirs.
    with connecting_from(CALM):
        state = MemberState.new(str(owner.link()), name="Calm")
        path = tmp_path / "member-calm.json"
        await join(state, path)
        if [r.status for r in state.relays] != ["admitted"]:
            calm.failures.append(f"join: {state.relays}")
        task_status.started()
        while not calm.stop.is_set():
            await status(state, path)
            for entry in state.relays:
                if entry.status != "admitted" or entry.code is not None:
                    calm.failures.append(f"status: {entry}")
            async with read(state, path, idle=0.2) as items:
                async for item in items:
                    if isinstance(item, RelayTrouble) or (isinstance(item, Finding) and item.code in LIES):
                        calm.failures.append(f"read: {item}")
            calm.rounds += 1
            await trio.sleep(0.02)


@asynccontextmanager
async def calm_member(tmp_path: Path, owner: OwnerState) -> AsyncIterator[Calm]:
    """A real member of ``owner``'s channel (the client library, from 127.0.0.2) that reads the
    channel and asks for its status again and again while the body runs; it must never fail."""
    calm = Calm()
    async with trio.open_nursery() as nursery:
        await nursery.start(_calm_member, tmp_path, owner, calm)
        rounds = calm.rounds
        yield calm
        with trio.fail_after(30):  # at least one whole round during the attack
            while calm.rounds <= rounds + 1:
                await trio.sleep(0.05)
        calm.stop.set()
    assert calm.failures == [], calm.failures
    assert calm.rounds >= 2


def wrong_sessions(relay: RunningRelay) -> float:
    return metric(relay, 'relay_refusals_total{code="wrong_session"}')


def inbox_rows(relay: RunningRelay) -> int:
    with sqlite3.connect(relay.data / "relay.db", timeout=10) as db:
        (n,) = db.execute("SELECT count(*) FROM direct_inbox").fetchone()
    return int(n)


def join_rows(relay: RunningRelay) -> int:
    with sqlite3.connect(relay.data / "relay.db", timeout=10) as db:
        (n,) = db.execute("SELECT count(*) FROM join_requests").fetchone()
    return int(n)


# --- subscribe ------------------------------------------------------------------------------


async def test_a_replayed_subscribe_is_refused_and_the_inbox_is_kept(
    relay: RunningRelay, tmp_path: Path
) -> None:
    """Before sessions, a captured ``subscribe`` replayed later subscribed as the member and
    took (and emptied) its inbox of direct invitations."""
    owner, _, address_id = await active_channel(relay, tmp_path, direct_messages=True)
    ada = await join_member(relay, owner, address_id, "Ada")
    bob = await join_member(relay, owner, address_id, "Bob")
    async with calm_member(tmp_path, owner):
        async with group_session(relay, address_id) as bob_feed:  # Bob subscribes; it is captured
            captured = subscribe_frame(relay, owner, address_id, bob, session=bob_feed.challenge)
            await bob_feed.request(captured)
        async with group_session(relay, address_id) as ada_feed:  # Bob is away: kept for him
            await subscribe(ada_feed, relay, owner, address_id, ada)
            for _ in range(2):
                sent = invitation(relay, owner, address_id, ada, bob, session=ada_feed.challenge)
                answer = await ada_feed.request(DirectInvite(request=sent))
                assert isinstance(answer, DirectInviteResult) and answer.status == "stored"
        assert inbox_rows(relay) == 2

        refused = wrong_sessions(relay)
        for _ in range(3):  # the capture, replayed from another host on fresh connections
            async with group_session(relay, address_id, THIEF) as thief:
                error = await thief.expect_error(captured, "wrong_session")
                assert "another connection" in error.reason
                await thief.expect_error(DirectInvite(request=sent), "unexpected_message")  # not subscribed
        assert inbox_rows(relay) == 2  # nothing was taken
        assert wrong_sessions(relay) == refused + 3

        async with group_session(relay, address_id) as bob_feed:  # Bob himself gets both
            await subscribe(bob_feed, relay, owner, address_id, bob)
            for _ in range(2):
                delivery = await next_frame(bob_feed, DirectInviteDelivery)
                assert isinstance(delivery, DirectInviteDelivery)
                content = open_direct_invitation(
                    delivery.request, seal_key=bob.seal, member_key=bob.public, channel=owner.channel
                )
                assert content.sender == ada.public
        assert inbox_rows(relay) == 0


# --- the owners' commands --------------------------------------------------------------------


async def test_a_captured_suspend_admission_replayed_after_resume_is_refused(
    relay: RunningRelay, tmp_path: Path
) -> None:
    """Before sessions, a captured ``suspend_admission`` re-applied for its whole freshness
    window (10 minutes by default) after the owners had resumed."""
    owner, _, address_id = await active_channel(relay, tmp_path)
    [entry] = owner.relays
    fingerprint = fingerprint_of(relay)
    async with calm_member(tmp_path, owner):
        async with connect(relay) as conn:  # the owner suspends admission; the command is captured
            await conn.hello()
            request = make_owner_request(
                owner.owner_key,
                relay_fingerprint=fingerprint,
                channel=owner.channel,
                service_group=b64d(entry.service_group),
                action="suspend_admission",
                session=conn.challenge,
                now=int(time.time()),
            )
            captured = OwnerCommand(request=request)
            answer = await conn.request(captured)
            assert isinstance(answer, OwnerCommandResult) and answer.admission == "suspended"
            again = await conn.request(captured)  # on its own connection it is just the same command
            assert isinstance(again, OwnerCommandResult) and again.admission == "suspended"
        [resumed] = await owner_command(owner, "resume_admission")  # the client library
        assert (resumed.error, resumed.admission) == (None, "open")

        for local in (THIEF, None):
            async with connect(relay, "/r", local) as thief:
                await thief.hello()
                error = await thief.expect_error(captured, "wrong_session")
                assert "owner request" in error.reason
        [view] = await owner_command(owner, "list_pending")
        assert (view.error, view.admission) == (None, "open")
        async with group_session(relay, address_id) as newcomer:  # admission is open indeed
            answer = await newcomer.request(
                join_request(relay, owner, address_id, Member(), session=newcomer.challenge)
            )
            assert isinstance(answer, JoinResult) and answer.status == "admitted", answer

        # the owners' log request: the same rule
        async with connect(relay) as conn:
            await conn.hello()
            read_log = make_owner_request(
                owner.owner_key,
                relay_fingerprint=fingerprint,
                channel=owner.channel,
                service_group=b64d(entry.service_group),
                action="read_log",
                session=conn.challenge,
                now=int(time.time()),
            )
            assert isinstance(await conn.request(LogRequest(request=read_log)), LogResult)
        async with connect(relay, "/r", THIEF) as thief:
            await thief.hello()
            await thief.expect_error(LogRequest(request=read_log), "wrong_session")


# --- invitations, joins, status questions, direct invitations --------------------------------


async def test_invitation_join_status_and_direct_invite_are_good_on_their_connection_only(
    relay: RunningRelay, tmp_path: Path
) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path, direct_messages=True)
    ada = await join_member(relay, owner, address_id, "Ada")
    bob = await join_member(relay, owner, address_id, "Bob")
    fingerprint = fingerprint_of(relay)
    async with calm_member(tmp_path, owner):
        # an invitation
        channel = Channel()
        async with connect(relay) as conn:
            card = await conn.hello()
            sealed = seal_to(card, fingerprint, channel.invitation(fingerprint, session=card.challenge))
            answer = await conn.request(sealed)
            assert isinstance(answer, InviteResult) and answer.status == "accepted"
        groups = relay.admin_get("/admin/groups").json()["groups"]
        async with connect(relay, "/r", THIEF) as thief:
            await thief.hello()
            await thief.expect_error(sealed, "wrong_session")
        assert relay.admin_get("/admin/groups").json()["groups"] == groups

        # a join, and a status question
        carol = Member()
        async with group_session(relay, address_id) as conn:
            join = join_request(relay, owner, address_id, carol, session=conn.challenge, name="Carol")
            answer = await conn.request(join)
            assert isinstance(answer, JoinResult) and answer.status == "admitted"
            question = JoinStatus(
                request=make_member_request(
                    carol.key,
                    relay_fingerprint=fingerprint,
                    channel=owner.channel,
                    address_id=address_id,
                    session=conn.challenge,
                    now=int(time.time()),
                )
            )
            assert isinstance(await conn.request(question), JoinResult)
        rows = join_rows(relay)
        async with group_session(relay, address_id, THIEF) as thief:
            await thief.expect_error(join, "wrong_session")
            await thief.expect_error(question, "wrong_session")
        assert join_rows(relay) == rows
        # Carol herself, on a new connection, asks with a new request: her first decision again
        async with group_session(relay, address_id) as conn:
            again = join_request(relay, owner, address_id, carol, session=conn.challenge, name="Carol")
            answer = await conn.request(again)
            assert isinstance(answer, JoinResult) and answer.status == "admitted"
        assert join_rows(relay) == rows

        # a direct invitation, moved from one of Ada's subscribed connections to another
        async with group_session(relay, address_id) as first, group_session(relay, address_id) as second:
            await subscribe(first, relay, owner, address_id, ada)
            await subscribe(second, relay, owner, address_id, ada)
            sent = DirectInvite(
                request=invitation(relay, owner, address_id, ada, bob, session=first.challenge)
            )
            answer = await first.request(sent)
            assert isinstance(answer, DirectInviteResult) and answer.status == "stored"
            await second.expect_error(sent, "wrong_session")
        assert inbox_rows(relay) == 1
