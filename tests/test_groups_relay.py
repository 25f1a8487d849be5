"""Groups at the relay, against the real daemon: members' messages, owners' certs and signed
moderation in a group's timeline, spoken frame by frame (the raw client of ``wire.py``).

A certified member's message is stored once, placed (``pos``) and served live and as history
to the other members; the same bytes again are a ``duplicate``; every bad input gets its typed
error and stores nothing; a removed message is served as a tombstone; the relay's signed head
covers the timeline; a ban ends the member's feed and refuses its posts and its later join.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import trio
from conftest import ENGINES
from relayproc import RelayFactory, RunningRelay
from test_cli import run_json
from test_fleet import join_at, start_fleet
from traffic import (
    Member,
    Poster,
    active_channel,
    group_session,
    join_member,
    join_request,
    metric,
    now,
    raw_feed,
    relay_key,
    subscribe_frame,
)
from wire import RawSession, check_error

from relay.client.owner import OwnerState, command_relay, owner_command, serving_relays
from relay.protocol import crypto
from relay.protocol import timeline as rules
from relay.protocol.encoding import decode, encode
from relay.protocol.events import event_id
from relay.protocol.heads import verify_head
from relay.protocol.messages import (
    Error,
    Head,
    HeadAnswer,
    HeadRequest,
    MemberPost,
    MemberPostResult,
    Profile,
    ProfileResult,
    ProfileUpdate,
    Publish,
    PublishResult,
    Signed,
    Subscribe,
    Subscribed,
    TimelineFrame,
    TimelineItem,
)
from relay.server.admission import MAX_LISTED_BYTES


async def group(
    relay: RunningRelay, tmp_path: Path, kind: str = "group", **profile: object
) -> tuple[OwnerState, str]:
    """An active group (or channel) on ``relay``; ``profile``: fields of the signed profile the
    owner's state file does not hold (comments, limits), signed into a next version."""
    owner, path, address_id = await active_channel(relay, tmp_path, kind=kind)
    if profile:
        owner.profile_version += 1
        base = decode(owner.profile().body, Profile, limit=1 << 20)
        body = encode(msgspec.structs.replace(base, **profile))
        signed = crypto.signed(owner.owner_key, crypto.Label.PROFILE, body)
        async with group_session(relay, address_id) as session:
            answer = await session.request(ProfileUpdate(profile=signed))
        assert isinstance(answer, ProfileResult), answer
        owner.save(path)
    return owner, address_id


@dataclass
class Author:
    """A member posting in a group: its key, the head of its own chain, its cert."""

    owner: OwnerState
    member: Member = field(default_factory=Member)
    head: rules.AuthorHead = field(default_factory=rules.AuthorHead)
    name: str = "Ada"

    def cert(self, role: str = "member", issued_at: int | None = None) -> Signed:
        return rules.make_cert(
            self.owner.owner_key,
            channel=self.owner.channel,
            member=self.member.public,
            name=self.name,
            role=role,
            now=now() if issued_at is None else issued_at,
        )

    def message(self, body: bytes, *, reply_to: bytes = b"", seq: int | None = None) -> Signed:
        # ``seq``: out of turn (a replay, a gap), chained onto the newest message this author knows
        after = (
            self.head if seq is None else rules.AuthorHead(seq - 1, self.head.id if seq > 1 else bytes(32), 0)
        )
        return rules.make_message(
            self.member.key, channel=self.owner.channel, after=after, body=body, now=now(), reply_to=reply_to
        )

    def accept(self, signed: Signed) -> None:
        message = rules.stored_message(signed)
        self.head = rules.AuthorHead.of(message)

    async def post(
        self, session: RawSession, body: bytes, *, cert: Signed | None = None, **kw: bytes
    ) -> MemberPostResult:
        signed = self.message(body, **kw)
        answer = await session.request(MemberPost(message=signed, cert=cert))
        assert isinstance(answer, MemberPostResult), answer
        assert answer.status == "stored", answer
        self.accept(signed)
        return answer


async def joined(relay: RunningRelay, owner: OwnerState, address_id: str, name: str) -> Author:
    return Author(owner, await join_member(relay, owner, address_id, name), name=name)


async def publish_entry(session: RawSession, entry: Signed, kind: str) -> PublishResult:
    answer = await session.request(Publish(entry=entry, kind=kind))
    assert isinstance(answer, PublishResult), answer
    return answer


async def subscribe(
    session: RawSession,
    relay: RunningRelay,
    author: Author,
    address_id: str,
    timeline_since: int | None = None,
) -> Subscribed:
    frame = subscribe_frame(relay, author.owner, address_id, author.member, session=session.challenge)
    answer = await session.request(Subscribe(request=frame.request, timeline_since=timeline_since))
    assert isinstance(answer, Subscribed), answer
    return answer


async def items(session: RawSession, n: int, timeout: float = 5.0) -> list[TimelineItem]:
    """The next ``n`` timeline frames (event frames are skipped)."""
    got: list[TimelineItem] = []
    while len(got) < n:
        frame = await session.recv(timeout)
        if isinstance(frame, TimelineFrame):
            got.append(frame.item)
    return got


async def timeline_pos(session: RawSession) -> int:
    """The timeline's last place, as the relay's head says."""
    answer = await session.request(HeadRequest())
    assert isinstance(answer, HeadAnswer)
    return decode(answer.head.body, Head, limit=4096).timeline_pos


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
async def test_a_certified_members_message_reaches_the_others_live_and_in_history(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    bob = await joined(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as owner_session:
        placed = await publish_entry(owner_session, ada.cert(), "cert")
        assert (placed.status, placed.pos) == ("stored", 1)
        older = Publish(entry=ada.cert(issued_at=now() - 60), kind="cert")
        check_error(await owner_session.request(older), "superseded")  # nothing stored
    async with group_session(relay, address_id) as bob_feed, group_session(relay, address_id) as ada_session:
        answer = await subscribe(bob_feed, relay, bob, address_id)
        assert (answer.timeline_pos, answer.timeline_first) == (1, 1)
        [cert_item] = await items(bob_feed, 1)
        assert (cert_item.pos, cert_item.kind, cert_item.after) == (1, "cert", 0)
        first = await ada.post(ada_session, b"hello, group")
        assert first.pos == 2
        [live] = await items(bob_feed, 1)
        assert (live.pos, live.kind, live.id) == (2, "message", first.id)
        assert live.entry is not None and rules.stored_message(live.entry).message.body == b"hello, group"
        # the same bytes again: a retry, answered with the place it has
        retry = await ada_session.request(MemberPost(message=live.entry))
        assert isinstance(retry, MemberPostResult) and (retry.status, retry.pos) == ("duplicate", 2)
        # bob brings his cert with his first message: the cert is placed first
        bobs = await bob.post(ada_session, b"hi Ada", cert=bob.cert())
        assert bobs.pos == 4
        got = await items(bob_feed, 2)
        assert [(i.pos, i.kind) for i in got] == [(3, "cert"), (4, "message")]
    async with group_session(relay, address_id) as reader:
        answer = await subscribe(reader, relay, ada, address_id, timeline_since=0)
        assert (answer.timeline_pos, answer.timeline_first) == (4, 1)
        history = await items(reader, 4)
        assert [i.pos for i in history] == [1, 2, 3, 4]
        assert all(i.entry is not None for i in history)
        # the relay's signed head covers the timeline: its hash is the one of what was served
        head = await reader.request(HeadRequest())
        assert isinstance(head, HeadAnswer)
        verified = verify_head(head.head, relay_key=relay_key(relay), channel=owner.channel).head
        running = rules.TIMELINE_GENESIS
        for item in history:
            running = rules.timeline_hash(running, item.pos, item.after, item.kind, item.id)
        assert (verified.timeline_pos, verified.timeline_hash) == (4, running)
    assert metric(relay, "relay_member_messages_total") == 3
    stats = relay.admin_get("/admin/stats").json()
    assert stats["timeline"]["places"] == 4 and stats["timeline"]["bytes"] > 0


async def test_every_bad_message_gets_its_typed_error_and_stores_nothing(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(groups={"max_message_bytes": 64})
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    stranger = Author(owner, name="Eve")  # never joined
    uncertified = await joined(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as session:
        await publish_entry(session, ada.cert(), "cert")
        await ada.post(session, b"one")
        before = await timeline_pos(session)

        async def refused(frame: object, code: str) -> None:
            check_error(await session.request(frame), code, code)
            assert await timeline_pos(session) == before, f"{code}: something was stored"

        await refused(MemberPost(message=uncertified.message(b"hi")), "not_certified")
        await refused(MemberPost(message=stranger.message(b"hi"), cert=stranger.cert()), "not_a_member")
        await refused(MemberPost(message=ada.message(b"x" * 65)), "message_too_large")
        # a cert signed by someone who is not an owner
        forged = rules.make_cert(
            Member().key, channel=owner.channel, member=uncertified.member.public, name="Bob", now=now()
        )
        await refused(MemberPost(message=uncertified.message(b"hi"), cert=forged), "unauthorised_owner")
        # the author's own chain: a replayed seq with other content, a gap, a broken link
        await refused(MemberPost(message=ada.message(b"other one", seq=1)), "equivocation")
        await refused(MemberPost(message=ada.message(b"three", seq=3)), "event_gap")
        wrong_prev = rules.make_message(
            ada.member.key,
            channel=owner.channel,
            after=rules.AuthorHead(1, b"\x01" * 32, 0),
            body=b"x",
            now=now(),
        )
        await refused(MemberPost(message=wrong_prev), "chain_broken")
        # another channel's message, and altered bytes
        other = rules.make_message(ada.member.key, channel=b"\x07" * 32, after=ada.head, body=b"x", now=now())
        await refused(MemberPost(message=other), "channel_mismatch")
        good = ada.message(b"two")
        await refused(
            MemberPost(message=Signed(body=good.body, signer=good.signer, sig=bytes(64))), "bad_signature"
        )
        # a reply to nothing held here
        await refused(MemberPost(message=ada.message(b"re", reply_to=b"\x09" * 32)), "bad_reply")
        # a moderation by a member who is not a moderator
        removal = rules.make_moderation(
            ada.member.key, channel=owner.channel, action="remove_message", subject=b"\x01" * 32, now=now()
        )
        await refused(Publish(entry=removal, kind="moderation"), "not_a_moderator")
        await refused(Publish(entry=ada.cert(), kind="nonsense"), "bad_type")
    assert metric(relay, "relay_member_messages_total") == 11  # one stored, ten refused


async def test_the_pace_slow_mode_and_posts_off(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(groups={"messages_per_minute": 2})
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    async with group_session(relay, address_id) as session:
        await ada.post(session, b"one", cert=ada.cert())
        await ada.post(session, b"two")
        before = await timeline_pos(session)
        error = check_error(await session.request(MemberPost(message=ada.message(b"three"))), "rate_limited")
        assert "post again in" in error.reason and await timeline_pos(session) == before
    owner, address_id = await group(relay, tmp_path, slow_mode=600)
    ada = await joined(relay, owner, address_id, "Ada")
    async with group_session(relay, address_id) as session:
        await ada.post(session, b"one", cert=ada.cert())
        error = check_error(await session.request(MemberPost(message=ada.message(b"two"))), "slow_mode")
        assert "post again in" in error.reason
    plain, plain_address = await group(relay, tmp_path, kind="channel")
    bob = await joined(relay, plain, plain_address, "Bob")
    async with group_session(relay, plain_address) as session:
        frame = MemberPost(message=bob.message(b"hi"), cert=bob.cert())
        check_error(await session.request(frame), "member_posts_off")
        check_error(await session.request(Publish(entry=bob.cert(), kind="cert")), "member_posts_off")


async def test_comments_reply_only_to_owners_posts(relay: RunningRelay, tmp_path: Path) -> None:
    owner, address_id = await group(relay, tmp_path, kind="channel", comments=True)
    ada = await joined(relay, owner, address_id, "Ada")
    poster = Poster(owner)
    async with group_session(relay, address_id) as session:
        await poster.post(session, b"an owner's post")
        post_id = event_id(poster.events[0].body)
        check_error(
            await session.request(MemberPost(message=ada.message(b"no reply"), cert=ada.cert())), "bad_reply"
        )
        comment = await ada.post(session, b"a comment", cert=ada.cert(), reply_to=post_id)
        # a comment on a comment is not one
        check_error(
            await session.request(MemberPost(message=ada.message(b"re", reply_to=comment.id))), "bad_reply"
        )
    async with group_session(relay, address_id) as reader:
        answer = await subscribe(reader, relay, ada, address_id)
        assert answer.timeline_pos == 2  # the cert, the comment
        got = await items(reader, 2)
        assert [i.kind for i in got] == ["cert", "message"] and got[1].after == 1  # placed after the post


async def test_a_removed_message_is_a_tombstone_in_history_and_in_the_cache(
    relay: RunningRelay, tmp_path: Path
) -> None:
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    bob = await joined(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as session, group_session(relay, address_id) as bob_feed:
        await subscribe(bob_feed, relay, bob, address_id)
        kept = await ada.post(session, b"kept", cert=ada.cert())
        gone = await ada.post(session, b"regrettable")
        assert [i.pos for i in await items(bob_feed, 3)] == [1, 2, 3]  # the cert, both messages
        removal = rules.make_moderation(
            owner.owner_key, channel=owner.channel, action="remove_message", subject=gone.id, now=now()
        )
        placed = await publish_entry(session, removal, "moderation")
        assert (placed.status, placed.pos) == ("stored", 4)
        assert (await publish_entry(session, removal, "moderation")).status == "duplicate"
        [live] = await items(bob_feed, 1)
        assert (live.kind, live.pos) == ("moderation", 4)
        # a new reader (served from the hub's cache while bob's feed keeps it alive) gets the
        # tombstone: the place and id, no content
        async with group_session(relay, address_id) as reader:
            await subscribe(reader, relay, bob, address_id, timeline_since=0)
            history = await items(reader, 4)
        assert [(i.pos, i.id, i.entry is None) for i in history[1:3]] == [
            (2, kept.id, False),
            (3, gone.id, True),
        ]
        # the same bytes again are still known (a retry), never stored twice
        retry = await session.request(MemberPost(message=ada.message(b"regrettable", seq=2)))
        assert isinstance(retry, Error | MemberPostResult)
    assert metric(relay, "relay_moderations_total") == 1


async def test_a_ban_ends_the_feed_and_refuses_posts_and_joins(relay: RunningRelay, tmp_path: Path) -> None:
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    bob = await joined(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as ada_feed, group_session(relay, address_id) as session:
        await ada.post(session, b"hello", cert=ada.cert())
        await subscribe(ada_feed, relay, ada, address_id)
        await items(ada_feed, 2)
        listed = await owner_command(owner, "list_uncertified")
        assert [p["name"] for p in listed[0].pending] == ["Bob"]
        ban = rules.make_moderation(
            owner.owner_key, channel=owner.channel, action="ban", subject=ada.member.public, now=now()
        )
        await publish_entry(session, ban, "moderation")
        while True:  # the moderation's place, then the end of the feed
            frame = await ada_feed.recv()
            if isinstance(frame, Error):
                assert frame.code == "banned"
                break
        assert await ada_feed.expect_closed() == 1008
        check_error(await session.request(MemberPost(message=ada.message(b"again"))), "banned")
        check_error(
            await session.request(MemberPost(message=ada.message(b"again"), cert=ada.cert())), "banned"
        )
        # a newer cert does not admit a banned key
        check_error(
            await session.request(Publish(entry=ada.cert(issued_at=now() + 5), kind="cert")), "banned"
        )
        # bob is unaffected
        await bob.post(session, b"still here", cert=bob.cert())
    async with group_session(relay, address_id) as again:
        check_error(
            await again.request(join_request(relay, owner, address_id, ada.member, session=again.challenge)),
            "banned",
        )
        frame = subscribe_frame(relay, owner, address_id, ada.member, session=again.challenge)
        check_error(await again.request(frame), "banned")  # its request is refused, and says why
    listed = await owner_command(owner, "list_uncertified")
    assert listed[0].pending == []  # ada is no member any more, bob has his cert
    assert metric(relay, "relay_member_feeds_ended_total") == 1


async def test_a_removed_member_posts_again_with_a_newer_cert(relay: RunningRelay, tmp_path: Path) -> None:
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    async with group_session(relay, address_id) as session:
        old = ada.cert(issued_at=now() - 10)
        await ada.post(session, b"one", cert=old)
        removal = rules.make_moderation(
            owner.owner_key,
            channel=owner.channel,
            action="remove_member",
            subject=ada.member.public,
            now=now(),
        )
        await publish_entry(session, removal, "moderation")
        check_error(await session.request(MemberPost(message=ada.message(b"two"))), "not_certified")
        check_error(await session.request(MemberPost(message=ada.message(b"two"), cert=old)), "not_certified")
        newer = ada.cert(issued_at=now() + 1)
        placed = await ada.post(session, b"two", cert=newer)
        assert placed.pos == 5  # the old cert, one, the removal, the newer cert, two


async def test_a_lagging_member_catches_up_to_the_tombstone_not_the_cached_message(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """The hub caches the newest frames for members catching up; a removal drops them, so a
    member that fell behind before the removal reads the tombstone, never the content."""
    relay = relay_factory(
        groups={"max_message_bytes": 65536, "messages_per_minute": 100_000},
        events={"send_buffer_bytes": 1024 * 1024},
    )
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    slow = await joined(relay, owner, address_id, "Slow")
    count = 120  # of 60 KB: far more than the kernel buffers and the send buffer
    async with (
        group_session(relay, address_id) as session,
        raw_feed(relay, address_id, owner, slow.member) as feed,
    ):
        await ada.post(session, b"0" * 60_000, cert=ada.cert())
        for i in range(1, count):
            last = await ada.post(session, bytes([i % 256]) * 60_000)
        assert metric(relay, "relay_feed_lagging_total") >= 1
        removal = rules.make_moderation(
            owner.owner_key, channel=owner.channel, action="remove_message", subject=last.id, now=now()
        )
        await publish_entry(session, removal, "moderation")
        seen: list[TimelineItem] = []
        while len(seen) < count + 2:
            frame = await feed.recv(30)
            if isinstance(frame, TimelineFrame):
                seen.append(frame.item)
    assert [i.pos for i in seen] == list(range(1, count + 3))
    assert seen[-2].id == last.id and seen[-2].entry is None  # the tombstone
    assert all(i.entry is not None for i in seen[:-2])


async def test_a_fleet_delivers_timeline_places_and_bans_across_processes(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL, two processes: a member reading at one gets every place stored at the
    other once and in order, and a ban made at the other ends its feed."""
    p0, p1 = start_fleet(tmp_path, pg_url, 2)
    try:
        owner, address_id = await group(p1, tmp_path)
        ada = await joined(p1, owner, address_id, "Ada")
        bob = Author(owner, name="Bob")
        assert (await join_at(p0, owner, address_id, bob.member)).status == "admitted"
        n = 20
        async with group_session(p0, address_id) as feed, group_session(p1, address_id) as session:
            await subscribe(feed, p0, bob, address_id)
            await ada.post(session, b"0", cert=ada.cert())
            for i in range(1, n):
                await ada.post(session, b"%d" % i)
            with trio.fail_after(10):
                got = await items(feed, n + 1)
            assert [i.pos for i in got] == list(range(1, n + 2))
            ban = rules.make_moderation(
                owner.owner_key, channel=owner.channel, action="ban", subject=bob.member.public, now=now()
            )
            await publish_entry(session, ban, "moderation")
            with trio.fail_after(5):
                while not isinstance(frame := await feed.recv(), Error):
                    pass
            assert frame.code == "banned"
    finally:
        for relay in (p0, p1):
            relay.kill()


async def test_retention_keeps_the_newest_places_and_the_hash(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(events={"max_events": 3})
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    first_cert = ada.cert()
    async with group_session(relay, address_id) as session:
        await ada.post(session, b"1", cert=first_cert)
        for body in (b"2", b"3", b"4", b"5"):
            await ada.post(session, body)
        assert await timeline_pos(session) == 6  # numbering and hash go on over what was dropped
    async with group_session(relay, address_id) as reader:
        answer = await subscribe(reader, relay, ada, address_id, timeline_since=0)
        assert (answer.timeline_pos, answer.timeline_first) == (6, 4)
        assert [i.pos for i in await items(reader, 3)] == [4, 5, 6]
    assert metric(relay, "relay_timeline_pruned_total") == 3
    relay.stop()  # a fresh process: it has not seen her posting (it would not read her row)
    relay.listen_on = relay.listen
    relay.start()
    async with group_session(relay, address_id) as session:
        # Her cert's place was dropped: sent again, it is placed again from the relay's own
        # verified copy, even when the copy sent has a broken signature (an id does not cover
        # the signature, and readers would blame the relay for serving a broken one).
        broken = Signed(body=first_cert.body, signer=first_cert.signer, sig=bytes(64))
        assert (await ada.post(session, b"6", cert=broken)).pos == 8  # the cert at 7, then 6
        await subscribe(session, relay, ada, address_id, timeline_since=0)
        [replaced] = [i for i in await items(session, 3) if i.kind == "cert"]
    assert replaced.pos == 7 and replaced.entry == first_cert
    aged = relay_factory(events={"max_age": 1, "prune_interval": 0.2})
    owner, address_id = await group(aged, tmp_path)
    ada = await joined(aged, owner, address_id, "Ada")
    async with group_session(aged, address_id) as session:
        await ada.post(session, b"1", cert=ada.cert())
        await ada.post(session, b"2")
    await trio.sleep(2.5)
    async with group_session(aged, address_id) as reader:
        answer = await subscribe(reader, aged, ada, address_id, timeline_since=0)
        assert (answer.timeline_pos, answer.timeline_first) == (3, 3)  # the last is always kept
    aged.wait_for_event("timeline.pruned")


async def test_a_relay_moved_to_postgresql_keeps_its_timelines_and_rosters(
    relay_factory: RelayFactory, pg_url: str, tmp_path: Path
) -> None:
    relay = relay_factory()  # SQLite
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    bob = await joined(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as session:
        await ada.post(session, b"one", cert=ada.cert())
        await bob.post(session, b"two", cert=bob.cert())
        ban = rules.make_moderation(
            owner.owner_key, channel=owner.channel, action="ban", subject=bob.member.public, now=now()
        )
        await publish_entry(session, ban, "moderation")
        hash_before = await signed_timeline(session, relay, owner)
    relay.stop()
    code, moved = run_json("migrate", "--data", str(relay.data), "--to", pg_url)
    assert code == 0, moved
    assert isinstance(moved["rows"], dict)
    assert (moved["rows"]["timeline"], moved["rows"]["timeline_heads"], moved["rows"]["member_roster"]) == (
        5,
        1,
        2,
    )
    relay.env["RELAY_STORAGE_URL"] = pg_url
    relay.listen_on = relay.listen
    relay.start()
    async with group_session(relay, address_id) as session:
        assert await signed_timeline(session, relay, owner) == hash_before  # the same timeline
        check_error(await session.request(MemberPost(message=bob.message(b"three"))), "banned")
        assert (await ada.post(session, b"three")).pos == 6  # ada's chain goes on where it was
        reader = await subscribe(session, relay, ada, address_id, timeline_since=0)
        assert reader.timeline_pos == 6 and [i.pos for i in await items(session, 6)] == [1, 2, 3, 4, 5, 6]


async def signed_timeline(session: RawSession, relay: RunningRelay, owner: OwnerState) -> tuple[int, bytes]:
    answer = await session.request(HeadRequest())
    assert isinstance(answer, HeadAnswer)
    head = verify_head(answer.head, relay_key=relay_key(relay), channel=owner.channel).head
    return head.timeline_pos, head.timeline_hash


async def test_moderators_act_on_members_only_and_a_removal_may_come_first(
    relay: RunningRelay, tmp_path: Path
) -> None:
    owner, address_id = await group(relay, tmp_path)
    mod = await joined(relay, owner, address_id, "Mod")
    ada = await joined(relay, owner, address_id, "Ada")
    other_mod = await joined(relay, owner, address_id, "Max")
    async with group_session(relay, address_id) as session:
        await publish_entry(session, mod.cert(role="moderator"), "cert")
        await publish_entry(session, other_mod.cert(role="moderator"), "cert")
        post = await ada.post(session, b"spam", cert=ada.cert())

        def moderation(by: Author, action: str, subject: bytes) -> Publish:
            signed = rules.make_moderation(
                by.member.key, channel=owner.channel, action=action, subject=subject, now=now()
            )
            return Publish(entry=signed, kind="moderation")

        assert (
            await publish_entry(session, moderation(mod, "remove_message", post.id).entry, "moderation")
        ).status == "stored"
        check_error(await session.request(moderation(mod, "ban", other_mod.member.public)), "not_a_moderator")
        check_error(await session.request(moderation(ada, "ban", mod.member.public)), "not_a_moderator")
        # the owners withdraw the role with a newer cert: its moderations are refused from then on
        await publish_entry(session, mod.cert(role="member", issued_at=now() + 1), "cert")
        check_error(
            await session.request(moderation(mod, "remove_member", ada.member.public)), "not_a_moderator"
        )
        # a removal that comes before its message (from another relay's copy, say): the
        # message is placed without its content when it arrives
        early = ada.message(b"removed before it came")
        early_id = rules.signed_id("message", early)
        await publish_entry(session, moderation(other_mod, "remove_message", early_id).entry, "moderation")
        late = await session.request(MemberPost(message=early))
        assert isinstance(late, MemberPostResult) and late.status == "stored"
    async with group_session(relay, address_id) as reader:
        answer = await subscribe(reader, relay, ada, address_id, timeline_since=late.pos - 1)
        [item] = await items(reader, 1)
        assert answer.timeline_pos == late.pos and (item.id, item.entry) == (early_id, None)


async def test_the_owners_list_of_members_is_bounded_in_bytes(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    # Each entry carries the member's own signed join request: with long member profiles, the
    # list stops at MAX_LISTED_BYTES of them (a client reads answers of at most 1 MiB).
    relay = relay_factory(
        members={"max_profile_bytes": 65536},
        server={"connection_burst_per_ip": 1000},  # a connection per join, all from here
    )
    owner, address_id = await group(relay, tmp_path)
    for n in range(130):
        await join_member(relay, owner, address_id, f"{n:03d} " + "x" * 4000)
    [relay_entry] = serving_relays(owner)
    answer = await command_relay(owner, relay_entry, "list_uncertified")
    sizes = [len(encode(p.join)) for p in answer.pending if p.join is not None]
    assert len(sizes) == len(answer.pending) and 100 < len(sizes) < 130
    assert sum(sizes) <= MAX_LISTED_BYTES < sum(sizes) + sizes[0]
