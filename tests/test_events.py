"""Channel traffic against the real daemon: owners post signed, chained events; members
subscribe and read them as history and live, in order and once; the relay refuses what
breaks the chain and keeps proof of an owner's equivocation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from relayproc import RelayFactory, RunningRelay
from test_flow import new_owner
from traffic import (
    Member,
    Poster,
    active_channel,
    group_session,
    invitation,
    join_member,
    metric,
    next_frame,
    now,
    raw_feed,
    read_events,
    relay_key,
    subscribe,
    subscribe_frame,
)
from wire import connect, fingerprint_of

from relay.client import add_relay, publish
from relay.protocol.addresses import parse_address
from relay.protocol.direct import open_direct_invitation
from relay.protocol.encoding import encode
from relay.protocol.events import ChainHead, event_id, make_event
from relay.protocol.heads import tag, verify_head
from relay.protocol.membership import make_member_request
from relay.protocol.messages import (
    DirectInvite,
    DirectInviteDelivery,
    DirectInviteResult,
    Discover,
    Discovered,
    Error,
    HeadAnswer,
    HeadRequest,
    MemberCard,
    MemberCardRequest,
    Post,
    PostResult,
    ProfileAnswer,
    Signed,
    Subscribe,
)
from relay.protocol.profile import verify_profile


async def test_post_then_read_as_history_and_live(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id)
    poster = Poster(owner)
    async with group_session(relay, address_id) as owner_session:
        first = await poster.post(owner_session, b"first")
        assert first.seq == 1 and first.id == event_id(poster.events[0].body)
        await poster.post(owner_session, b"second")
        async with group_session(relay, address_id) as feed:
            answer = await subscribe(feed, relay, owner, address_id, ada)
            assert (answer.head_seq, answer.first_seq, answer.profile_version) == (2, 1, 2)
            assert await read_events(feed, 2) == poster.events
            await poster.post(owner_session, b"third")
            assert await read_events(feed, 1) == poster.events[2:]


async def test_retry_is_a_duplicate_and_chain_faults_are_refused(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    poster = Poster(owner)
    async with group_session(relay, address_id) as session:
        await poster.post(session, b"one")
        again = await session.request(Post(event=poster.events[0]))
        assert isinstance(again, PostResult) and (again.status, again.seq) == ("duplicate", 1)
        # a gap: event 3 before 2
        skipped = make_event(
            owner.owner_key,
            channel=owner.channel,
            after=ChainHead(2, bytes(range(32)), 0),
            body=b"x",
            now=now(),
        )
        await session.expect_error(Post(event=skipped), "event_gap")
        # prev that is not the head's id
        broken = make_event(
            owner.owner_key,
            channel=owner.channel,
            after=ChainHead(1, bytes(32 * [7]), 0),
            body=b"x",
            now=now(),
        )
        await session.expect_error(Post(event=broken), "chain_broken")
        # backdated beyond events.max_backdate, and far in the future
        await session.expect_error(Post(event=poster.next(now=now() - 7200)), "bad_timestamp")
        await session.expect_error(Post(event=poster.next(now=now() + 3600)), "bad_timestamp")
        # oversized body
        await session.expect_error(Post(event=poster.next(b"x" * 70_000)), "event_too_large")
        # a key the root never authorised
        stranger = Poster(owner, key=ed25519.Ed25519PrivateKey.generate(), head=poster.head)
        await session.expect_error(Post(event=stranger.next()), "unauthorised_owner")
        # a bad signature (bytes altered after signing)
        good = poster.next(b"honest")
        forged = Signed(body=good.body.replace(b"honest", b"forged"), signer=good.signer, sig=good.sig)
        await session.expect_error(Post(event=forged), "bad_signature")
        # the chain still goes on after all of that
        assert (await poster.post(session, b"two")).seq == 2


async def test_equivocation_is_refused_and_both_events_are_kept(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    poster = Poster(owner)
    async with group_session(relay, address_id) as session:
        await poster.post(session, b"one")
        other = make_event(
            owner.owner_key, channel=owner.channel, after=ChainHead(), body=b"another one", now=now()
        )
        await session.expect_error(Post(event=other), "equivocation")
    # the operator sees the proof counted, beside the one event kept
    stats = relay.admin_get("/admin/stats").json()["events"]
    assert (stats["stored"], stats["equivocations"]) == (1, 1) and stats["bytes"] > len(b"one")
    assert relay.stop() == 0
    db = sqlite3.connect(relay.data / "relay.db")
    rows = db.execute("SELECT seq, kept, other FROM equivocations").fetchall()
    assert rows == [(1, encode(poster.events[0]), encode(other))]


async def test_posts_need_an_active_group(relay: RunningRelay, tmp_path: Path) -> None:
    owner, owner_path = new_owner(tmp_path)
    await add_relay(owner, owner_path, relay.address)  # accepted, not listed yet
    entry = owner.relay(relay.address)
    assert entry is not None and entry.group_address is not None
    address_id = parse_address(entry.group_address).address_id
    assert address_id is not None
    async with group_session(relay, address_id) as session:
        await session.expect_error(Post(event=Poster(owner).next()), "group_not_active")


async def test_pipelined_posts_are_answered_in_order(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    poster = Poster(owner)
    events = []
    for _ in range(50):
        signed = poster.next()
        poster.accept(signed)
        events.append(signed)
    async with group_session(relay, address_id) as session:
        for signed in events[:25]:
            await session.send(Post(event=signed))
        await session.send(HeadRequest())  # answered after the posts before it
        for signed in events[25:]:
            await session.send(Post(event=signed))
        answers = [await session.recv() for _ in range(51)]
    seqs = [a.seq for a in answers if isinstance(a, PostResult)]
    assert seqs == list(range(1, 51))
    assert isinstance(answers[25], HeadAnswer)


async def test_subscribe_refusals(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id)
    async with group_session(relay, address_id) as session:
        # never joined
        await session.expect_error(
            subscribe_frame(relay, owner, address_id, Member(), session=session.challenge), "not_a_member"
        )
        # a status request replayed as a subscription
        status = make_member_request(
            ada.key,
            relay_fingerprint=fingerprint_of(relay),
            channel=owner.channel,
            address_id=address_id,
            session=session.challenge,
            now=now(),
        )
        await session.expect_error(Subscribe(request=status), "unexpected_message")
        # cards and direct invitations need a subscription first
        await session.expect_error(MemberCardRequest(member=ada.public), "unexpected_message")
        await subscribe(session, relay, owner, address_id, ada)
        await session.expect_error(
            subscribe_frame(relay, owner, address_id, ada, session=session.challenge), "unexpected_message"
        )


async def test_since_history_and_retention(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(events={"max_events": 5, "history": 3})
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id)
    poster = Poster(owner)
    async with group_session(relay, address_id) as session:
        for _ in range(8):
            await poster.post(session)
    async with group_session(relay, address_id) as feed:
        answer = await subscribe(feed, relay, owner, address_id, ada)
        assert (answer.head_seq, answer.first_seq) == (8, 4)  # 5 kept
        assert await read_events(feed, 3) == poster.events[5:]  # the newest 3 as history
    async with group_session(relay, address_id) as feed:
        await subscribe(feed, relay, owner, address_id, ada, since=0)
        assert await read_events(feed, 5) == poster.events[3:]  # all it keeps
    async with group_session(relay, address_id) as feed:
        await subscribe(feed, relay, owner, address_id, ada, since=6)
        assert await read_events(feed, 2) == poster.events[6:]
    assert metric(relay, "relay_events_pruned_total") == 3


async def test_retention_by_bytes(relay_factory: RelayFactory, tmp_path: Path) -> None:
    """(Retention by age runs on trio's MockClock: test_timers.py.)"""
    relay = relay_factory(events={"max_bytes": 2048})
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id)
    poster = Poster(owner)
    async with group_session(relay, address_id) as session:
        for _ in range(6):
            await poster.post(session, b"x" * 500)  # ~700 bytes signed: 2 fit in 2048
        async with group_session(relay, address_id) as feed:
            answer = await subscribe(feed, relay, owner, address_id, ada, since=0)
            assert (answer.head_seq, answer.first_seq) == (6, 5)
            assert await read_events(feed, 2) == poster.events[4:]
        # the chain goes on
        assert (await poster.post(session)).seq == 7
    assert metric(relay, 'relay_events_pruned_total{reason="size"}') == 4


async def test_a_member_who_stops_reading_catches_up_in_order(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(events={"send_buffer_frames": 4, "recent_cache": 0})
    owner, _, address_id = await active_channel(relay, tmp_path)
    slow, quick = await join_member(relay, owner, address_id), await join_member(relay, owner, address_id)
    poster = Poster(owner)
    async with (
        group_session(relay, address_id) as owner_session,
        raw_feed(relay, address_id, owner, slow, receive_buffer=4096) as slow_feed,
        group_session(relay, address_id) as quick_feed,
    ):
        await subscribe(quick_feed, relay, owner, address_id, quick)
        body = b"y" * 30_000
        for _ in range(300):  # far more than the slow member's socket and buffer hold
            await poster.post(owner_session, body)
            assert await read_events(quick_feed, 1) == poster.events[-1:]  # the other one keeps up
        assert metric(relay, "relay_feed_lagging_total") >= 1
        got = await slow_feed.read_all(300)
        assert got == poster.events
    assert relay.events("feed.lagging")


async def test_profile_is_pushed_to_subscribers(relay: RunningRelay, tmp_path: Path) -> None:
    owner, owner_path, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id)
    async with group_session(relay, address_id) as feed:
        await subscribe(feed, relay, owner, address_id, ada)
        await publish(owner, owner_path)
        pushed = await next_frame(feed, ProfileAnswer)
        assert isinstance(pushed, ProfileAnswer)
        assert verify_profile(pushed.profile).profile.version == 3


async def test_heads_and_discovery(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    poster = Poster(owner)
    card_key = fingerprint_of(relay)
    async with group_session(relay, address_id) as session:
        empty = await session.request(HeadRequest())
        assert isinstance(empty, HeadAnswer) and empty.event is None
        await poster.post(session)
        answer = await session.request(HeadRequest())
        assert isinstance(answer, HeadAnswer) and answer.event == poster.events[0]
        identity = relay_key(relay)
        head = verify_head(answer.head, relay_key=identity, channel=owner.channel).head
        assert (head.seq, head.id) == (1, event_id(poster.events[0].body))
    async with connect(relay, "/r") as contact:
        await contact.hello()
        mine = tag(owner.channel, card_key)
        found = await contact.request(Discover(tags=[bytes(32), mine, tag(bytes(32), card_key)]))
        assert isinstance(found, Discovered) and len(found.heads) == 1
        assert verify_head(found.heads[0], relay_key=identity, channel=owner.channel).head.seq == 1
        answers = [await contact.request(Discover(tags=[mine])) for _ in range(12)]
        assert any(isinstance(a, Error) and a.code == "rate_limited" for a in answers)


async def test_direct_invitations(relay: RunningRelay, tmp_path: Path) -> None:
    owner, owner_path, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id, "Ada")
    bob = await join_member(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as ada_feed:
        await subscribe(ada_feed, relay, owner, address_id, ada)
        # off by default: refused and counted
        await ada_feed.expect_error(MemberCardRequest(member=bob.public), "direct_messages_off")
        await ada_feed.expect_error(
            DirectInvite(request=invitation(relay, owner, address_id, ada, bob, session=ada_feed.challenge)),
            "direct_messages_off",
        )
        owner.direct_messages = True
        await publish(owner, owner_path)
        await next_frame(ada_feed, ProfileAnswer)
        card = await ada_feed.request(MemberCardRequest(member=bob.public))
        assert isinstance(card, MemberCard) and card.join.signer == bob.public
        # Bob is not subscribed: kept in his inbox, delivered when he subscribes
        stored = await ada_feed.request(
            DirectInvite(request=invitation(relay, owner, address_id, ada, bob, session=ada_feed.challenge))
        )
        assert isinstance(stored, DirectInviteResult) and stored.status == "stored"
        async with group_session(relay, address_id) as bob_feed:
            await subscribe(bob_feed, relay, owner, address_id, bob)
            delivery = await next_frame(bob_feed, DirectInviteDelivery)
            assert isinstance(delivery, DirectInviteDelivery)
            content = open_direct_invitation(
                delivery.request, seal_key=bob.seal, member_key=bob.public, channel=owner.channel
            )
            assert content.sender == ada.public
            # now he is: pushed at once
            live = await ada_feed.request(
                DirectInvite(
                    request=invitation(relay, owner, address_id, ada, bob, session=ada_feed.challenge)
                )
            )
            assert isinstance(live, DirectInviteResult) and live.status == "delivered"
            assert isinstance(await next_frame(bob_feed, DirectInviteDelivery), DirectInviteDelivery)
        # to someone who is not a member
        await ada_feed.expect_error(
            DirectInvite(
                request=invitation(relay, owner, address_id, ada, Member(), session=ada_feed.challenge)
            ),
            "unknown_member",
        )
    assert metric(relay, "relay_direct_refusals_total") == 2


async def test_direct_invitation_inbox_is_bounded(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(events={"inbox_max": 2})
    owner, _, address_id = await active_channel(relay, tmp_path, direct_messages=True)
    ada = await join_member(relay, owner, address_id, "Ada")
    bob = await join_member(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as ada_feed:
        await subscribe(ada_feed, relay, owner, address_id, ada)
        for _ in range(2):
            answer = await ada_feed.request(
                DirectInvite(
                    request=invitation(relay, owner, address_id, ada, bob, session=ada_feed.challenge)
                )
            )
            assert isinstance(answer, DirectInviteResult) and answer.status == "stored"
        await ada_feed.expect_error(
            DirectInvite(request=invitation(relay, owner, address_id, ada, bob, session=ada_feed.challenge)),
            "inbox_full",
        )


async def test_a_member_who_accepts_nothing_is_disconnected(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(events={"stall_timeout": 0.5})
    owner, _, address_id = await active_channel(relay, tmp_path)
    stuck, quick = await join_member(relay, owner, address_id), await join_member(relay, owner, address_id)
    poster = Poster(owner)
    async with (
        group_session(relay, address_id) as owner_session,
        raw_feed(relay, address_id, owner, stuck, receive_buffer=4096) as stuck_feed,
        group_session(relay, address_id) as quick_feed,
    ):
        await subscribe(quick_feed, relay, owner, address_id, quick)
        body = b"z" * 30_000
        for _ in range(300):  # far more than the sockets hold: the relay's send blocks
            await poster.post(owner_session, body)
            assert await read_events(quick_feed, 1) == poster.events[-1:]  # the other one keeps up
            if relay.events("feed.stalled"):
                break
        stalled = relay.wait_for_event("feed.stalled", timeout=5)
        assert stalled["timeout"] == 0.5 and stalled["seq"] < len(poster.events)
        assert metric(relay, "relay_feed_stalled_total") == 1
        # The stuck member's connection is closed: reading on, it reaches the end of the stream.
        with trio.fail_after(10):
            while await stuck_feed.stream.receive_some(65536):
                pass
        await poster.post(owner_session, b"after")  # the others are served as before
        assert await read_events(quick_feed, 1) == poster.events[-1:]


async def test_sigterm_closes_subscribed_members_at_once(relay_factory: RelayFactory, tmp_path: Path) -> None:
    """A subscribed member waits for its next frame with no cancel scope of its own: shutdown
    reaches it through its feed (Close "going away"), not after the grace period."""
    relay = relay_factory(server={"shutdown_grace": 30})
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada, bob = await join_member(relay, owner, address_id), await join_member(relay, owner, address_id)
    async with group_session(relay, address_id) as ada_feed, group_session(relay, address_id) as bob_feed:
        await subscribe(ada_feed, relay, owner, address_id, ada)
        await subscribe(bob_feed, relay, owner, address_id, bob)
        assert relay.proc is not None
        relay.proc.terminate()
        for feed in (ada_feed, bob_feed):
            assert await feed.expect_closed(timeout=5) == 1001
    assert await trio.to_thread.run_sync(relay.stop) == 0
    assert relay.events("relay.stopped")
    assert not relay.events("connection.internal_error")


async def test_feeds_end_when_the_group_is_suspended_or_removed(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada, bob = await join_member(relay, owner, address_id), await join_member(relay, owner, address_id)
    groups = relay.admin_get("/admin/groups").json()["groups"]
    (group,) = [g for g in groups if g["state"] == "active"]
    admin = f"/admin/groups/{group['id']}"
    async with group_session(relay, address_id) as ada_feed, group_session(relay, address_id) as bob_feed:
        await subscribe(ada_feed, relay, owner, address_id, ada)
        await subscribe(bob_feed, relay, owner, address_id, bob)
        assert relay.admin_post(f"{admin}/suspend", {"reason": "abuse report"}).status_code == 200
        for feed in (ada_feed, bob_feed):
            error = await next_frame(feed, Error)
            assert isinstance(error, Error) and error.code == "group_not_active"
            assert "suspended" in error.reason
            assert await feed.expect_closed() == 1008
    ended = relay.wait_for_event("feed.group_ended")
    assert (ended["state"], ended["feeds"]) == ("suspended", 2)
    assert metric(relay, "relay_feeds_ended_total") == 2
    async with group_session(relay, address_id) as again:  # no new feed while suspended
        await again.expect_error(
            subscribe_frame(relay, owner, address_id, ada, session=again.challenge), "group_not_active"
        )
    assert relay.admin_post(f"{admin}/resume").status_code == 200
    async with group_session(relay, address_id) as ada_feed:
        await subscribe(ada_feed, relay, owner, address_id, ada)
        assert relay.admin_post(f"{admin}/remove", {"reason": "gone"}).status_code == 200
        error = await next_frame(ada_feed, Error)
        assert isinstance(error, Error) and error.code == "group_not_active" and "removed" in error.reason
        assert await ada_feed.expect_closed() == 1008
    assert metric(relay, "relay_feeds_ended_total") == 3
    # The Close is sent by the feed's sender while the connection's task reads: only that task
    # waits for the member's Close (two tasks waiting on one socket is an error in trio).
    assert not relay.events("connection.internal_error")
